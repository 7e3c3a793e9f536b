"""The paho-mqtt traps, each provoked for real against Mosquitto (see docs/architecture.md)."""

from __future__ import annotations

import dataclasses
import random
import weakref
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho  # to provoke paho's own behaviour; agent code never imports it
import pytest

from edge_agent import config
from edge_agent.app import App
from edge_agent.devbroker import DevBroker
from edge_agent.errors import PublishRefused, WindowFull
from edge_agent.transport.backoff import backoff_delay
from edge_agent.transport.inflight import Inflight
from edge_agent.transport.mqtt.client import FastAckClient
from edge_agent.transport.mqtt.transport import refusal
from edge_agent.transport.types import ACCEPTED, Accepted, Ack, Refused
from tests.helpers import Collector, missing, unique, wait_for, write_config


def fill(app: App, n: int) -> None:
    """A backlog before the first connect: open (outbox, no connection), then put."""
    app.open()
    for i in range(n):
        app.pipeline.publish("bulk/x", {"i": i})


def test_backoff_full_jitter_is_bounded_and_spread() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(60.0, 0.5 * 2**attempt)
        xs = [backoff_delay(attempt, 0.5, 60.0, rng) for _ in range(300)]
        assert all(0 <= x <= ceiling for x in xs)
        assert max(xs) > 0.8 * ceiling and min(xs) < 0.2 * ceiling  # full jitter, not "ceiling +- a bit"


def test_broker_receive_maximum_caps_what_paho_holds(tmp_path: Path) -> None:
    """Never more unacked publishes than the broker's Receive Maximum, even after reconnects."""
    b = DevBroker(workdir=tmp_path / "b", extra_conf="max_inflight_messages 10\n").start()
    prefix = unique("rm")
    try:
        cfg = config.load(write_config(tmp_path / "c.toml", b.port, tmp_path / "s", prefix=prefix))
        with Collector(b.port, f"{prefix}/#") as col:
            app = App(cfg, with_sensors=False)
            fill(app, 3000)
            app.start()
            assert app.transport.wait_online(10)
            wait_for(lambda: app.outbox.pending < 1500, 30)
            app.transport.drop_connection("test: reconnect mid-drain")
            wait_for(lambda: app.outbox.pending == 0, 60, msg="drain")
            app.stop()
            assert app.transport.receive_maximum == 10 and app.transport.window == 10
            # the transport's own high-water mark, taken under its lock at every publish (status included)
            assert app.transport.peak_inflight == 10, app.transport.peak_inflight
            wait_for(lambda: not missing(col.seqs("bulk"), 3000), 20)
    finally:
        b.close()


def test_inflight_parks_an_ack_that_beats_publish_returning() -> None:
    """paho #482 in the window bookkeeping alone: the PUBACK for mid 7 arrives before publish() returned
    mid 7; the code is parked, handed back when it returns, and the slot is free again."""
    inf = Inflight()
    inf.reserve(2)
    inf.reserve(2)
    with pytest.raises(WindowFull):
        inf.reserve(2)
    assert inf.acked(7, 0) is None  # too early: parked
    assert inf.sent(7, "token-7") == 0 and inf.reserved == 1
    assert inf.sent(8, "token-8") is None  # the normal order
    assert inf.acked(8, 0x87)[0] == "token-8" and inf.reserved == 0 and inf.peak == 2


def with_fast_publish(cfg: config.Config, on: bool) -> config.Config:
    return dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, fast_publish=on))


@pytest.mark.parametrize("fast_publish", [False, True])
def test_ack_before_publish_returns_is_not_lost(tmp_path: Path, broker: DevBroker,
                                                monkeypatch: pytest.MonkeyPatch, fast_publish: bool) -> None:
    """paho #482: on_publish may run before publish() returns. Force it through paho's public surface
    (and the transport's fast path, ``mqtt.fast_publish``): every QoS 1 publish calls the client's
    on_publish callback (the transport's) before returning, and the real PUBACK later finds no callback."""
    real_publish = paho.Client.publish
    real_fast = FastAckClient.fast_publish
    early: weakref.WeakKeyDictionary[paho.Client, Any] = weakref.WeakKeyDictionary()
    calls = [0]

    def overtake(self: paho.Client, mid: int) -> None:
        calls[0] += 1
        if self not in early:
            early[self] = self.on_publish
            self.on_publish = None  # the real PUBACK then finds nothing to do
        early[self](self, self.user_data_get(), mid, 0, None)  # the ack overtakes the return

    def publish(self: paho.Client, *a: Any, **kw: Any) -> paho.MQTTMessageInfo:
        info = real_publish(self, *a, **kw)
        if kw.get("qos", 1) and info.rc == paho.MQTT_ERR_SUCCESS:
            overtake(self, info.mid)
        return info

    def fast(self: FastAckClient, topic: str, payload: bytes) -> tuple[int, int]:
        rc, mid = real_fast(self, topic, payload)
        if rc == paho.MQTT_ERR_SUCCESS:
            overtake(self, mid)
        return rc, mid

    monkeypatch.setattr(paho.Client, "publish", publish)
    monkeypatch.setattr(FastAckClient, "fast_publish", fast)
    cfg = config.load(write_config(tmp_path / "c.toml", broker.port, tmp_path / "s", prefix=unique("ea")))
    app = App(with_fast_publish(cfg, fast_publish), with_sensors=False)
    fill(app, 500)
    app.start()
    try:
        wait_for(lambda: app.outbox.pending == 0, 30, msg="all acked although every ack came early")
        assert app.transport.inflight() == 0
        assert calls[0] >= 500  # the path under test was the one taken
    finally:
        app.stop()


@pytest.mark.parametrize("fast_publish", [False, True])
def test_publish_refused_with_queue_size_is_retried_not_lost(tmp_path: Path, broker: DevBroker,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             fast_publish: bool) -> None:
    """paho #856: a full paho queue returns MQTT_ERR_QUEUE_SIZE without raising; rows go back and retry."""
    real = paho.Client.max_queued_messages_set
    # whatever queue the transport asks paho for, paho gets 3: far below the window of 20, refusals guaranteed
    monkeypatch.setattr(paho.Client, "max_queued_messages_set", lambda self, n: real(self, 3))
    prefix = unique("qs")
    cfg = config.load(write_config(tmp_path / "c.toml", broker.port, tmp_path / "s", prefix=prefix))
    refused = []
    orig = PublishRefused.__init__

    def spy(self: Exception, *a: Any) -> None:
        refused.append(a)
        orig(self, *a)

    monkeypatch.setattr(PublishRefused, "__init__", spy)
    with Collector(broker.port, f"{prefix}/#") as col:
        app = App(with_fast_publish(cfg, fast_publish), with_sensors=False)
        fill(app, 1000)
        app.start()
        try:
            wait_for(lambda: app.outbox.pending == 0, 60)
        finally:
            app.stop()
        wait_for(lambda: not missing(col.seqs("bulk"), 1000), 20)
    assert refused and "queue" in str(refused[0]).lower()


@pytest.mark.parametrize("fast_ack", [True, False])
def test_broker_refusal_in_puback_is_removed_and_counted(tmp_path: Path, fast_ack: bool,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A PUBACK carrying a failure reason code (0x87 not authorized, from Mosquitto's ACL) removes the
    message (seq 27 here) and counts it as rejected, on both the fast PUBACK decoder and paho's own path; the
    messages around it still arrive. Ack listeners see it as Refused(0x87), the others as Accepted; the
    fast decoder is used exactly when it is on (so this paho has every internal it relies on)."""
    prefix = unique("acl")
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite #\ntopic deny {prefix}/dev-1/forbidden\n")
    b = DevBroker(workdir=tmp_path / "b", extra_conf=f"acl_file {acl}\n").start()
    try:
        cfg = config.load(write_config(tmp_path / "c.toml", b.port, tmp_path / "s", prefix=prefix))
        cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, fast_ack=fast_ack))
        with Collector(b.port, f"{prefix}/#") as col:
            app = App(cfg, with_sensors=False)
            app.open()
            acks: dict[int, Ack] = {}
            app.forwarder.add_ack_listener(lambda seq, ack: acks.__setitem__(seq, ack))
            for i in range(50):
                app.pipeline.publish("bulk/x", {"i": i})
                if i == 25:
                    app.pipeline.publish("forbidden", {"secret": 1})
            app.start()
            try:
                wait_for(lambda: app.outbox.pending == 0 and app.transport.inflight() == 0, 30)
                assert app.forwarder.rejected == 1
                assert app.outbox.counters["rejected"] == 1
                assert acks[27] == Refused(0x87)
                assert str(acks[27]) == "0x87 not authorized"  # named at the transport boundary
                assert "broker rejected message seq=27 (0x87 not authorized); removed" in caplog.text
                assert all(isinstance(a, Accepted) for s, a in acks.items() if s != 27)
                assert any(a is ACCEPTED for a in acks.values())  # the hot path's singleton
                if fast_ack:
                    assert app.transport.fast_acks >= len(acks) - 1  # every plain PUBACK took the fast path
                else:
                    assert app.transport.fast_acks == 0
            finally:
                app.stop()
            # Mosquitto 2.0.11 also drops the connection after a denied publish, and the reset can discard
            # the PUBACKs in flight with it: the rows around it may arrive more than once (at least once)
            want = set(range(1, 52)) - {27}
            wait_for(lambda: set(col.seqs("bulk")) == want, 20)
            assert not col.seqs("forbidden")
    finally:
        b.close()


def test_wait_online_means_listening_not_only_connected(broker: DevBroker) -> None:
    """``wait_online`` returned at the CONNACK, before the broker had the subscriptions: a message sent
    to the device right after it was dropped by the broker (no subscriber yet) and acknowledged to its
    sender. A throttled link holds the SUBSCRIBE back ~2 s after the CONNACK, so the gap is wide."""
    from edge_agent.config import MqttConfig
    from edge_agent.transport.mqtt import MqttTransport
    from edge_agent.transport.types import InMessage
    from tests.faultkit import FaultProxy

    topic = unique("online/") + "/inbox"
    got: list[bytes] = []
    with FaultProxy(broker.port) as proxy:
        proxy.throttle(20)  # bytes/s: the CONNECT passes, then each direction sleeps ~2 s
        dev = MqttTransport(MqttConfig(host="127.0.0.1", port=proxy.port, session_expiry=0, keepalive=60),
                            client_id=unique("dev-"), persistent_session=False,
                            on_message=lambda m: got.append(m.payload) if isinstance(m, InMessage) else None)
        dev.subscribe(topic, qos=1)
        pub = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port, session_expiry=0),
                            client_id=unique("pub-"), persistent_session=False)
        dev.start()
        pub.start()
        try:
            assert pub.wait_online(10)
            assert dev.wait_online(30), dev.status
            proxy.throttle(None)
            pub.publish(topic, b"right after online", qos=1)
            wait_for(lambda: got == [b"right after online"], 10, msg="a message sent right after wait_online")
        finally:
            pub.stop(timeout=2.0)
            dev.stop(timeout=2.0)


def test_fast_publish_packets_are_what_paho_would_send(broker: DevBroker) -> None:
    """The fast path builds PUBLISH packets itself: payloads at every remaining-length boundary and a
    non-ASCII topic arrive byte for byte (decoded by paho's own receive path in a real subscriber);
    a wildcard topic is refused like paho's ``publish`` refuses it."""
    from edge_agent.config import MqttConfig
    from edge_agent.transport.mqtt import MqttTransport

    prefix = unique("fp")
    topic = f"{prefix}/temp\u00e9rature/\u6e29\u5ea6"
    head = 2 + len(topic.encode()) + 2 + 1  # the remaining length before the payload
    sizes = sorted({0, 1, 127 - head, 128 - head, 16383 - head, 16384 - head, 300_000})
    payloads = [bytes(range(256)) * (n // 256) + bytes(n % 256) for n in sizes]
    with Collector(broker.port, f"{prefix}/#").start() as col:
        t = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port, session_expiry=0),
                          client_id=unique("fast-"), persistent_session=False)
        acks: list[Any] = []
        t.set_ack_handler(lambda tok, ack: acks.append((tok, ack)))
        t.start()
        try:
            assert t.wait_online(10)
            for i, p in enumerate(payloads):
                t.publish(topic, p, qos=1, token=i)
            wait_for(lambda: len(col.messages) == len(payloads), 10, msg="every size arrives")
            with pytest.raises(ValueError):
                t.publish(f"{prefix}/+/x", b"wild", qos=1)
            wait_for(lambda: len(acks) == len(payloads), 10)
            assert t.fast_publishes >= len(payloads)  # the fast path was the one taken
        finally:
            t.stop(timeout=2.0)
        assert [(m.topic, m.payload, m.qos) for m in col.messages] == [(topic, p, 1) for p in payloads]
        assert sorted(tok for tok, _ in acks) == list(range(len(payloads)))
        assert all(ack is ACCEPTED for _, ack in acks)


def test_a_paho_without_the_fast_paths_internals_gets_paho_own_path(broker: DevBroker,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """After a paho upgrade that renames an internal the fast paths use, the client says so and the
    transport publishes through paho's ``publish()``: messages still arrive, none by the fast path."""
    from edge_agent.config import MqttConfig
    from edge_agent.transport.mqtt import MqttTransport

    c = FastAckClient(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    assert c.fast_publish_supported() and c.fast_ack_supported()
    del c._out_packet  # as if renamed
    assert not c.fast_publish_supported()
    monkeypatch.setattr(FastAckClient, "fast_publish_supported", lambda self: False)
    prefix = unique("nofast")
    with Collector(broker.port, f"{prefix}/#").start() as col:
        t = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port, session_expiry=0),
                          client_id=unique("nofast-"), persistent_session=False)
        t.start()
        try:
            assert t.wait_online(10)
            for i in range(5):
                t.publish(f"{prefix}/x", b"%d" % i, qos=1)
            wait_for(lambda: len(col.messages) == 5, 10, msg="messages through paho's publish()")
            assert t.fast_publishes == 0
        finally:
            t.stop(timeout=2.0)


def test_a_refusal_is_named_from_the_mqtt5_table_and_an_unknown_code_keeps_its_number() -> None:
    assert str(refusal(0x97)) == "0x97 quota exceeded"
    assert str(refusal(0x80)) == "0x80 unspecified error"
    assert refusal(0x87) == Refused(0x87)  # the name does not take part in equality
    # not a PUBACK code in MQTT 5 (a broker's own or a broken one): the number alone, no exception
    assert str(refusal(0xA0)) == "0xa0"
