"""Drain a 100,000-message backlog after an outage, beside raw paho-mqtt QoS 1 in the same run.

Usage::

    python bench/drain.py [--count 100000] [--inflight 20] [--dir /var/tmp]

1. The agent (``App`` in this process, no sensors) runs while the broker is *down*: ``--count``
   telemetry messages are put into its outbox (the backlog). Then the broker starts on the port the
   agent is already trying; we time from "online" to "outbox empty, every PUBACK received".
2. Baseline: raw paho-mqtt publishes the same payloads at QoS 1 to the same broker, with its own
   bounded window (``--inflight``, the agent's ``mqtt.max_inflight``): paho mids wrap at 65,535 and
   paho would otherwise queue without bound, so the baseline tracks its own un-acked set and waits for
   every PUBACK.
3. For reference only, raw paho chaining each publish from its own ``on_publish`` callback (the
   agent's forwarder does the same), the fastest raw paho gets without storing anything.
4. Prints msgs/s of both and the ratio (target >= 0.9), and the bytes written to disk per message
   (``/proc/self/io`` ``write_bytes`` over backlog build + drain) beside the payload size (target
   <= 3x).

The state directory must be on a real disk (not tmpfs), or ``write_bytes`` stays 0.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from edge_agent import config as config_mod
from edge_agent.app import App
from edge_agent.devbroker import DevBroker, free_port
from edge_agent.message import Outgoing


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def payloads(n: int) -> list[dict[str, float]]:
    return [{"value": round(20.0 + (i % 1000) / 100.0, 3)} for i in range(n)]


def run_agent(port: int, state: Path, count: int, inflight: int) -> dict[str, float]:
    text = f"""
[device]
id = "bench-1"
[mqtt]
port = {port}
max_inflight = {inflight}
reconnect_min = 0.05
reconnect_max = 0.2
[storage]
dir = "{state}"
[logging]
journal = false
level = "warning"
"""
    cfg = config_mod.loads(text, "<bench>")
    w0 = write_bytes()
    app = App(cfg, with_sensors=False)
    app.open()  # the outbox, without connecting: the backlog is built first
    topic = f"{cfg.mqtt.topic_prefix}/{cfg.device.id}/telemetry/s1"
    t0 = time.perf_counter()
    payload_bytes = 0
    for data in payloads(count):
        app.outbox.put(Outgoing(topic=topic, stream="telemetry/s1", data=data))
    app.outbox.flush(60)
    build_s = time.perf_counter() - t0
    w_build = write_bytes() - w0
    app.start()  # the broker is still down: the transport keeps trying
    time.sleep(0.3)
    rows = app.outbox.begin(10)
    payload_bytes = sum(len(r.payload) for r in rows) / max(1, len(rows))
    app.outbox.release(r.seq for r in rows)
    broker = DevBroker(port=port, workdir=state / "broker").start()
    try:
        assert app.transport.wait_online(30), "agent did not connect"
        t1 = time.perf_counter()
        while app.outbox.pending or app.forwarder.inflight():
            time.sleep(0.005)
        drain_s = time.perf_counter() - t1
        w_drain = write_bytes() - w0 - w_build
        app.stop()
    finally:
        broker.close()
    w1 = write_bytes()
    return {"w_build": w_build / count, "w_drain": w_drain / count, "build_s": build_s, "drain_s": drain_s,
            "rate": count / drain_s, "bytes": w1 - w0,
            "payload": payload_bytes, "acked": app.outbox.counters["acked"]}


def run_paho(port: int, count: int, inflight: int, payload_list: list[bytes]) -> dict[str, float]:
    acked = 0
    unacked: set[int] = set()
    cond = threading.Condition()

    def on_publish(client: paho.Client, ud: object, mid: int, rc: object, props: object) -> None:
        nonlocal acked
        with cond:
            if mid in unacked:
                unacked.discard(mid)
            else:
                early.add(mid)  # on_publish before publish() returned (paho #482)
            acked += 1
            cond.notify()

    early: set[int] = set()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-paho", protocol=paho.MQTTv5)
    c.max_inflight_messages_set(inflight)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    for p in payload_list:
        with cond:
            while len(unacked) >= inflight:
                cond.wait(1.0)
        info = c.publish("bench/paho/telemetry/s1", p, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"paho publish failed: {paho.error_string(info.rc)}")
        with cond:
            if info.mid in early:
                early.discard(info.mid)
            else:
                unacked.add(info.mid)
    with cond:
        while acked < count:
            if not cond.wait(30):
                raise RuntimeError(f"paho: only {acked}/{count} PUBACKs")
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return {"drain_s": dt, "rate": count / dt}


def run_paho_chained(port: int, count: int, inflight: int, payload_list: list[bytes]) -> dict[str, float]:
    """Reference only: raw paho publishing the next payload from its own on_publish callback (what the
    agent's forwarder does), i.e. no thread hand-off per message and nothing stored."""
    done = threading.Event()
    lock = threading.Lock()
    state = {"next": 0, "acked": 0}
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-chain", protocol=paho.MQTTv5)
    c.max_inflight_messages_set(inflight)

    def send() -> None:
        with lock:
            i = state["next"]
            if i >= count:
                return
            state["next"] = i + 1
        info = c.publish("bench/chain/telemetry/s1", payload_list[i], qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"paho publish failed: {paho.error_string(info.rc)}")

    def on_publish(*_a: object) -> None:
        with lock:
            state["acked"] += 1
            if state["acked"] == count:
                done.set()
        send()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    for _ in range(inflight):
        send()
    if not done.wait(120):
        raise RuntimeError(f"paho chained: only {state['acked']}/{count} PUBACKs")
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return {"drain_s": dt, "rate": count / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--inflight", type=int, default=20, help="window for both (mqtt.max_inflight)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating agent/paho rounds (best of each)")
    ap.add_argument("--dir", default="/var/tmp", help="parent of the state dir (a real disk, not tmpfs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from edge_agent import codec

    agents: list[dict[str, float]] = []
    bases: list[dict[str, float]] = []
    chains: list[dict[str, float]] = []
    raw = [codec.encode_envelope("bench-1", i + 1, time.time(), "telemetry/s1", data)
           for i, data in enumerate(payloads(args.count))]
    # alternate the two so that load from other processes on the machine hits both alike
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="edge-drain-", dir=args.dir) as d:
            state = Path(d)
            agents.append(run_agent(free_port(), state / "agent", args.count, args.inflight))
            with DevBroker(port=free_port(), workdir=state / "broker2") as b:
                bases.append(run_paho(b.port, args.count, args.inflight, raw))
            with DevBroker(port=free_port(), workdir=state / "broker3") as b:
                chains.append(run_paho_chained(b.port, args.count, args.inflight, raw))
        print(f"round {r + 1}: agent {agents[-1]['rate']:.0f} msg/s, paho {bases[-1]['rate']:.0f} msg/s, "
              f"paho chained {chains[-1]['rate']:.0f} msg/s", flush=True)
    agent = max(agents, key=lambda a: a["rate"])
    base = max(bases, key=lambda a: a["rate"])
    ratio = agent["rate"] / base["rate"]
    per_msg = agent["bytes"] / args.count
    print(f"backlog: {args.count} messages built in {agent['build_s']:.2f} s "
          f"({args.count / agent['build_s']:.0f} msg/s), all {int(agent['acked'])} acked")
    print(f"best of {args.rounds} rounds each:")
    print(f"agent drain:   {agent['drain_s']:.2f} s  {agent['rate']:.0f} msg/s")
    print(f"paho baseline: {base['drain_s']:.2f} s  {base['rate']:.0f} msg/s  (QoS 1, window {args.inflight})")
    print(f"ratio agent/paho: {ratio:.2f}  (target >= 0.9)")
    chain = max(chains, key=lambda a: a["rate"])
    print(f"reference, not the target's baseline: paho publishing from its own on_publish callback (no thread "
          f"hand-off, nothing stored): {chain['rate']:.0f} msg/s; agent/that: {agent['rate'] / chain['rate']:.2f}")
    print(f"disk writes: {per_msg:.0f} bytes/message (build + drain) vs payload {agent['payload']:.0f} bytes "
          f"= {per_msg / agent['payload']:.2f}x  (target <= 3x); build {agent['w_build']:.0f} + "
          f"drain {agent['w_drain']:.0f} + stop/checkpoint {per_msg - agent['w_build'] - agent['w_drain']:.0f}")


if __name__ == "__main__":
    main()
