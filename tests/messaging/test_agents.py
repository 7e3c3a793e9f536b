"""Acceptance: two or more real agents (real App, outbox, SQLite) on a real mosquitto."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from edge_agent import Agent, codec
from edge_agent.config import MqttConfig
from edge_agent.devbroker import DevBroker
from edge_agent.errors import EdgeAgentError
from edge_agent.messaging.service import MessagingError
from edge_agent.transport.mqtt import MqttTransport
from tests.helpers import Collector, unique, wait_for
from tests.messaging.common import Recorder, make_agent

FULL_PATH = ["pending", "queued", "sent", "delivered", "read"]


def collapse(seq: list[str]) -> list[str]:
    return [s for i, s in enumerate(seq) if i == 0 or seq[i - 1] != s]


def test_every_status_transition_direct_and_group(broker: DevBroker, tmp_path: Path) -> None:
    a = make_agent(broker, tmp_path, "123")
    b = make_agent(broker, tmp_path, "456", groups=("ops",))
    c = make_agent(broker, tmp_path, "789", groups=("ops",))
    ra, rb, rc = Recorder(a), Recorder(b, read=True), Recorder(c, read=True)
    with a, b, c:
        assert a.wait_online(10) and b.wait_online(10) and c.wait_online(10)
        time.sleep(0.3)  # first connections: let the brokers' SUBACKs for b's and c's new sessions land
        m = a.send("456", {"text": "hello 456"})
        assert m.id == f"123:{m.seq}" and m.status == "pending" and m.outgoing
        assert a.wait_status(m, "read", timeout=15).status == "read"
        wait_for(lambda: ra.status_of(m.id) == FULL_PATH, 5, msg=f"status path, got {ra.status_of(m.id)}")
        assert rb.data() == [{"text": "hello 456"}]
        got = rb.messages[0]
        assert got.id == m.id and got.sender == "123" and got.to == "123" and not got.outgoing

        g = a.send_group("ops", "valve 3 stuck")
        wait_for(lambda: set((a.message(g.id) or g).receipts.values()) == {"read"}
                 and len((a.message(g.id) or g).receipts) == 2, 15, msg="read receipts from both members")
        final = a.message(g.id)
        assert final is not None and final.status == "read" and final.receipts == {"456": "read", "789": "read"}
        # one event per member receipt: collapsed, the path is the same as for a direct message
        wait_for(lambda: collapse(ra.status_of(g.id)) == FULL_PATH, 5, msg=f"group path {ra.status_of(g.id)}")
        assert rb.data()[-1] == "valve 3 stuck" and rc.data() == ["valve 3 stuck"]
        assert rb.messages[-1].group == "ops"

        s = a.publish("inference/m1", {"score": 0.2}, cls="inference")
        assert a.wait_status(s, "sent", timeout=10).status == "sent"
        wait_for(lambda: ra.status_of(s.id) == ["pending", "queued", "sent"], 5, msg="stream message statuses")
        assert ra.connection[:2] == ["connecting", "online"]


def test_offline_recipient_gets_everything_in_order_exactly_once(broker: DevBroker, tmp_path: Path) -> None:
    a = make_agent(broker, tmp_path, "123")
    b = make_agent(broker, tmp_path, "456")
    with b:  # first contact creates b's persistent session (inbox subscription) at the broker
        assert b.wait_online(10)
    with Collector(broker.port, "edge/456/inbox") as spy:  # a plain subscriber sees the raw envelopes
        a.start()
        ra = Recorder(a)
        sent = [a.send("456", {"n": i, "text": f"message {i}"}) for i in range(30)]
        for m in sent:
            a.wait_status(m, "sent", timeout=15)
        wait_for(lambda: spy.count() >= 30, 10, msg="spy saw the messages")
        # b is offline: nothing can be delivered yet
        time.sleep(0.5)
        assert all(a.message(m.id).status == "sent" for m in sent)  # type: ignore[union-attr]

        b2 = make_agent(broker, tmp_path, "456")
        rb = Recorder(b2, read=True)
        with b2:
            wait_for(lambda: len(rb.messages) >= 30, 20, msg="b receives the backlog")
            # the broker redelivers (QoS 1 duplicate): b's app must not see it twice
            raw = spy.messages[5].payload
            pub = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port), client_id=unique("dup-"),
                                persistent_session=False)
            pub.start()
            assert pub.wait_online(5)
            pub.publish("edge/456/inbox", raw, qos=1)
            pub.publish("edge/456/inbox", raw, qos=1)
            for m in sent:
                a.wait_status(m, "read", timeout=20)
            time.sleep(1.0)
            pub.stop()
            assert [d["n"] for d in rb.data()] == list(range(30))  # in order, exactly once
            assert b2.service.history.count() == 30
        for m in sent:
            path = ra.status_of(m.id)
            assert path.index("delivered") < path.index("read"), path
        a.stop()


def test_message_past_its_ttl_ends_expired(broker: DevBroker, tmp_path: Path) -> None:
    a = make_agent(broker, tmp_path, "123")
    b = make_agent(broker, tmp_path, "456")
    with b:
        assert b.wait_online(10)
    with a:
        ra = Recorder(a)
        short = a.send("456", "only useful for a second", ttl=1.5)
        later = a.send("456", "no ttl")
        a.wait_status(short, "sent", timeout=10)
        m = a.wait_status(short, "expired", timeout=10)
        assert m.status == "expired" and "time-to-live" in m.reason
        assert ra.status_of(short.id)[-1] == "expired"
        b2 = make_agent(broker, tmp_path, "456")
        rb = Recorder(b2)
        with b2:
            a.wait_status(later, "delivered", timeout=15)
            time.sleep(0.5)
            assert rb.data() == ["no ttl"]  # the expired one never reaches the recipient's app
            assert b2.service.history.get(short.id) is None
        assert a.message(short.id).status == "expired"  # type: ignore[union-attr]


def test_restart_of_either_side_loses_no_message_and_no_status(broker: DevBroker, tmp_path: Path) -> None:
    a = make_agent(broker, tmp_path, "123")
    b = make_agent(broker, tmp_path, "456")
    rb = Recorder(b)
    with a, b:
        assert b.wait_online(10)  # b has no session yet: its inbox subscription must exist before m1 goes out
        time.sleep(0.5)
        m1 = a.send("456", "m1")
        a.wait_status(m1, "delivered", timeout=15)
        wait_for(lambda: len(rb.messages) == 1, 5)
    # both stopped; b reads m1 while a is down, and a sends m2 while b is down
    b = make_agent(broker, tmp_path, "456")
    with b:
        assert b.wait_online(10)
        assert b.mark_read(peer="123") == 1
        b.app.outbox.flush()
        b.app.forwarder.drain(5)
    a = make_agent(broker, tmp_path, "123")
    ra = Recorder(a)
    with a:
        assert a.message(m1.id).status in ("delivered", "read")  # type: ignore[union-attr]
        a.wait_status(m1, "read", timeout=15)  # the receipt waited at the broker for a
        m2 = a.send("456", "m2")
        a.wait_status(m2, "sent", timeout=10)
    assert a.message is not None
    # restart b: m2 arrives exactly once; m1 is not delivered again
    b = make_agent(broker, tmp_path, "456")
    rb = Recorder(b, read=True)
    with b:
        wait_for(lambda: rb.data() == ["m2"], 15, msg=f"m2 only, got {rb.data()}")
        b.app.outbox.flush()
        b.app.forwarder.drain(5)
        time.sleep(0.5)
        assert rb.data() == ["m2"]
    a = make_agent(broker, tmp_path, "123")
    with a:
        assert a.wait_status(m2, "read", timeout=15).status == "read"
        statuses = {m.id: m.status for m in a.history(peer="456")}
        assert statuses == {m1.id: "read", m2.id: "read"}
    assert "read" in ra.status_of(m1.id)


def test_file_transfer_resumes_across_a_recipient_restart(broker: DevBroker, tmp_path: Path) -> None:
    data = os.urandom(120 * 1024)
    src = tmp_path / "model.tflite"
    src.write_bytes(data)
    b = make_agent(broker, tmp_path, "456")
    with b:
        assert b.wait_online(10)
    # a queues the file while offline, then drains it at 15 chunks/s so b can be restarted mid-transfer
    a = make_agent(broker, tmp_path, "123", mqtt={"max_rate": 15.0}, messaging={"chunk_size": 1024})
    ra = Recorder(a)
    f = a.send_file("456", src)
    assert f.kind == "file" and f.data["chunks"] == 120 and f.data["sha256"] == hashlib.sha256(data).hexdigest()
    with a:
        b = make_agent(broker, tmp_path, "456")
        with b:
            wait_for(lambda: (st := b.service.assembler.state(f.id)) is not None and st.received >= 20, 20,
                     msg="part of the file arrived")
        st = b.service.assembler.state(f.id)
        assert st is not None and not st.complete and st.missing
        assert a.message(f.id).status in ("queued", "sent")  # type: ignore[union-attr]
        b = make_agent(broker, tmp_path, "456")
        rb = Recorder(b, read=True)
        with b:
            wait_for(lambda: len(rb.messages) == 1, 30, msg="file assembled after the restart")
            got = rb.messages[0]
            assert got.kind == "file" and got.id == f.id and got.data["name"] == "model.tflite"
            assert Path(got.data["path"]).read_bytes() == data
            a.wait_status(f, "read", timeout=15)
        assert ra.status_of(f.id) == FULL_PATH


def test_connection_status_and_auth_failure(tmp_path: Path) -> None:
    try:
        broker = DevBroker(workdir=tmp_path / "b", extra_conf="allow_anonymous false\n").start()
    except Exception as e:  # pragma: no cover
        pytest.skip(str(e))
    try:
        a = make_agent(broker, tmp_path, "123")
        seen: list[tuple[str, str]] = []
        a.on_connection_status(lambda st: seen.append((st.state, st.reason)))
        with a:
            wait_for(lambda: any(s == "auth_failed" for s, _ in seen), 10, msg="auth_failed reported")
        assert seen[0][0] == "connecting"
        assert any("Not authorized" in r for s, r in seen if s == "auth_failed")
    finally:
        broker.close()


def test_bad_input_is_refused_clearly(broker: DevBroker, tmp_path: Path) -> None:
    a = make_agent(broker, tmp_path, "123")
    with a:
        for call, match in [
            (lambda: a.send("a/b", "x"), "recipient must be a device/app id"),
            (lambda: a.send("456", object()), "cannot be encoded"),
            (lambda: a.send("123", "x"), "to myself"),
            (lambda: a.send("456", "x" * (2 * 1024 * 1024)), "use send_file"),
            (lambda: a.send("456", "x", ttl=-1), "ttl must be a positive number"),
            (lambda: a.send_group("", "x"), "group must be"),
            (lambda: a.publish("inbox", 1), "reserved"),
            (lambda: a.publish("a/+/b", 1), "stream must be topic levels"),
            (lambda: a.publish("x", 1, cls="urgent"), "cls must be one of"),
            (lambda: a.send_file("456", tmp_path / "missing.bin"), "not a readable file"),
            (lambda: a.subscribe("edge/#/x"), "bad topic filter"),
            (lambda: a.mark_read(), "give message ids"),
        ]:
            with pytest.raises(MessagingError, match=match) as ei:
                call()
            assert isinstance(ei.value, EdgeAgentError) and isinstance(ei.value, ValueError)
        assert list(a.history()) == []  # nothing was half-sent


def test_garbage_on_the_inbox_is_dropped_without_harm(broker: DevBroker, tmp_path: Path) -> None:
    b = make_agent(broker, tmp_path, "456")
    rb = Recorder(b)
    with b:
        assert b.wait_online(10)
        pub = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port), client_id=unique("junk-"),
                            persistent_session=False)
        pub.start()
        assert pub.wait_online(5)
        for payload in (b"\xc1\xc1", b"not msgpack", codec.encode({"v": 1}), codec.encode([1, 2])):
            pub.publish("edge/456/inbox", payload, qos=1)
        pub.publish("edge/456/inbox", codec.encode_envelope("999", 1, time.time(), "msg", "still works"), qos=1)
        wait_for(lambda: rb.data() == ["still works"], 10)
        pub.stop()


def test_outbox_expiry_while_offline_ends_expired(tmp_path: Path) -> None:
    # never started: no broker, no sweep thread; the outbox's own TTL expiry reports the drop
    a = Agent(device_id="123", host="127.0.0.1", port=1, state_dir=tmp_path / "a")
    try:
        m = a.send("456", "x", ttl=1)
        wait_for(lambda: a.message(m.id).status == "expired", 15, msg="outbox expiry")  # type: ignore[union-attr]
        assert "outbox dropped it" in a.message(m.id).reason  # type: ignore[union-attr]
    finally:
        a.stop()


def chunk_env(dev: str, seq: int, tid: str | None, i: int, n: int, data: bytes, sha: str) -> bytes:
    return codec.encode_envelope(dev, seq, time.time(), "file", {"transfer": tid, "i": i, "n": n, "sha256": sha,
                                                                "name": "f.bin", "size": len(data), "chunk": data},
                                 to="456", kind="file")


def test_missing_chunks_are_reported_and_resent(broker: DevBroker, tmp_path: Path) -> None:
    b = make_agent(broker, tmp_path, "456")
    rb = Recorder(b)
    data = os.urandom(4000)
    sha = hashlib.sha256(data).hexdigest()
    parts = [data[i:i + 1000] for i in range(0, 4000, 1000)]
    with b, Collector(broker.port, "edge/999/receipts") as receipts:
        assert b.wait_online(10)
        pub = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port), client_id=unique("fake-"),
                            persistent_session=False)
        pub.start()
        assert pub.wait_online(5)
        # a fake sender 999 whose chunk 2 was lost on the way
        for seq, i in ((10, 0), (11, 1), (13, 3)):
            pub.publish("edge/456/inbox", chunk_env("999", seq, None if i == 0 else "999:10", i, 4, parts[i], sha))
        wait_for(lambda: any(e["data"].get("status") == "missing" for e in receipts.envelopes), 10,
                 msg="missing-chunk report")
        rep = next(e["data"] for e in receipts.envelopes if e["data"].get("status") == "missing")
        assert rep["ids"] == ["999:10"] and rep["missing"] == [2]
        pub.publish("edge/456/inbox", chunk_env("999", 14, "999:10", 2, 4, parts[2], sha))
        wait_for(lambda: len(rb.messages) == 1, 10, msg="file complete after the re-send")
        assert Path(rb.messages[0].data["path"]).read_bytes() == data
        wait_for(lambda: any(e["data"].get("status") == "delivered" for e in receipts.envelopes), 10)
        # a corrupted transfer: the sha256 does not match -> "failed" receipt, nothing delivered
        bad = hashlib.sha256(b"other").hexdigest()
        pub.publish("edge/456/inbox", chunk_env("999", 20, None, 0, 1, b"zzz", bad))
        wait_for(lambda: any(e["data"].get("status") == "failed" for e in receipts.envelopes), 10)
        assert len(rb.messages) == 1
        pub.stop()

    # the sender side: a "missing" receipt makes the sender re-send exactly those chunks from the file
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(5000))
    a = make_agent(broker, tmp_path, "123", messaging={"chunk_size": 1024})
    with a, Collector(broker.port, "edge/456/inbox") as inbox:
        f = a.send_file("456", src)
        a.wait_status(f, "sent", timeout=10)
        wait_for(lambda: len(inbox.envelopes) == 5, 10)
        pub = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port), client_id=unique("fake-"),
                            persistent_session=False)
        pub.start()
        assert pub.wait_online(5)
        pub.publish("edge/123/receipts", codec.encode_envelope("456", 1, time.time(), "receipts",
                                                               {"status": "missing", "ids": [f.id], "missing": [1, 3]}))
        wait_for(lambda: len(inbox.envelopes) == 7, 10, msg="re-sent chunks")
        again = inbox.envelopes[5:]
        assert [e["data"]["i"] for e in again] == [1, 3] and all(e["data"]["transfer"] == f.id for e in again)
        assert again[0]["data"]["chunk"] == src.read_bytes()[1024:2048]
        pub.stop()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGE_AGENT_LONG"), reason="long variant: set EDGE_AGENT_LONG=1")
def test_long_offline_backlog_in_order_exactly_once(broker: DevBroker, tmp_path: Path) -> None:
    n = 5000
    b = make_agent(broker, tmp_path, "456")
    with b:
        assert b.wait_online(10)
    a = make_agent(broker, tmp_path, "123")
    with a:
        sent = [a.send("456", {"n": i}) for i in range(n)]
        a.wait_status(sent[-1], "sent", timeout=120)
        b = make_agent(broker, tmp_path, "456")
        rb = Recorder(b, read=True)
        t0 = time.monotonic()
        with b:
            wait_for(lambda: len(rb.messages) >= n, 300, interval=0.2, msg=f"{n} delivered")
            elapsed = time.monotonic() - t0
            for m in sent[-10:]:
                a.wait_status(m, "read", timeout=120)
            time.sleep(1.0)
            assert [d["n"] for d in rb.data()] == list(range(n))
        print(f"\n{n} messages from an offline backlog reached the app in {elapsed:.1f} s "
              f"({n / elapsed:.0f} msg/s)")
