"""Does a command flood starve telemetry? Telemetry latency with and without a flood, same run.

Usage::

    python bench/commands_flood.py [--seconds 8] [--flood-rate 1000] [--rate 100]

An agent (``App`` in this process) samples a simulated sensor ``--rate`` times a second; a collector
measures each reading's latency (arrival at a subscriber minus the reading's timestamp). Phase 1 is
the baseline. In phase 2 ``mosquitto_pub -l`` (a separate process) publishes ``--flood-rate`` commands/s to
the agent's command topic: a mix of allowed unsigned ``ping``s, garbage, and
forged signed requests. Prints p50/p99 telemetry latency and readings/s of both phases and the ratios
(target: p99 within +20 %, no loss), and what the dispatcher did with the flood.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from edge_agent import codec
from edge_agent import config as config_mod
from edge_agent.app import App
from edge_agent.config import MqttConfig
from edge_agent.devbroker import DevBroker
from edge_agent.host import Disposition
from edge_agent.transport.mqtt import InMessage, MqttTransport

CONFIG = """
[device]
id = "dev-1"
[mqtt]
host = "127.0.0.1"
port = {port}
[storage]
dir = "{state}"
[agent]
stop_timeout = 1
[commands]
enabled = {commands}
[[sensors]]
name = "s1"
type = "simulated"
interval = {interval}
"""


class Latency:
    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.samples: list[tuple[float, float]] = []  # (arrival, latency)
        self.t = MqttTransport(MqttConfig(host="127.0.0.1", port=port, session_expiry=0), client_id="bench-lat",
                               on_message=self._on, persistent_session=False)
        self.t.subscribe("edge/dev-1/telemetry/#", qos=1)

    def _on(self, m: InMessage) -> None:
        now = time.time()
        env = codec.decode(m.payload)
        with self.lock:
            self.samples.append((now, now - env["ts"]))

    def window(self, t0: float, t1: float) -> list[float]:
        with self.lock:
            return [lat for at, lat in self.samples if t0 <= at < t1]


def flood_lines(n: int) -> bytes:
    forged = {"id": "f", "args": {}, "issued_at": time.time(), "expires_at": time.time() + 60,
              "kid": "0123456789abcdef", "sig": base64.b64encode(b"\0" * 64).decode()}
    kinds = [b"{}", b'{"id": 5, "junk": [1,2,3]}', json.dumps(forged).encode(), b"not json at all",
             b'{"args": {"sensor": "s1", "interval": 0.001}}']
    return b"\n".join(kinds[i % len(kinds)] for i in range(n)) + b"\n"


def stats(lat: list[float]) -> tuple[float, float]:
    if len(lat) < 2:
        return float("nan"), float("nan")
    q = statistics.quantiles(lat, n=100)
    return q[49] * 1000, q[98] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--flood-rate", type=float, default=1000.0, help="commands/s during phase 2")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--null-handler", action="store_true",
                    help="a no-op handler instead of the dispatcher: the cost of the transport alone")
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp, DevBroker(workdir=Path(tmp) / "broker") as broker:
        cfg = config_mod.loads(CONFIG.format(port=broker.port, state=Path(tmp) / "state", interval=1 / a.rate,
                                             commands="false" if a.null_handler else "true"))
        lat = Latency(broker.port)
        lat.t.start()
        lat.t.wait_online(10)
        app = App(cfg)
        if a.null_handler:  # no command service: a no-op route on its topic
            app.open()
            app.host.subscribe("edge/dev-1/cmd/#", lambda t: t.startswith("edge/dev-1/cmd/"),
                               lambda msg: Disposition.ACK)
        app.start()
        app.wait_online(10)
        time.sleep(1.0)
        t0 = time.time()
        time.sleep(a.seconds)
        t1 = time.time()
        proc = subprocess.Popen(["mosquitto_pub", "-p", str(broker.port), "-V", "mqttv5", "-q", "1", "-l",
                                 "-t", "edge/dev-1/cmd/ping"], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        tick, sent = 0.05, 0
        per_tick = max(1, int(a.flood_rate * tick))
        while time.time() - t1 < a.seconds:
            proc.stdin.write(flood_lines(per_tick))
            proc.stdin.flush()
            sent += per_tick
            time.sleep(tick)
        proc.stdin.close()
        proc.wait(30)
        t2 = time.time()
        t_flood = t2 - t1
        time.sleep(1.0)
        svc = app.service("commands")
        app.stop()
        lat.t.stop()
        base, fl = lat.window(t0, t1), lat.window(t1, t2)
        b50, b99 = stats(base)
        f50, f99 = stats(fl)
        print(f"flood: {sent} commands in {t_flood:.2f} s ({sent / t_flood:.0f}/s) via mosquitto_pub")
        print(f"baseline: {len(base) / (t1 - t0):.1f} readings/s, latency p50 {b50:.1f} ms, p99 {b99:.1f} ms")
        print(f"flooded:  {len(fl) / (t2 - t1):.1f} readings/s, latency p50 {f50:.1f} ms, p99 {f99:.1f} ms")
        print(f"ratio flooded/baseline: readings/s {len(fl) / (t2 - t1) / (len(base) / (t1 - t0)):.2f}, "
              f"p99 latency {f99 / b99:.2f}")
        if svc is not None:
            print(f"dispatcher: {svc.counters}, refusals {svc.refusals}")


if __name__ == "__main__":
    main()
