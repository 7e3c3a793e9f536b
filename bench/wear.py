"""Disk writes per telemetry message in steady state (SD-card wear), broker up and during/after an outage.

    python bench/wear.py [--short] [--mode write_behind] [--dir /var/tmp]

``edge-agent run`` as a child process with 10 simulated sensors at 1 Hz, then at 20 Hz. Broker up: after a
warm-up, ``/proc/<pid>/io`` ``write_bytes`` (bytes the process caused to be written to the block layer:
SQLite pages, WAL frames, the seq sidecar, logs) over a steady window, divided by the messages the
subscriber received in it, beside the payload size (target <= 3x). Outage (at 20 Hz): the broker is
stopped for 60 s (10 s with ``--short``), then started again; bytes per message during the outage and
for the drain after it. The state dir must be on a real disk (not tmpfs) for write_bytes to mean anything.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho  # the counting subscriber may use paho directly

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.devbroker import DevBroker
from tests.helpers import AgentProcess, sensors, write_config


class Counter:
    def __init__(self, port: int, topic: str) -> None:
        self.n = 0
        self.size = 0
        self.lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                             client_id=f"wear-{time.time_ns()}")
        self.c.on_message = self._on
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        with self.lock:
            self.n += 1
            self.size = len(m.payload)

    def count(self) -> int:
        with self.lock:
            return self.n

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes")


def window(agent: AgentProcess, col: Counter, seconds: float) -> tuple[int, int]:
    assert agent.proc is not None
    w0, n0 = write_bytes(agent.proc.pid), col.count()
    time.sleep(seconds)
    return write_bytes(agent.proc.pid) - w0, col.count() - n0


def start_agent(tmp: Path, port: int, hz: float, mode: str, tag: str) -> tuple[AgentProcess, str]:
    prefix = f"wear{tag}"
    specs = [(f"s{i}", 1.0 / hz, 0, "telemetry") for i in range(10)]
    cfg = write_config(tmp / f"{tag}.toml", port, tmp / f"state-{tag}", prefix=prefix, sensors=sensors(*specs))
    cfg.write_text(cfg.read_text().replace("[storage]\n", f'[storage]\nmode = "{mode}"\n'))
    return AgentProcess(cfg).start(), prefix


def steady(tmp: Path, broker: DevBroker, hz: float, mode: str, seconds: float) -> None:
    agent, prefix = start_agent(tmp, broker.port, hz, mode, f"{int(hz)}hz-{mode[:3]}")
    col = Counter(broker.port, f"{prefix}/dev-1/telemetry/#")
    try:
        time.sleep(5.0)  # warm-up: database created, first sidecar, connection
        wb, n = window(agent, col, seconds)
        print(f"  10 x {hz:4.0f} Hz broker up: {n} msgs in {seconds:.0f} s, write_bytes {wb} = {wb / max(n, 1):7.1f} "
              f"B/msg vs payload {col.size} B = {wb / max(n, 1) / max(col.size, 1):5.2f}x  (target <= 3x); "
              f"{wb / seconds * 86400 / 1e6:8.1f} MB/day")
    finally:
        agent.terminate()
        col.close()


def outage(tmp: Path, broker: DevBroker, hz: float, mode: str, seconds: float) -> DevBroker:
    agent, prefix = start_agent(tmp, broker.port, hz, mode, f"out-{mode[:3]}")
    col = Counter(broker.port, f"{prefix}/dev-1/telemetry/#")
    port = broker.port
    try:
        time.sleep(5.0)
        assert agent.proc is not None
        col.close()
        broker.stop()
        w0 = write_bytes(agent.proc.pid)
        time.sleep(seconds)
        w_out = write_bytes(agent.proc.pid) - w0
        n_out = int(10 * hz * seconds)
        broker = DevBroker(port=port, workdir=tmp / "broker2").start()
        col = Counter(port, f"{prefix}/dev-1/telemetry/#")
        w1 = write_bytes(agent.proc.pid)
        time.sleep(max(10.0, seconds / 2))
        w_after = write_bytes(agent.proc.pid) - w1
        size = max(col.size, 1)
        print(f"  10 x {hz:4.0f} Hz outage {seconds:.0f} s: {n_out} msgs stored, {w_out / n_out:7.1f} B/msg = "
              f"{w_out / n_out / size:5.2f}x payload; after (drain + live, {max(10.0, seconds / 2):.0f} s): "
              f"{w_after} B = {w_after / n_out:7.1f} B per stored msg")
    finally:
        agent.terminate()
        col.close()
    return broker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="20 s windows, a 10 s outage")
    ap.add_argument("--mode", default="write_behind", choices=("write_behind", "durable"))
    ap.add_argument("--dir", default="/var/tmp", help="parent of the state dir (a real disk, not tmpfs)")
    args = ap.parse_args()
    seconds, out = (20.0, 10.0) if args.short else (60.0, 60.0)
    with tempfile.TemporaryDirectory(prefix="wear-", dir=args.dir) as td:
        tmp = Path(td)
        broker = DevBroker(workdir=tmp / "broker").start()
        print(f"storage.mode = {args.mode}")
        try:
            for hz in (1.0, 20.0):
                steady(tmp, broker, hz, args.mode, seconds)
            broker = outage(tmp, broker, 20.0, args.mode, out)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
