"""Issue 14 item 2: requests with a real operator's (public) key id and a random signature must not use
up that operator's rate limit. Only a verified signature charges a key's bucket; the rest shares the
anonymous budget. On the old order (rate limit by ``kid`` before the signature check) the genuine
commands below were refused ``rate_limited`` for as long as the flood lasted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from edge_agent import codec
from edge_agent.commands.signing import Signer
from edge_agent.devbroker import DevBroker
from tests.commands.conftest import Requester, key_snippet

ROOT = Path(__file__).resolve().parents[2]
T = "edge/dev-1/cmd/"
FLOOD_RATE = 5000.0
FLOOD_SECONDS = 5.0


def test_spoofed_kid_flood_does_not_starve_the_operator(make_app, requester: Requester, signer: Signer,
                                                        broker: DevBroker) -> None:
    app = make_app(keys=key_snippet(signer))
    svc = app.service("commands")
    flood = subprocess.Popen([sys.executable, "-m", "tests.hostile.flood", str(broker.port), T + "config.get",
                              str(FLOOD_RATE), str(FLOOD_SECONDS), signer.kid],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the flood is running
        latencies: list[float | None] = []
        t_end = time.monotonic() + FLOOD_SECONDS - 1.0
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            corr = requester.publish(T + "ping", codec.encode(
                signer.sign("device", "dev-1", "ping")))
            try:
                rep = requester.wait_reply(corr, timeout=5.0)
                latencies.append(time.monotonic() - t0 if rep["status"] == "ok" else None)
            except AssertionError:
                latencies.append(None)
            time.sleep(max(0.0, 0.2 - (time.monotonic() - t0)))
        out, err = flood.communicate(timeout=30)
    finally:
        if flood.poll() is None:
            flood.kill()
    assert flood.returncode == 0, err
    sent = int(out.split()[1])
    answered = [x for x in latencies if x is not None]
    print(f"flood: {out.strip()} ({sent / FLOOD_SECONDS:.0f}/s); genuine: {len(answered)}/{len(latencies)} ok, "
          f"max latency {max(answered, default=0) * 1000:.0f} ms; counters {svc.counters}; "
          f"refusals {svc.refusals}")
    assert sent >= 0.9 * FLOOD_RATE * FLOOD_SECONDS
    assert len(latencies) >= 10
    assert len(answered) >= 0.9 * len(latencies), latencies
    # the flood reached the agent and was refused (charged to the anonymous budget, replies suppressed)
    time.sleep(1.0)
    assert svc.counters["received"] >= 0.5 * sent
    assert svc.refusals.get("bad_signature", 0) + svc.counters["rate_limited"] >= 0.5 * sent
