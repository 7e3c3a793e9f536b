#!/usr/bin/env python3
"""Benchmark the message history: store N messages (default 100,000), time each kind of filtered query.

Target: every query under 50 ms on this machine. Each figure is the median of ``--runs`` runs with
varying parameters; beside it, the ratio to a primary-key lookup timed in the same process (so a noisy,
shared machine shows up as a slow baseline rather than as a slow query).

    python bench/history.py [--messages 100000] [--runs 15] [--dir DIR]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent.messaging.history import History

TARGET_MS = 50.0


def words(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def fill(h: History, n: int, rng: random.Random, vocab: list[str], t0: float) -> float:
    peers = [f"user-{i}" for i in range(50)]
    groups = [f"team-{i}" for i in range(10)]
    streams = [f"inference/m{i}" for i in range(10)]
    start = time.perf_counter()
    for i in range(1, n + 1):
        ts = t0 + i * (30 * 86400 / n)
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12)))
        r = rng.random()
        if r < 0.6:
            peer = rng.choice(peers)
            out = rng.random() < 0.5
            sender = "me" if out else peer
            h.add(mid=f"{sender}:{i}", sender=sender, seq=i, outgoing=out, kind="msg", data={"text": text}, ts=ts,
                  status="read" if out else "received", peer=peer, now=ts)
        elif r < 0.8:
            g = rng.choice(groups)
            sender = rng.choice(peers)
            h.add(mid=f"{sender}:{i}", sender=sender, seq=i, outgoing=False, kind="msg", data=text, ts=ts,
                  status="received", group=g, now=ts)
        else:
            s = rng.choice(streams)
            h.add(mid=f"dev-{i % 7}:{i}", sender=f"dev-{i % 7}", seq=i, outgoing=False, kind="stream",
                  data={"score": rng.random(), "label": rng.choice(vocab)}, ts=ts, status="received", stream=s,
                  unread=False, now=ts)
    return time.perf_counter() - start


def timed(fn: Callable[[int], object], runs: int) -> tuple[float, int]:
    times, n = [], 0
    for i in range(runs):
        t = time.perf_counter()
        res = fn(i)
        n = len(res) if isinstance(res, list) else 0
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    rng = random.Random(42)
    vocab = words(rng, 3000)
    d = Path(args.dir or tempfile.mkdtemp(prefix="history-bench-"))
    h = History(d / "history.db", max_age=10 * 365 * 86400, max_bytes=1 << 40)
    t0 = time.time() - 31 * 86400
    secs = fill(h, args.messages, rng, vocab, t0)
    size = h.size_bytes()
    print(f"stored {args.messages} messages in {secs:.1f} s ({args.messages / secs:,.0f}/s, one transaction each); "
          f"db {size / 1e6:.1f} MB ({size / args.messages:.0f} B/message)")
    common = max(vocab, key=lambda w: sum(1 for _ in h.query(search=w, limit=200)) if vocab.index(w) < 50 else 0)
    mids = [m.id for m in h.query(limit=2000, newest_first=True)]
    day = 86400.0
    cases: list[tuple[str, Callable[[int], object]]] = [
        ("baseline: get(id)", lambda i: [h.get(mids[i % len(mids)])]),
        ("peer, newest 50", lambda i: list(h.query(peer=f"user-{i % 50}", limit=50, newest_first=True))),
        ("peer, whole conversation", lambda i: list(h.query(peer=f"user-{i % 50}"))),
        ("group, newest 50", lambda i: list(h.query(group=f"team-{i % 10}", limit=50, newest_first=True))),
        ("stream, newest 50", lambda i: list(h.query(stream=f"inference/m{i % 10}", limit=50, newest_first=True))),
        ("sender, newest 50", lambda i: list(h.query(sender=f"user-{i % 50}", limit=50, newest_first=True))),
        ("since/until (1 day), first 100", lambda i: list(h.query(since=t0 + (i % 29) * day,
                                                                  until=t0 + (i % 29 + 1) * day, limit=100))),
        ("peer + 1 day", lambda i: list(h.query(peer=f"user-{i % 50}", since=t0 + (i % 29) * day,
                                                until=t0 + (i % 29 + 1) * day))),
        ("search rare word, all", lambda i: list(h.query(search=vocab[100 + i]))),
        (f"search common word '{common}', newest 50", lambda i: list(h.query(search=common, limit=50,
                                                                            newest_first=True))),
        ("search 2 words", lambda i: list(h.query(search=f"{vocab[i]} {vocab[i + 1]}"))),
        ("search prefix 'ab*', newest 50", lambda i: list(h.query(search="ab*", limit=50, newest_first=True))),
        ("search + peer", lambda i: list(h.query(search=common, peer=f"user-{i % 50}"))),
        ("search + since (1 week)", lambda i: list(h.query(search=common, since=t0 + 20 * day,
                                                           until=t0 + 27 * day))),
        ("unread only, newest 50", lambda i: list(h.query(unread=True, limit=50, newest_first=True))),
        ("summary (last per conversation + unread)", lambda i: h.summary()),
        ("unread count", lambda i: [h.unread_count()]),
    ]
    base = None
    worst = 0.0
    print(f"{'query':<48} {'median ms':>10} {'rows':>6} {'x baseline':>11}  target {TARGET_MS:.0f} ms")
    for name, fn in cases:
        ms, n = timed(fn, args.runs)
        if base is None:
            base = ms
        else:
            worst = max(worst, ms)
        ok = "ok" if ms < TARGET_MS else "SLOW"
        print(f"{name:<48} {ms:>10.2f} {n:>6} {ms / base:>11.0f}  {ok}")
    print(f"worst filtered query: {worst:.2f} ms ({'within' if worst < TARGET_MS else 'OVER'} the {TARGET_MS:.0f} ms "
          "target)")
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
