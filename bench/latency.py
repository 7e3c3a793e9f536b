"""Latency of the agent beside raw paho-mqtt QoS 1 at the same rate, in the same run (loopback broker).

    python bench/latency.py [--rates 100,200,1000] [--seconds 10] [--mode write_behind] [--messages 2000]

Telemetry: ``edge-agent run`` as a child process with one simulated sensor at each rate; a paho subscriber
(QoS 1) in this process stamps each envelope on arrival: latency = arrival - the reading's ``ts`` (taken
when the sensor was sampled, same clock). Baseline: a raw paho publisher in its own process publishing
QoS 1 at the same rate a payload of the same size carrying ``time.time()``; same subscriber. The first
10% of each run is warm-up and not counted. Prints p50/p99 of both and the ratios (targets at 200 Hz:
p50 <= 3x, p99 <= 5x).

Messaging: two embedded ``Agent`` s (sender, recipient) on the same broker; ``--messages`` sends paced
at 200/s; latency = recipient ``on_message`` time - the time ``send()`` was called. Baseline: raw paho
publish (QoS 1) -> raw paho subscriber at the same pace.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho  # a baseline may use paho directly; agent code never does

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent import codec
from edge_agent.devbroker import DevBroker
from tests.helpers import AgentProcess, sensors, write_config


class Stamper:
    """A paho QoS 1 subscriber recording (arrival - payload ts) for every message."""

    def __init__(self, port: int, topic: str) -> None:
        self.lat: list[float] = []
        self.count = 0
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(topic, qos=1)
        self.c.loop_start()
        time.sleep(0.3)

    def _on(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        rx = time.time()
        try:
            d = codec.decode(m.payload)
        except Exception:
            return
        if isinstance(d, dict) and isinstance(d.get("ts"), float):
            self.lat.append(rx - d["ts"])

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000.0 if xs else float("nan")


def summary(lat: list[float]) -> tuple[float, float, int]:
    keep = lat[len(lat) // 10:]
    return pct(keep, 0.5), pct(keep, 0.99), len(keep)


def paced(n: int, rate: float, fn: Callable[[int], object]) -> float:
    """Call ``fn(i)`` n times at ``rate`` per second; the seconds it took."""
    period = 1.0 / rate
    t0 = nxt = time.monotonic()
    for i in range(n):
        nxt += period
        d = max(0.0, nxt - time.monotonic())
        if d:
            time.sleep(d)
        fn(i)
    return time.monotonic() - t0


def raw_publisher(port: int, topic: str, rate: float, n: int) -> None:
    """Child process: publish n QoS 1 messages at ``rate`` carrying their send time (~ envelope size)."""
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.2)
    paced(n, rate, lambda i: c.publish(topic, codec.encode({"dev": "raw", "seq": i + 1, "ts": time.time(),
                                                            "stream": "telemetry/s1",
                                                            "data": {"value": 21.5 + i % 7, "unit": "C"}}), qos=1))
    time.sleep(1.0)
    c.loop_stop()
    c.disconnect()


def run_raw(port: int, rate: float, seconds: float) -> tuple[float, float, int]:
    topic = f"raw/lat/{int(rate)}"
    s = Stamper(port, topic)
    n = int(rate * seconds)
    subprocess.run([sys.executable, __file__, "--raw-publisher", str(port), topic, str(rate), str(n)], check=True)
    time.sleep(0.5)
    s.close()
    return summary(s.lat)


def run_agent(port: int, rate: float, seconds: float, mode: str, tmp: Path) -> tuple[float, float, int]:
    prefix = f"lat{int(rate)}{mode[:3]}"
    n = int(rate * seconds)
    cfg = write_config(tmp / f"a{int(rate)}{mode}.toml", port, tmp / f"state-{int(rate)}-{mode}", prefix=prefix,
                       sensors=sensors(("s1", 1.0 / rate, n, "telemetry")))
    text = cfg.read_text().replace("[storage]\n", f'[storage]\nmode = "{mode}"\n')
    cfg.write_text(text)
    s = Stamper(port, f"{prefix}/dev-1/telemetry/#")
    agent = AgentProcess(cfg, args=["--exit-when-done"]).start()
    rc = agent.wait(seconds * 3 + 60)
    time.sleep(0.5)
    s.close()
    if rc != 0:
        print(agent.output()[-2000:])
    return summary(s.lat)


def telemetry(port: int, rates: list[float], seconds: float, mode: str, tmp: Path) -> None:
    print(f"telemetry: reading -> subscriber, {seconds:.0f} s per rate, storage.mode = {mode}")
    for rate in rates:
        rp50, rp99, rn = run_raw(port, rate, seconds)
        ap50, ap99, an = run_agent(port, rate, seconds, mode, tmp)
        print(f"  {rate:6.0f} Hz  raw paho QoS1 p50 {rp50:6.2f} ms p99 {rp99:6.2f} ms (n={rn})   agent p50 "
              f"{ap50:6.2f} ms p99 {ap99:6.2f} ms (n={an})   ratio p50 {ap50 / rp50:5.2f}x p99 {ap99 / rp99:5.2f}x")


def recipient(port: int, state: str, n: int) -> None:
    """Child process: the recipient agent; prints its latencies (ms, one per line) when done."""
    from edge_agent import Agent

    lat: list[float] = []
    done = threading.Event()
    b = Agent(device_id="lat-b", host="127.0.0.1", port=port, state_dir=state)

    @b.on_message
    def got(msg: object) -> None:
        data = getattr(msg, "data", None)
        if isinstance(data, dict) and "t" in data:
            lat.append(time.time() - data["t"])
            if len(lat) >= n:
                done.set()

    with b:
        print("ready", flush=True)
        done.wait(n / 10 + 60)
    print(" ".join(f"{x:.6f}" for x in lat), flush=True)


def messaging(port: int, n: int, rate: float, tmp: Path) -> None:
    from edge_agent import Agent

    print(f"messaging: send() -> recipient on_message (recipient in its own process), {n} messages at "
          f"{rate:.0f}/s")
    child = subprocess.Popen([sys.executable, __file__, "--recipient", str(port), str(tmp / "b"), str(n)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    child.stdout.readline()  # "ready"
    a = Agent(device_id="lat-a", host="127.0.0.1", port=port, state_dir=str(tmp / "a"))
    with a:
        time.sleep(1.0)
        took = paced(n, rate, lambda i: a.send("lat-b", {"t": time.time(), "i": i}))
        out, _ = child.communicate(timeout=n / 10 + 90)
    lat = [float(x) for x in out.split()]
    rp50, rp99, _ = raw_messaging(port, n, rate)
    p50, p99, k = summary(lat)
    print(f"  paced send() loop: {n / took:.0f}/s offered {rate:.0f}/s")
    print(f"  raw paho publish -> subscribe p50 {rp50:6.2f} ms p99 {rp99:6.2f} ms   agent p50 {p50:6.2f} ms "
          f"p99 {p99:6.2f} ms (n={k})   ratio p50 {p50 / rp50:5.2f}x p99 {p99 / rp99:5.2f}x")


def raw_throughput(port: int, n: int, window: int) -> tuple[float, float]:
    """Child process: n QoS 1 publishes of an envelope-sized payload as fast as paho takes them, at most
    ``window`` without a PUBACK (0: no limit, paho queues the rest); (publish() rate, rate to the last PUBACK)."""
    acked = [0]
    done = threading.Event()
    free = threading.Semaphore(window) if window else None

    def on_publish(*_a: object) -> None:
        acked[0] += 1
        if free is not None:
            free.release()
        if acked[0] >= n:
            done.set()

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(window or 65535)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.3)
    topic = "raw/tp/inbox"
    t0 = time.perf_counter()
    for i in range(n):
        if free is not None:
            free.acquire()
        c.publish(topic, codec.encode({"v": 1, "dev": "tp-raw", "seq": i + 1, "ts": time.time(), "stream": "msg",
                                       "data": {"i": i, "text": "hello"}, "cls": "event", "to": "tp-b",
                                       "kind": "msg", "sig": bytes(64)}), qos=1)
    t_put = time.perf_counter() - t0
    done.wait(n / 100 + 60)
    took = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return n / t_put, acked[0] / took


def run_raw_throughput(port: int, n: int, window: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, __file__, "--raw-throughput", str(port), str(n), str(window)],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def send_throughput(port: int, n: int, tmp: Path) -> None:
    """send() as fast as it returns, n messages: the send() rate per tenth and the rate to "sent"; then raw
    paho QoS 1 to the same broker: paced (a window of 20 un-acked, the agent's mqtt.max_inflight) and
    unpaced (paho queues everything), each in a child process."""
    from edge_agent import Agent

    sent = threading.Event()
    count = [0]

    a = Agent(device_id="tp-a", host="127.0.0.1", port=port, state_dir=str(tmp / "tp-a"))

    @a.on_message_status
    def st(m: object) -> None:
        if getattr(m, "status", "") == "sent":
            count[0] += 1
            if count[0] >= n:
                sent.set()

    with a:
        assert a.wait_online(10)
        time.sleep(0.5)
        t0 = time.perf_counter()
        block = max(1, n // 10)
        rates = []
        tb = t0
        for i in range(n):
            a.send("tp-b", {"i": i, "text": "hello"})
            if (i + 1) % block == 0:
                now = time.perf_counter()
                rates.append(block / (now - tb))
                tb = now
        t_put = time.perf_counter() - t0
        sent.wait(n / 50 + 60)
        took = time.perf_counter() - t0
    agent = count[0] / took
    print(f"messaging send() -> sent: {count[0]} of {n} sent in {took:.1f} s = {agent:.0f}/s (send() loop "
          f"{n / t_put:.0f}/s); send() rate per tenth: {', '.join(f'{r:.0f}' for r in rates)} /s "
          f"(last/first {rates[-1] / rates[0]:.2f})", flush=True)
    for window, k, name in ((20, n, "paced, window 20"),
                            (0, min(n, 20000), f"unpaced (paho queues all; {min(n, 20000)} messages: its queue "
                                               "handling is O(queued) per PUBACK)")):
        put, acked = run_raw_throughput(port, k, window)
        print(f"raw paho QoS 1 {name}: publish() {put:.0f}/s, to the last PUBACK {acked:.0f}/s; "
              f"agent/raw {agent / acked:.2f}x", flush=True)


def raw_messaging(port: int, n: int, rate: float) -> tuple[float, float, int]:
    topic = "raw/msg"
    s = Stamper(port, topic)
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    time.sleep(0.2)
    paced(n, rate, lambda i: pub.publish(topic, codec.encode({"ts": time.time(), "data": {"i": i, "text": "x" * 20}}),
                                         qos=1))
    time.sleep(1.0)
    pub.loop_stop()
    s.close()
    return summary(s.lat)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-publisher":
        raw_publisher(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-throughput":
        print(*raw_throughput(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--recipient":
        recipient(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="100,200,1000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--mode", default="write_behind", choices=("write_behind", "durable"))
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--msg-rate", type=float, default=200.0)
    ap.add_argument("--skip-messaging", action="store_true")
    ap.add_argument("--skip-telemetry", action="store_true")
    ap.add_argument("--send-throughput", type=int, default=0, metavar="N",
                    help="only: N send()s as fast as possible, rate to 'sent' and send() rate per tenth, and raw paho "
                         "QoS 1 (paced and unpaced) to the same broker")
    ap.add_argument("--broker-conf", default="set_tcp_nodelay true",
                    help="extra mosquitto.conf lines (\\n separated); default: no Nagle on the broker side")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lat-", dir="/var/tmp") as td:
        tmp = Path(td)
        broker = DevBroker(workdir=tmp / "broker", extra_conf=args.broker_conf.replace("\\n", "\n")).start()
        try:
            if args.send_throughput:
                send_throughput(broker.port, args.send_throughput, tmp)
                return
            if not args.skip_telemetry:
                telemetry(broker.port, [float(r) for r in args.rates.split(",")], args.seconds, args.mode, tmp)
            if not args.skip_messaging:
                messaging(broker.port, args.messages, args.msg_rate, tmp)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
