"""Network faults against a real Mosquitto: broker SIGKILL + restart without persistence (session lost),
broker SIGSTOP for 3x keepalive, and a TCP proxy on the wire that cuts, stalls, blackholes and throttles.

The agent runs in this process (``App``) so the test can time when it noticed a dead link. Pass
criterion as everywhere: every seq 1..last_seq reached the subscriber or is covered by events/dropped.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_agent import config
from edge_agent.app import App
from edge_agent.devbroker import DevBroker
from edge_agent.host import Disposition
from edge_agent.transport.mqtt import ConnectionStatus
from tests.faultkit import FaultProxy
from tests.faults.common import final_check
from tests.helpers import Collector, missing, sensors, unique, wait_for, write_config

KEEPALIVE = 4


class StatusLog:
    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, st: ConnectionStatus) -> None:
        with self.lock:
            self.events.append((time.monotonic(), st.state, st.reason))

    def first(self, state: str, after: float) -> float | None:
        with self.lock:
            return next((t for t, s, _ in self.events if s == state and t >= after), None)


@contextmanager
def agent(tmp_path: Path, port: int, prefix: str, extra: str = "") -> Iterator[tuple[App, StatusLog]]:
    cfg = config.load(write_config(tmp_path / "c.toml", port, tmp_path / "state", prefix=prefix,
                                   keepalive=KEEPALIVE, extra=extra,
                                   sensors=sensors(("s1", 0.01, 0, "telemetry"))))
    app = App(cfg)
    log = StatusLog()
    app.on_connection(log)
    app.start()
    try:
        assert app.transport.wait_online(10)
        yield app, log
    finally:
        app.stop()


def detect_time(log: StatusLog, t0: float, limit: float) -> float:
    wait_for(lambda: log.first("offline", t0) is not None or log.first("connecting", t0) is not None,
             limit + 5, 0.05, "the agent noticing the dead link")
    t = min(x for x in (log.first("offline", t0), log.first("connecting", t0)) if x is not None)
    return t - t0


def test_broker_sigstop_3x_keepalive_detected_and_recovered(tmp_path: Path, broker: DevBroker) -> None:
    prefix = unique("st")
    with Collector(broker.port, f"{prefix}/dev-1/#", persistent=True) as col, \
            agent(tmp_path, broker.port, prefix) as (app, log):
        time.sleep(1.0)
        t0 = time.monotonic()
        broker.signal(signal.SIGSTOP)
        try:
            dt = detect_time(log, t0, 1.5 * KEEPALIVE)
            time.sleep(max(0.0, 3 * KEEPALIVE - (time.monotonic() - t0)))
        finally:
            broker.signal(signal.SIGCONT)
        print(f"half-open link (broker SIGSTOP) detected after {dt:.2f} s (keepalive {KEEPALIVE} s)")
        assert dt <= 1.5 * KEEPALIVE
        assert app.transport.wait_online(30), "reconnects after SIGCONT"
        time.sleep(1.0)
        app.stop()
        final_check(col, tmp_path / "state")


def test_proxy_blackhole_detected_within_1_5x_keepalive(tmp_path: Path, broker: DevBroker) -> None:
    prefix = unique("bh")
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{prefix}/dev-1/#") as col, \
            agent(tmp_path, proxy.port, prefix) as (app, log):
        time.sleep(1.0)
        t0 = time.monotonic()
        proxy.set_mode("blackhole")
        dt = detect_time(log, t0, 1.5 * KEEPALIVE)
        print(f"blackholed link detected after {dt:.2f} s (keepalive {KEEPALIVE} s)")
        assert dt <= 1.5 * KEEPALIVE
        time.sleep(2.0)
        proxy.set_mode("pass")
        assert app.transport.wait_online(30)
        wait_for(lambda: app.transport.connected and app.outbox.pending < 50, 30)
        app.stop()
        final_check(col, tmp_path / "state")


def test_proxy_cut_stall_throttle(tmp_path: Path, broker: DevBroker) -> None:
    prefix = unique("px")
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{prefix}/dev-1/#") as col, \
            agent(tmp_path, proxy.port, prefix) as (app, _log):
        for _ in range(3):
            time.sleep(0.7)
            assert proxy.cut() >= 1
            assert app.transport.wait_online(20)
        proxy.set_mode("stall")  # shorter than keepalive: held bytes flow on afterwards
        time.sleep(1.5)
        proxy.set_mode("pass")
        proxy.throttle(8_000)
        time.sleep(3.0)
        proxy.throttle(None)
        wait_for(lambda: app.transport.connected and app.outbox.pending < 50, 30)
        assert app.transport.reconnects >= 3
        st = app.status_dict()["outbox"]  # what the retained status message carries
        for k in ("pending", "backlog", "oldest_age_s", "last_seq", "enqueued", "sent", "acked", "evicted",
                  "expired", "reconnects"):
            assert k in st, k
        assert st["reconnects"] >= 3 and st["sent"] >= st["acked"] > 0 and st["enqueued"] > 0
        app.stop()
        acc = final_check(col, tmp_path / "state")
        print(f"after 3 cuts, a stall and a throttle: {acc.summary()}")


def test_broker_restart_without_persistence_resubscribes_and_replays(tmp_path: Path, broker: DevBroker) -> None:
    """Session lost: the agent re-subscribes and replays everything un-acked. The proxy keeps the agent
    away until the subscriber is back, so that what the broker accepts has somewhere to go."""
    prefix = unique("rs")
    probe_topic = f"{prefix}/dev-1/probe"
    probes: list[bytes] = []
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{prefix}/dev-1/#", persistent=True) as col, \
            agent(tmp_path, proxy.port, prefix) as (app, _log):
        app.host.subscribe(probe_topic, lambda t: t == probe_topic,
                           lambda m: probes.append(m.payload) or Disposition.ACK)
        time.sleep(1.0)
        proxy.set_mode("refuse")
        broker.kill()
        proxy.cut()
        time.sleep(2.0)  # the agent keeps sampling into its outbox
        backlog = app.outbox.pending
        broker.start()
        assert col.t.wait_online(20)
        time.sleep(1.0)  # collector re-subscribed
        proxy.set_mode("pass")
        assert app.transport.wait_online(20)
        assert not app.transport.status.session_present, "a restarted broker without persistence lost the session"
        time.sleep(0.5)
        col.t.publish(probe_topic, b"hello", qos=1)
        wait_for(lambda: probes == [b"hello"], 10, msg="re-subscribed after the session was lost")
        wait_for(lambda: app.outbox.pending < 50, 30)
        app.stop()
        acc = final_check(col, tmp_path / "state")
        print(f"backlog at restart {backlog}; {acc.summary()}")
        assert backlog > 20


def test_after_a_loss_the_messages_in_flight_go_again_one_at_a_time(tmp_path: Path, broker: DevBroker) -> None:
    """Messages in flight when the link was lost are sent again one at a time, then the window opens
    (Mosquitto resets the connection after a refused publish; with a full window behind the refused
    message, the reset discarded the refusal's PUBACK and the cycle repeated). A stalled proxy keeps
    20 messages unacknowledged, a cut loses them; after the reconnect the next 20 publishes each find
    nothing of the forwarder's in flight, and later ones fill the window again."""
    prefix = unique("ss")
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{prefix}/dev-1/#") as col:
        cfg = config.load(write_config(tmp_path / "c.toml", proxy.port, tmp_path / "state", prefix=prefix,
                                       keepalive=KEEPALIVE))
        cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, max_inflight=20))
        app = App(cfg, with_sensors=False)
        app.start()
        try:
            assert app.transport.wait_online(10)
            seen: list[int] = []  # the forwarder's messages in flight at each of its publishes
            real = app.transport.publish

            def publish(topic: str, payload: bytes, *a: Any, token: Any = None, **kw: Any) -> None:
                if isinstance(token, int):
                    seen.append(app.forwarder.inflight())
                real(topic, payload, *a, token=token, **kw)

            app.transport.publish = publish  # type: ignore[method-assign]
            proxy.set_mode("stall")
            for i in range(20):
                app.pipeline.publish("bulk/x", {"i": i})
            wait_for(lambda: app.forwarder.inflight() >= 20, 10, msg="a full window in flight behind the stall")
            lost = len(seen)  # the window less the status message: nothing of these is acknowledged
            assert lost >= 15, seen
            proxy.cut()
            proxy.set_mode("pass")
            assert app.transport.wait_online(20)
            wait_for(lambda: len(seen) >= 2 * lost, 10, msg="the lost messages sent again")
            again = seen[lost:2 * lost]
            for i in range(20, 200):
                app.pipeline.publish("bulk/x", {"i": i})
            wait_for(lambda: app.outbox.pending == 0, 20)
            assert max(again) <= 1, again  # the status message may be the one in flight
            assert max(seen[2 * lost:]) > 1, "the window opened again after them"
        finally:
            app.stop()
        wait_for(lambda: not missing(col.seqs("bulk"), 200), 20)
