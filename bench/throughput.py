"""Durable end-to-end throughput of the agent beside raw paho-mqtt QoS 1, in the same run.

    python bench/throughput.py [--n 20000] [--window 20] [--offered 100] [--rounds 2]

Both sides are measured the same way: a `mosquitto_sub -q 1 -C N -F %U` subscriber in its own process
stamps every message it receives; the rate is N / (last stamp - first stamp) (and, for the baseline,
the publisher's own start is the first stamp's reference too).

Baseline: one paho client alone in this process publishing N messages of the same size at QoS 1 with
at most --window unacknowledged (paced, so paho's 65,535 message ids never wrap into a stall), all
PUBACKs awaited.
Agent: `edge-agent run` as a child process, a simulated sensor asked for N readings at --offered times
the baseline's rate (default 100: as fast as the sampler runs, i.e. the highest rate the agent
sustains end to end; 1: paced at the baseline's rate), in its default storage mode (write-behind: a
reading goes to the broker from memory and is stored only if its PUBACK is late, the link is down or the
hold is full; BENCH_MODE=durable: every reading committed before it is sent). Peak RSS from /proc.
Prints both rates and the ratio agent/baseline (target >= 0.9); best of --rounds for each. For
reference it also runs raw paho chaining each publish from its own ``on_publish`` callback (what the
agent's forwarder does), which is the fastest raw paho gets without storing anything.
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
from edge_agent.config.schema import INTERVAL_MIN
from edge_agent.devbroker import DevBroker
from tests.helpers import write_config

EXTRA = os.environ.get("BENCH_EXTRA", "").replace("\\n", "\n")
MODE = os.environ.get("BENCH_MODE", "")  # storage.mode of the agent (default: the agent's default)


class Sub:
    """mosquitto_sub in its own process: receives N messages and stamps each.

    Its output is read as it comes, by a thread: read only at the end, the pipe (64 KiB, ~3,600 stamps)
    filled, mosquitto_sub blocked on its write and stopped reading from the broker, and every later stamp
    was taken when the reading began, i.e. after the publisher had finished (for the agent: after its
    whole shutdown). That charged the agent's stop to its rate (20,000 messages: 0.80 of the chained
    line, 100,000: 0.95) and made the paced baseline's stamps bursts."""

    def __init__(self, port: int, topic: str, n: int) -> None:
        self.n = n
        self.proc = subprocess.Popen(["mosquitto_sub", "-p", str(port), "-q", "1", "-C", str(n), "-t", topic,
                                      "-F", "%U", "-i", f"bench-sub-{os.getpid()}-{time.monotonic_ns()}"],
                                     stdout=subprocess.PIPE, text=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        time.sleep(0.5)  # subscribed

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    def rate(self, timeout: float = 300.0) -> tuple[float, float]:
        self.proc.wait(timeout)
        self._reader.join(timeout)
        stamps = [float(x) for x in "".join(self._lines).split()]
        assert len(stamps) == self.n, f"only {len(stamps)} of {self.n} arrived"
        return self.n / (stamps[-1] - stamps[0]), stamps[0]


def baseline(port: int, n: int, window: int, payload: bytes) -> float:
    sub = Sub(port, "base/#", n)
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{time.monotonic_ns()}",
                    protocol=paho.MQTTv5)
    c.max_inflight_messages_set(window)
    sem = threading.Semaphore(window)
    c.on_publish = lambda *a: sem.release()
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.2)
    for _ in range(n):
        sem.acquire()
        info = c.publish("base/x", payload, qos=1)
        assert info.rc == 0, info.rc
    rate, _ = sub.rate()
    c.disconnect()
    c.loop_stop()
    return rate


def baseline_chained(port: int, n: int, window: int, payload: bytes, fast: bool = False) -> float:
    """For reference only (not the issue's baseline): raw paho publishing the next message from its own
    on_publish callback, the trick the agent's forwarder uses, so no thread hand-off per message.
    ``fast``: the same chain through the agent's own paho paths (``FastAckClient``: PUBLISH packets built
    without paho's per-message objects, plain PUBACKs decoded without its per-ack objects); the agent's
    rate over that line is what everything but the transport costs."""
    from edge_agent.transport.mqtt.client import AckCounts, FastAckClient

    name = "fast" if fast else "chain"
    sub = Sub(port, f"{name}/#", n)
    c = (FastAckClient if fast else paho.Client)(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                                 client_id=f"bench-{name}-{time.monotonic_ns()}")
    if isinstance(c, FastAckClient):
        c.counts = AckCounts()
        c.fast_ack, c.fast_pub = c.fast_ack_supported(), c.fast_publish_supported()
        assert c.fast_ack and c.fast_pub
    else:
        c.max_inflight_messages_set(window)
    left = [n]
    lock = threading.Lock()

    def send() -> None:
        with lock:
            if left[0] <= 0:
                return
            left[0] -= 1
        if isinstance(c, FastAckClient):
            rc, _ = c.fast_publish(f"{name}/x", payload)
        else:
            rc = c.publish(f"{name}/x", payload, qos=1).rc
        assert rc == 0, rc

    c.on_publish = lambda *a: send()
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.2)
    for _ in range(window):
        send()
    rate, _ = sub.rate()
    c.disconnect()
    c.loop_stop()
    return rate


def agent(port: int, n: int, tmp: Path, rate: float) -> tuple[float, int]:
    state = tmp / f"state-{time.monotonic_ns()}"
    # the sensor runs flat out (its interval is below what one sample takes); INTERVAL_MIN is the floor
    interval = max(1.0 / rate, INTERVAL_MIN)
    sensors = f"[[sensors]]\nname = \"s1\"\ntype = \"simulated\"\ninterval = {interval:.8f}\ncount = {n}\n"
    cfg = write_config(tmp / "agent.toml", port, state, prefix="bench", sensors=sensors,
                       extra="[logging]\nlevel = \"warning\"\n" + EXTRA)
    if MODE:
        cfg.write_text(cfg.read_text().replace("[storage]\n", f'[storage]\nmode = "{MODE}"\n'
                                                                  + os.environ.get("BENCH_STORAGE", "") + "\n"))
    sub = Sub(port, "bench/dev-1/telemetry/#", n)
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(cfg), "--exit-when-done"],
                            cwd=Path(__file__).resolve().parent.parent)
    peak = 0
    while proc.poll() is None and sub.proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.05)
    r, _ = sub.rate()
    proc.wait(60)
    return r, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--offered", type=float, default=100.0,
                    help="sensor rate as a multiple of the baseline's (100: as fast as the sampler runs)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    payload = codec.encode_envelope("dev-1", 123456, time.time(), "telemetry/s1", {"value": 21.123456})
    raws, chains, fasts, ags, rss = [], [], [], [], 0
    with tempfile.TemporaryDirectory() as d, DevBroker(workdir=Path(d) / "broker") as b:
        for _ in range(a.rounds):
            raws.append(baseline(b.port, a.n, a.window, payload))
            r, peak = agent(b.port, a.n, Path(d), raws[-1] * a.offered)
            ags.append(r)
            rss = max(rss, peak)
            chains.append(baseline_chained(b.port, a.n, a.window, payload))
            fasts.append(baseline_chained(b.port, a.n, a.window, payload, fast=True))
    raw, ag, chain, fast = max(raws), max(ags), max(chains), max(fasts)
    print(f"messages: {a.n}, payload {len(payload)} B, QoS 1, window {a.window}, cpus {os.cpu_count()}, "
          f"agent sensor offered at {a.offered:g}x the baseline rate, best of {a.rounds}")
    print(f"raw paho-mqtt QoS1 (paced, all PUBACKs awaited): {raw:10.0f} msg/s  (rounds: "
          f"{', '.join(f'{x:.0f}' for x in raws)})")
    print(f"edge-agent end to end ({MODE or 'default'} storage){' ' * max(0, 18 - len(MODE or 'default'))}: "
          f"{ag:10.0f} msg/s  (rounds: "
          f"{', '.join(f'{x:.0f}' for x in ags)})")
    print(f"ratio agent/raw: {ag / raw:.2f}  (target >= 0.9)")
    print(f"reference, not the target's baseline: raw paho publishing from its own on_publish callback "
          f"(no thread hand-off, nothing stored): {chain:.0f} msg/s (rounds: {', '.join(f'{x:.0f}' for x in chains)}); "
          f"agent/that: {ag / chain:.2f}")
    print(f"reference: the chained line through the agent's own paho fast paths (fast_publish, fast acks): "
          f"{fast:.0f} msg/s (rounds: {', '.join(f'{x:.0f}' for x in fasts)}); agent/that: {ag / fast:.2f}")
    print(f"agent peak RSS: {rss / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
