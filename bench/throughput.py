"""Durable end-to-end throughput of the agent beside raw paho-mqtt QoS 1, in the same run.

    python bench/throughput.py [--n 20000] [--window 20]

Baseline: one paho client publishing N messages of the same size at QoS 1 with at most --window
unacknowledged (paced, so paho's 65,535 message ids never wrap into a stall), all PUBACKs awaited,
timed until a subscriber has received all N.
Agent: `edge-agent run` as a child process with a simulated sensor asked for N readings at the
baseline's rate; every reading is committed to the SQLite outbox before it is sent and deleted after its PUBACK;
timed from the first reading to the subscriber having all N. Peak RSS of the agent from /proc.
Prints both rates and the ratio agent/baseline (target >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho  # a baseline may use paho directly; agent code never does

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent import codec
from edge_agent.devbroker import DevBroker
from tests.helpers import Collector, write_config


def baseline(port: int, n: int, window: int, payload: bytes) -> float:
    col = Collector(port, "base/#").start()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=paho.MQTTv5)
    c.max_inflight_messages_set(window)
    sem = threading.Semaphore(window)
    acked = threading.Event()
    count = [0]

    def on_publish(cl, ud, mid, rc, props):  # type: ignore[no-untyped-def]
        count[0] += 1
        sem.release()
        if count[0] >= n:
            acked.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    for _ in range(n):
        sem.acquire()
        info = c.publish("base/x", payload, qos=1)
        assert info.rc == 0, info.rc
    acked.wait(120)
    while col.count() < n and time.perf_counter() - t0 < 120:
        time.sleep(0.005)
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    col.stop()
    return n / dt


def agent(port: int, n: int, tmp: Path, rate: float) -> tuple[float, int]:
    state = tmp / "state"
    # offered load: the baseline's rate (a faster sensor only builds a backlog that is drained at the same rate)
    sensors = f"[[sensors]]\nname = \"s1\"\ntype = \"simulated\"\ninterval = {1.0 / rate:.7f}\ncount = {n}\n"
    cfg = write_config(tmp / "agent.toml", port, state, prefix="bench", sensors=sensors,
                       extra="[logging]\nlevel = \"warning\"\n")
    col = Collector(port, "bench/dev-1/telemetry/#").start()
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(cfg), "--exit-when-done"],
                            cwd=Path(__file__).resolve().parent.parent)
    peak = 0
    first_ts = None
    while col.count() < n:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        if proc.poll() is not None and col.count() < n:
            time.sleep(1)
            break
        time.sleep(0.05)
    end = time.time()
    with col.lock:
        first_ts = min(e["ts"] for e in col.envelopes)
        seqs = {e["seq"] for e in col.envelopes}
    proc.wait(60)
    col.stop()
    assert len(seqs) >= n, f"only {len(seqs)} of {n} arrived"
    return n / (end - first_ts), peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--offered", type=float, default=1.0,
                    help="sensor rate as a multiple of the baseline's rate (e.g. 100: as fast as the sampler runs)")
    a = ap.parse_args()
    payload = codec.encode_envelope("dev-1", 123456, time.time(), "telemetry/s1", {"value": 21.123456})
    with tempfile.TemporaryDirectory() as d, DevBroker(workdir=Path(d) / "broker") as b:
        raw = baseline(b.port, a.n, a.window, payload)
        ag, rss = agent(b.port, a.n, Path(d), raw * a.offered)
    print(f"messages: {a.n}, payload {len(payload)} B, QoS 1, window {a.window}, cpus {os.cpu_count()}")
    print(f"raw paho-mqtt QoS1 (paced, all PUBACKs awaited): {raw:10.0f} msg/s")
    print(f"edge-agent durable end to end                  : {ag:10.0f} msg/s")
    print(f"ratio agent/raw: {ag / raw:.2f}  (target >= 0.9)")
    print(f"agent peak RSS: {rss / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
