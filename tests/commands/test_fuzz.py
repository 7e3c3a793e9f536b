"""Fuzzing the command topics: random and malformed payloads, msgpack bombs, deep nesting, mutated signed
requests. Most go straight to the dispatcher's handler in-process (fast); a share goes through the real
broker. Pass: no exception escapes, nothing executes, memory stays bounded, a signed ping still works.

Default run (and CI): 100,000 payloads, the acceptance figure (~15 s). ``EDGE_AGENT_FUZZ_N`` overrides."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import codec
from edge_agent.commands.signing import Signer
from edge_agent.transport.mqtt import InMessage
from tests.commands.conftest import Requester, key_snippet

TOTAL = int(os.environ.get("EDGE_AGENT_FUZZ_N", "100000"))
PER_EXAMPLE = 50  # one generated payload + 49 mutations of it (hypothesis keeps every example: fewer, richer)
THROUGH_BROKER = 50  # one payload in this many also goes through mosquitto

NAMES = ["ping", "status", "config.get", "config.set", "sensor.set_interval", "output.set", "history.query",
         "model.update", "agent.restart", "nope", "a" * 70, "x.y.z"]
TOPICS = ([f"edge/dev-1/cmd/{n}" for n in NAMES] + [f"edge/group/lab/cmd/{n}" for n in NAMES[:4]]
          + ["edge/all/cmd/ping", "edge/group/other/cmd/ping", "edge/dev-1/cmd/"])

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats()
           | st.text(max_size=40) | st.binary(max_size=40))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=8), c, max_size=6),
                      max_leaves=30)


def _bombs() -> st.SearchStrategy[bytes]:
    n = st.integers(min_value=0, max_value=200_000)
    return st.one_of(
        n.map(lambda k: b"\xdd\xff\xff\xff\xff" + b"\xc0" * k),          # array32 claiming 4G items
        n.map(lambda k: b"\xdf\xff\xff\xff\xff" + b"\xc0" * k),          # map32 claiming 4G pairs
        n.map(lambda k: b"\xdb\xff\xff\xff\xff" + b"a" * min(k, 1000)),  # str32 claiming 4 GB
        n.map(lambda k: b"\xc6\x7f\xff\xff\xff" + b"\x00" * min(k, 1000)),  # bin32 claiming 2 GB
        st.integers(1, 100_000).map(lambda d: b"\x91" * d + b"\xc0"),  # deep nesting
        st.integers(1, 50_000).map(lambda d: b"\x81\xa1a" * d + b"\xc0"),  # deep maps
        st.integers(1, 20_000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),  # deep JSON
        st.integers(1, 20_000).map(lambda d: b"[" * d),
        st.sampled_from([b"\xd4\x01\x00", b"\xc7\x05\x02abcde", b"\xd8\xff" + b"\x00" * 16,  # ext types
                         b'{"id": NaN}', b'{"id": 1e999}', b'{"a": "' + b"\\ud800" + b'"}', b"{" + b"9" * 5000,
                         b"\x00" * (1024 * 1024), b"\xc0" * (300 * 1024)]),
    )


def _mutated(signer: Signer) -> st.SearchStrategy[tuple[str, bytes]]:
    """Validly signed requests for the topic they go to, with one field changed (never to the same value)."""
    fields = ["id", "name", "args", "issued_at", "expires_at", "kid", "sig", "extra", "sig", "args"]
    cmds = [("sensor.set_interval", {"sensor": "s1", "interval": 2.0}), ("config.set", {"changes": {}}),
            ("ping", {}), ("agent.restart", {})]

    def build(args: tuple[tuple[str, dict[str, Any]], str, Any, bool, bool]) -> tuple[str, bytes]:
        (name, cargs), field, value, as_json, drop = args
        req = signer.sign("device", "dev-1", name, cargs)
        # dropping 'name' (it is in the topic) or empty 'args' changes nothing: not a mutation
        if drop and field in req and field != "name" and not (field == "args" and not cargs):
            del req[field]
        else:
            if field in req and req[field] == value:
                value = [value]
            req[field] = value
        if as_json:
            if isinstance(req.get("sig"), bytes):
                req["sig"] = req["sig"].hex()
            return f"edge/dev-1/cmd/{name}", json.dumps(req, default=repr).encode()
        return f"edge/dev-1/cmd/{name}", codec.encode(req)

    return st.tuples(st.sampled_from(cmds), st.sampled_from(fields), values, st.booleans(), st.booleans()).map(build)


def payloads(signer: Signer) -> st.SearchStrategy[tuple[str, bytes]]:
    raw = st.one_of(
        st.binary(max_size=512),
        values.map(codec.encode),
        values.map(lambda v: json.dumps(v, default=repr).encode()),
        st.dictionaries(st.sampled_from(["id", "name", "args", "issued_at", "expires_at", "kid", "sig"]), values,
                        max_size=7).map(codec.encode),
        _bombs(),
    )
    return st.tuples(st.sampled_from(TOPICS), raw) | _mutated(signer)


def _settle(value: Any, quiet: float = 2.0, timeout: float = 120.0) -> None:
    last, since, deadline = value(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.1)
        v = value()
        if v != last:
            last, since = v, time.monotonic()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_fuzz_command_topics(make_app, requester: Requester, signer: Signer, caplog: Any) -> None:
    app = make_app(keys=key_snippet(signer), commands='unsigned = []\nrate = 1e6\nburst = 1000000')
    svc = app.service("commands")
    exits: list[int] = []
    svc.exit_process = exits.append  # agent.restart must never get this far anyway
    sent = {"n": 0, "broker": 0}
    rss0 = _rss_mb()
    rss_peak = [rss0]

    def feed(topic: str, payload: bytes, json_ct: bool) -> None:
        sent["n"] += 1
        msg = InMessage(topic=topic, payload=payload, qos=1, response_topic="fuzz/replies",
                        correlation_data=b"f", content_type="application/json" if json_ct else None)
        svc.on_message(msg)
        if sent["n"] % THROUGH_BROKER == 0 and len(payload) < 256 * 1024:
            requester.publish(topic, payload)
            sent["broker"] += 1

    @settings(max_examples=TOTAL // PER_EXAMPLE, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payloads(signer), st.booleans(), st.integers(0, 2**32))
    def run(topic_payload: tuple[str, bytes], json_ct: bool, seed: int) -> None:
        topic, payload = topic_payload
        rnd = random.Random(seed)  # not st.randoms(): signed payloads vary in length between runs
        feed(topic, payload, json_ct)
        for _ in range(PER_EXAMPLE - 1):  # malformed variants of the same payload
            b = bytearray(payload)
            op = rnd.randrange(4)
            if op == 0 and b:
                for _ in range(rnd.randint(1, 4)):
                    b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
            elif op == 1 and b:
                del b[rnd.randrange(len(b)):]
            elif op == 2:
                b[rnd.randrange(len(b) + 1):0] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
            else:
                b = bytearray(codec.encode([bytes(b[:64]), rnd.random()]))
            feed(rnd.choice(TOPICS), bytes(b), rnd.random() < 0.3)
        if sent["n"] % 5000 < PER_EXAMPLE:
            rss_peak[0] = max(rss_peak[0], _rss_mb())

    with caplog.at_level(logging.WARNING, logger="edge_agent.commands"):
        t0 = time.monotonic()
        run()
        elapsed = time.monotonic() - t0
    assert sent["n"] >= TOTAL
    assert not [r for r in caplog.records if "handler failed" in r.getMessage() or r.levelno >= logging.ERROR]
    assert svc.counters["executed"] == 0 and app.runners["s1"].interval == 1.0 and not exits
    growth = rss_peak[0] - rss0
    assert growth < 150, f"RSS grew by {growth:.0f} MB"
    _settle(lambda: svc.counters["received"])  # the broker share has arrived
    assert svc.counters["executed"] == 0
    rep = requester.request("edge/dev-1/cmd/ping", signer.sign("device", "dev-1", "ping", {}), timeout=180)
    assert rep["status"] == "ok"
    print(f"\nfuzz: {sent['n']} payloads ({sent['broker']} also through mosquitto) in {elapsed:.1f} s "
          f"({sent['n'] / elapsed:.0f}/s), RSS +{growth:.1f} MB, "
          f"refusals {dict(sorted(svc.refusals.items()))}")


def test_lone_surrogates_in_json_are_refused_not_crashing(make_app, signer: Signer, caplog: Any) -> None:
    """Found by the fuzz run: a JSON "\\ud800" escape decodes to a str no UTF-8 encoder accepts (the
    canonical bytes of a signature are msgpack). It must be a decode_error refusal, not a handler crash."""
    app = make_app(keys=key_snippet(signer), commands='unsigned = []')
    svc = app.service("commands")
    bodies = [b'{"id": "a\\ud800", "sig": "AAAA", "kid": "k", "issued_at": 1, "expires_at": 2, "args": {}}',
              b'{"id": "x", "args": {"k\\udaed": 1}, "sig": "AAAA", "kid": "k", "issued_at": 1, "expires_at": 2}']
    with caplog.at_level(logging.WARNING, logger="edge_agent.commands"):
        for body in bodies:
            svc.on_message(InMessage(topic="edge/all/cmd/ping", payload=body, qos=1, response_topic="r/x",
                                     correlation_data=b"c", content_type="application/json"))
    assert not [r for r in caplog.records if "handler failed" in r.getMessage() or r.levelno >= logging.ERROR]
    assert sum("decode_error" in r.getMessage() for r in caplog.records) == len(bodies)
