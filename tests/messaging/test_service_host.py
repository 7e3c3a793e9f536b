"""MessagingService on its own, against tests/fakes.py FakeHost (no broker): what it puts, what an inbound
message does, how each typed ack / drop / receipt moves a status, and what happens when the history
cannot take a message right now. The end-to-end tests against a real Mosquitto are in test_agents.py."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import codec
from edge_agent import config as config_mod
from edge_agent.host import LINK_LOST, ConnectionStatus, Disposition, Outgoing, Refused
from edge_agent.messaging.history import HISTORY_FILE, History, HistoryError, Message
from edge_agent.messaging.service import MessagingError, MessagingService
from tests.fakes import FakeHost
from tests.helpers import wait_for

P = "site1"  # a topic prefix other than the default: it must come from host.config
Make = Callable[..., tuple[FakeHost, MessagingService]]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    made: list[MessagingService] = []

    def make(dev: str = "me", *, groups: tuple[str, ...] = (), start: bool = True,
             state: Path | None = None, **messaging: Any) -> tuple[FakeHost, MessagingService]:
        cfg = config_mod.parse({"device": {"id": dev, "groups": list(groups)}, "mqtt": {"topic_prefix": P},
                                "messaging": {"chunk_size": 1024, **messaging}}, "<test>")
        host = FakeHost(cfg, state or tmp_path / dev)
        svc = MessagingService(host)
        made.append(svc)
        if start:
            svc.start()
        return host, svc

    yield make
    for s in made:
        s.stop()


def env(dev: str, seq: int, stream: str, data: Any, **extra: Any) -> bytes:
    return codec.encode_envelope(dev, seq, time.time(), stream, data, **extra)


def wire(dev: str, seq: int, o: Outgoing) -> bytes:
    """The envelope the outbox would publish for ``o`` put as ``seq`` by ``dev``."""
    return codec.encode_envelope(dev, seq, o.ts or time.time(), o.stream, o.data, **(o.extra or {}),
                                 cls=None if o.cls == "telemetry" else o.cls)


def status(svc: MessagingService, mid: str) -> str:
    assert svc.settle(5.0)  # PUBACKs are recorded by the ack thread
    m = svc.history.get(mid)
    assert m is not None, mid
    return m.status


# ---------------------------------------------------------------- lifecycle

def test_constructor_only_stores_start_opens_and_subscribes(make: Make, tmp_path: Path) -> None:
    host, svc = make(start=False, groups=("ops",))
    assert not (tmp_path / "me").exists() and host.subscriptions == [] and host.sent == []
    with pytest.raises(MessagingError, match="not open yet"):
        svc.send("bob", "too early")
    host.commit([1])  # no callback was registered: nothing to call
    svc.start()
    assert (tmp_path / "me" / HISTORY_FILE).is_file()  # the transfers dir is made by the first chunk
    assert [f for f, *_ in host.subscriptions] == [f"{P}/me/inbox", f"{P}/me/receipts", f"{P}/group/ops/msg",
                                                   f"{P}/group/ops/members/+"]
    # the retained membership of device.groups: state re-sent per connect, not an outbox message with a seq
    assert json.loads(host.state[f"{P}/group/ops/members/me"])["dev"] == "me"
    assert not host.sent_to(f"{P}/group/ops/members/me")
    assert all(qos == 1 for *_, qos in host.subscriptions)
    svc.stop()
    assert svc.history.closed
    with pytest.raises(MessagingError, match="was stopped"):
        svc.start()


def test_open_without_start_allows_sending_before_the_link_is_up(make: Make) -> None:
    host, svc = make(start=False)
    svc.open()
    m = svc.send("bob", "queued while offline")
    assert m.status == "pending" and host.subscriptions == []  # start() subscribes, open() does not


# ---------------------------------------------------------------- sending and typed acks

def test_send_puts_an_envelope_to_the_recipients_inbox(make: Make) -> None:
    host, svc = make()
    m = svc.send("bob", {"text": "hello"})
    ((seq, o),) = host.sent
    assert o.topic == f"{P}/bob/inbox" and o.stream == "msg" and o.data == {"text": "hello"} and o.cls == "event"
    extra = dict(o.extra or {})
    seal = extra.pop("sig")  # the envelope's signature is made when the outbox builds it (authn.Seal)
    assert extra == {"to": "bob", "kind": "msg"} and o.props is None  # no ttl chosen: none travels along
    assert seal.topic == f"{P}/bob/inbox"
    assert m.id == f"me:{seq}" and m.status == "pending" and m.outgoing and m.to == "bob"
    g = svc.send_group("ops", "valve 3", ttl=60)
    o = host.sent[-1][1]
    extra = dict(o.extra or {})
    assert o.topic == f"{P}/group/ops/msg" and extra.pop("sig").topic == o.topic
    assert extra == {"group": "ops", "kind": "msg", "ttl": 60.0}
    assert o.ttl == 60.0 and o.props == {"message_expiry": 60} and g.group == "ops"
    s = svc.publish("inference/m1", {"score": 0.5}, cls="inference")
    o = host.sent[-1][1]
    assert o.topic == f"{P}/me/inference/m1" and o.cls == "inference" and s.kind == "stream"


def test_commit_then_accepted_ack_moves_pending_queued_sent_reported_in_order(make: Make) -> None:
    host, svc = make()
    seen: list[tuple[str, str]] = []
    svc.add_listener("status", lambda m: seen.append((m.id, m.status)))
    m = svc.send("bob", "x")
    seq = host.sent[-1][0]
    host.commit([seq])
    assert status(svc, m.id) == "queued"
    host.ack(seq)
    assert status(svc, m.id) == "sent"
    wait_for(lambda: [s for i, s in seen if i == m.id] == ["pending", "queued", "sent"], 5, msg=str(seen))


def test_an_ack_that_beats_the_history_record_still_counts(make: Make) -> None:
    """Real time: the forwarder can publish a seq and get its PUBACK (on the network thread) while send()
    is still writing the message to the history. That ack must not be lost (it was: the message, or a
    file, stayed ``queued`` for good and showed up as a hang after a restart under load)."""
    host, svc = make()
    real_put = host.put
    acker: list[threading.Thread] = []

    def put_then_ack_at_once(msg: Outgoing) -> int:
        seq = real_put(msg)
        t = threading.Thread(target=host.ack, args=(seq,))  # the PUBACK arrives before the seq is recorded
        t.start()
        t.join(0.2)  # give it every chance to run first
        acker.append(t)
        return seq

    host.put = put_then_ack_at_once  # type: ignore[method-assign]
    m = svc.send("bob", "fast link")
    for t in acker:
        t.join(5)
    host.commit([host.sent[-1][0]])
    assert status(svc, m.id) == "sent"


def test_refused_ack_turns_the_message_failed_with_the_reason_code(make: Make) -> None:
    host, svc = make()
    m = svc.send("bob", "not allowed")
    host.ack(host.sent[-1][0], Refused(0x87, "not authorized"))  # as the MQTT transport names it
    assert svc.settle(5.0)
    got = svc.history.get(m.id)
    assert got is not None and got.status == "failed"
    assert got.reason == "the broker refused the message (0x87 not authorized)"


def test_link_lost_leaves_it_pending_and_a_later_ack_still_counts(make: Make) -> None:
    host, svc = make()
    m = svc.send("bob", "x")
    seq = host.sent[-1][0]
    host.ack(seq, LINK_LOST)
    assert status(svc, m.id) == "pending"
    host.ack(seq)  # sent again after the reconnect, acknowledged this time
    assert status(svc, m.id) == "sent"


@pytest.mark.parametrize(("reason", "final", "why"), [("expired", "expired", "time-to-live"),
                                                      ("capacity", "failed", "capacity"),
                                                      ("disk_full", "failed", "disk_full")])
def test_a_dropped_seq_ends_the_message(make: Make, reason: str, final: str, why: str) -> None:
    host, svc = make()
    m = svc.send("bob", "x")
    host.commit()
    host.drop([host.sent[-1][0]], reason)
    got = svc.history.get(m.id)
    assert got is not None and got.status == final and why in got.reason
    host.ack(host.sent[-1][0])  # a late ack of a dropped seq changes nothing
    assert status(svc, m.id) == final


def test_acks_and_drops_of_seqs_that_are_not_ours_are_ignored(make: Make) -> None:
    host, svc = make()
    m = svc.send("bob", "x")
    host.ack(999, Refused(0x80))
    host.drop([998], "capacity")
    assert status(svc, m.id) == "pending"


# ---------------------------------------------------------------- receiving

def test_inbound_message_is_stored_acknowledged_and_answered_with_a_delivered_receipt(make: Make) -> None:
    host, svc = make()
    got: list[Message] = []
    svc.add_listener("message", got.append)
    topic = f"{P}/me/inbox"
    assert host.deliver(topic, env("bob", 7, "msg", {"text": "hi"}, to="me", kind="msg")) is Disposition.ACK
    assert host.acked_inbound == [topic]
    m = svc.history.get("bob:7")
    assert m is not None and m.data == {"text": "hi"} and m.status == "received" and m.unread and m.to == "bob"
    (rcpt,) = host.sent_to(f"{P}/bob/receipts")
    assert rcpt.stream == "receipts" and rcpt.data == {"status": "delivered", "ids": ["bob:7"]}
    # a redelivery (QoS 1 duplicate): acknowledged, stored once, the receipt sent again
    assert host.deliver(topic, env("bob", 7, "msg", {"text": "hi"})) is Disposition.ACK
    assert svc.history.count() == 1 and len(host.sent_to(f"{P}/bob/receipts")) == 2
    wait_for(lambda: [m.id for m in got] == ["bob:7"], 5, msg="on_message once")
    time.sleep(0.2)
    assert len(got) == 1


def test_the_delivered_receipt_commit_is_recorded_so_a_restart_does_not_resend_it(make: Make, tmp_path: Path) -> None:
    host, svc = make()
    host.deliver(f"{P}/me/inbox", env("bob", 1, "msg", "a"))
    host.deliver(f"{P}/me/inbox", env("bob", 2, "msg", "b"))
    host.commit([host.sent[0][0]])  # only the first receipt reached the outbox's disk
    svc.stop()
    host2, _ = make(state=tmp_path / "me")
    (again,) = host2.sent_to(f"{P}/bob/receipts")
    assert again.data == {"status": "delivered", "ids": ["bob:2"]}


def test_garbage_and_foreign_envelopes_are_acknowledged_and_dropped(make: Make) -> None:
    host, svc = make()
    topic = f"{P}/me/inbox"
    for payload in (b"\xc1", b"not msgpack", codec.encode({"v": 1}), codec.encode([1, 2]),
                    codec.encode({"dev": "a/b", "seq": 1, "ts": 1.0, "stream": "msg"}),
                    codec.encode({"dev": "bob", "seq": True, "ts": 1.0, "stream": "msg"})):
        assert host.deliver(topic, payload) is Disposition.ACK
    assert len(host.acked_inbound) == 6 and svc.history.count() == 0 and host.sent == []


def test_expired_inbound_message_is_acknowledged_but_not_stored(make: Make) -> None:
    host, svc = make()
    stale = codec.encode_envelope("bob", 3, time.time() - 100, "msg", "late", ttl=10)
    assert host.deliver(f"{P}/me/inbox", stale) is Disposition.ACK
    assert svc.history.count() == 0 and host.sent == []


def test_group_message_lands_in_the_group_and_our_own_copy_is_ignored(make: Make) -> None:
    host, svc = make(groups=("ops",))
    host.deliver(f"{P}/group/ops/msg", env("ann", 5, "msg", "valve stuck", group="ops"))
    mine = svc.send_group("ops", "on my way")
    host.deliver(f"{P}/group/ops/msg", env("me", mine.seq, "msg", "on my way", group="ops"))
    m = svc.history.get("ann:5")
    assert m is not None and m.group == "ops" and m.to is None
    assert [x.id for x in svc.history.query(group="ops")] == ["ann:5", mine.id]


def test_receipts_move_our_message_to_delivered_then_read_only_from_the_recipient(make: Make) -> None:
    host, svc = make()
    m = svc.send("bob", "x")
    rcpts = f"{P}/me/receipts"
    host.deliver(rcpts, env("mallory", 1, "receipts", {"status": "read", "ids": [m.id]}))
    assert status(svc, m.id) == "pending"
    host.deliver(rcpts, env("bob", 1, "receipts", {"status": "delivered", "ids": [m.id, "other:1", 5]}))
    assert status(svc, m.id) == "delivered"  # the receipt overtook commit and PUBACK: steps filled in
    host.ack(host.sent[0][0])  # the late PUBACK does not move it back
    host.deliver(rcpts, env("bob", 2, "receipts", {"status": "read", "ids": [m.id]}))
    got = svc.history.get(m.id)
    assert got is not None and got.status == "read" and got.receipts == {"bob": "read"}
    host.deliver(rcpts, env("bob", 3, "receipts", {"status": "failed", "ids": [m.id], "reason": "x"}))
    assert status(svc, m.id) == "read"  # read is final evidence


def test_subscribe_before_and_after_start_receives_stream_messages(make: Make) -> None:
    host, svc = make(start=False)
    assert svc.subscribe("edge/+/inference/#") == "edge/+/inference/#"
    svc.start()
    assert svc.subscribe("x/+/y", share="pool") == "$share/pool/x/+/y"
    assert [f for f, *_ in host.subscriptions][-2:] == ["edge/+/inference/#", "$share/pool/x/+/y"]
    assert host.deliver("edge/cam-1/inference/m1", env("cam-1", 4, "inference/m1", {"score": 0.9})) is Disposition.ACK
    assert host.deliver("x/a/y", env("a", 1, "y", 1)) is Disposition.ACK
    assert host.deliver("edge/cam-1/telemetry/t", env("cam-1", 5, "telemetry/t", 1)) is None  # not subscribed
    assert [m.id for m in svc.history.query(kind="stream")] == ["cam-1:4", "a:1"]
    assert host.sent == []  # no receipts for stream messages


# ---------------------------------------------------------------- a history that cannot store right now

def _fill_up(h: History) -> None:
    """Make the history's SQLite file "full" at its current size (SQLITE_FULL on the next new page)."""
    with h.db as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")


def _make_room(h: History) -> None:
    with h.db as conn:
        conn.execute("PRAGMA max_page_count=1073741823")


def test_disk_full_defers_inbound_messages_and_acks_them_in_order_once_stored(make: Make) -> None:
    host, svc = make()
    got: list[Any] = []
    svc.add_listener("message", lambda m: got.append(m.data))
    topic = f"{P}/me/inbox"
    _fill_up(svc.history)
    big = "x" * 200_000  # needs new pages whatever free space the file has
    assert host.deliver(topic, env("bob", 1, "msg", big)) is Disposition.DEFER
    assert host.deliver(topic, env("bob", 2, "msg", "small")) is Disposition.DEFER  # behind the first
    assert host.acked_inbound == [] and host.sent == [] and svc.history.count() == 0
    time.sleep(1.5)  # the sweep retries: still full, still not acknowledged
    assert host.acked_inbound == []
    _make_room(svc.history)
    wait_for(lambda: len(host.acked_inbound) == 2, 5, msg="deferred messages acknowledged")
    assert [m.id for m in svc.history.query()] == ["bob:1", "bob:2"]
    assert [o.data["ids"] for o in host.sent_to("receipts")] == [["bob:1"], ["bob:2"]]
    wait_for(lambda: got == [big, "small"], 5, msg="the app sees them in order")


def test_deferred_messages_are_let_go_when_the_link_drops_and_redelivery_is_stored(make: Make) -> None:
    host, svc = make()
    topic = f"{P}/me/inbox"
    _fill_up(svc.history)
    assert host.deliver(topic, env("bob", 1, "msg", "y" * 200_000)) is Disposition.DEFER
    host.set_connection(ConnectionStatus("offline", "keepalive timeout"))
    _make_room(svc.history)
    time.sleep(1.5)
    assert host.acked_inbound == [] and svc.history.count() == 0  # the broker sends it again
    host.set_connection(ConnectionStatus("online"))
    assert host.deliver(topic, env("bob", 1, "msg", "y" * 200_000)) is Disposition.ACK
    assert host.acked_inbound == [topic] and svc.history.count() == 1


def test_a_message_arriving_after_stop_is_not_acknowledged(make: Make) -> None:
    host, svc = make()
    svc.stop()
    assert host.deliver(f"{P}/me/inbox", env("bob", 1, "msg", "late")) is Disposition.DEFER
    assert host.acked_inbound == [] and host.sent == []


def test_a_raising_handler_is_acknowledged_by_the_router(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a route must not hold the receive window: the host's policy acks it (FakeHost plays it)."""
    host, svc = make()

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(svc.history, "apply_receipt", boom)
    host.deliver(f"{P}/me/receipts", env("bob", 1, "receipts", {"status": "read", "ids": ["me:1"]}))
    assert host.acked_inbound == [f"{P}/me/receipts"]


# ---------------------------------------------------------------- restart

def test_restart_marks_a_message_the_outbox_never_stored_failed(make: Make, tmp_path: Path) -> None:
    host, svc = make()
    kept = svc.send("bob", "committed")
    lost = svc.send("bob", "put but never committed")
    host.commit([host.sent[0][0]])
    svc.stop()
    # the outbox came back with only the first seq: the second was lost with the process
    host2, svc2 = make(state=tmp_path / "me", start=False)
    host2.put(Outgoing(topic="t", stream="s"))
    svc2.start()
    assert status(svc2, kept.id) == "queued"
    gone = svc2.history.get(lost.id)  # it keeps its id: the outbox skips its seq instead of reusing it
    assert gone is not None and gone.status == "failed" and "agent stopped" in gone.reason
    assert host2.skipped == [([2], "crash")]
    assert svc2.send("bob", "after the restart").id not in (kept.id, lost.id)
    host2.ack(1)  # the seq is tracked again after the restart
    assert status(svc2, kept.id) == "sent"


# ---------------------------------------------------------------- files between two services

def test_file_goes_as_chunks_is_assembled_verified_and_delivered(make: Make, tmp_path: Path) -> None:
    data = os.urandom(2500)
    src = tmp_path / "model.bin"
    src.write_bytes(data)
    ha, a = make("me")
    hb, b = make("bob")
    f = a.send_file("bob", src)
    assert f.kind == "file" and f.status == "pending" and f.data["chunks"] == 3
    chunks = ha.sent_to(f"{P}/bob/inbox")
    assert [c.data["i"] for c in chunks] == [0, 1, 2] and chunks[0].data["transfer"] is None
    assert all(c.data["transfer"] == f.id for c in chunks[1:]) and all(c.cls == "telemetry" for c in chunks)
    ha.commit()
    ha.ack(ha.sent[0][0])
    ha.ack(ha.sent[1][0])
    assert status(a, f.id) == "queued"  # one chunk still on its way
    ha.ack(ha.sent[2][0])
    assert status(a, f.id) == "sent"
    for seq, c in ha.sent:
        assert hb.deliver(f"{P}/bob/inbox", wire("me", seq, c)) is Disposition.ACK
    got = b.history.get(f.id)
    assert got is not None and got.kind == "file" and got.data["sha256"] == hashlib.sha256(data).hexdigest()
    assert Path(got.data["path"]).read_bytes() == data
    (rcpt,) = hb.sent_to(f"{P}/me/receipts")
    assert rcpt.data == {"status": "delivered", "ids": [f.id]}
    ha.deliver(f"{P}/me/receipts", wire("bob", 1, rcpt))
    assert status(a, f.id) == "delivered"


def test_missing_chunks_are_reported_and_the_sender_resends_just_those(make: Make, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(3000))
    ha, a = make("me")
    hb, b = make("bob")
    f = a.send_file("bob", src)
    sent = list(ha.sent)
    for seq, c in (sent[0], sent[2]):  # chunk 1 was lost on the way
        hb.deliver(f"{P}/bob/inbox", wire("me", seq, c))
    (missing,) = hb.sent_to(f"{P}/me/receipts")
    assert missing.data == {"status": "missing", "ids": [f.id], "missing": [1]}
    ha.deliver(f"{P}/me/receipts", wire("bob", 1, missing))
    seq, again = ha.sent[-1]
    assert len(ha.sent) == 4 and again.data["i"] == 1 and again.data["chunk"] == src.read_bytes()[1024:2048]
    hb.deliver(f"{P}/bob/inbox", wire("me", seq, again))
    assert b.history.get(f.id) is not None
    assert Path(b.history.get(f.id).data["path"]).read_bytes() == src.read_bytes()  # type: ignore[union-attr]


def test_corrupt_file_is_answered_failed_and_a_changed_source_cannot_be_resent(make: Make, tmp_path: Path) -> None:
    hb, b = make("bob")
    bad = hashlib.sha256(b"other").hexdigest()
    chunk = {"transfer": None, "i": 0, "n": 1, "sha256": bad, "name": "f.bin", "size": 3, "chunk": b"zzz"}
    assert hb.deliver(f"{P}/bob/inbox", env("me", 9, "file", chunk)) is Disposition.ACK
    (rcpt,) = hb.sent_to(f"{P}/me/receipts")
    assert rcpt.data["status"] == "failed" and "sha256 mismatch" in rcpt.data["reason"]
    assert b.history.count() == 0
    src = tmp_path / "g.bin"
    src.write_bytes(b"a" * 2000)
    ha, a = make("me")
    f = a.send_file("bob", src)
    src.write_bytes(b"b" * 2000)
    ha.deliver(f"{P}/me/receipts", env("bob", 1, "receipts", {"status": "missing", "ids": [f.id], "missing": [0]}))
    got = a.history.get(f.id)
    assert got is not None and got.status == "failed" and "changed" in got.reason and len(ha.sent) == 2


def test_bad_sends_are_refused_before_anything_is_put(make: Make, tmp_path: Path) -> None:
    host, svc = make()
    for call, match in [(lambda: svc.send("a/b", 1), "recipient must be"), (lambda: svc.send("me", 1), "myself"),
                        (lambda: svc.send("bob", object()), "cannot be encoded"),
                        (lambda: svc.send("bob", 1, ttl=float("nan")), "ttl must be"),
                        (lambda: svc.publish("receipts", 1), "reserved"),
                        (lambda: svc.send_file("bob", tmp_path / "nope"), "not a readable file"),
                        (lambda: svc.subscribe("a/#/b"), "bad topic filter")]:
        with pytest.raises(MessagingError, match=match):
            call()
    assert host.sent == [] and svc.history.count() == 0
    with pytest.raises(HistoryError, match="unknown history filter"):
        svc.history_query(colour="red")


def test_history_query_returns_json_safe_rows_newest_first(make: Make) -> None:
    host, svc = make()
    host.deliver(f"{P}/me/inbox", env("bob", 1, "msg", {"blob": b"\x00\x01", "text": "pump"}))
    m = svc.send("bob", "reply")
    rows = svc.history_query(peer="bob")
    assert [r["id"] for r in rows] == [m.id, "bob:1"]
    assert rows[1]["data"] == {"blob": {"base64": "AAE="}, "text": "pump"}
    assert [r["id"] for r in svc.history_query(search="pump", limit=5)] == ["bob:1"]


def test_listener_threads_stop_even_when_stop_is_called_from_a_callback(make: Make) -> None:
    host, svc = make()
    done = threading.Event()

    def on(m: Message) -> None:
        svc.stop()
        done.set()

    svc.add_listener("message", on)
    host.deliver(f"{P}/me/inbox", env("bob", 1, "msg", "bye"))
    assert done.wait(5) and svc.history.closed


def test_restart_after_a_crash_fails_what_the_outbox_reported_lost(make: Make, tmp_path: Path) -> None:
    """Write-behind: a message handed out but not acknowledged when the agent died is in the outbox's
    crash range (host.unclean()); it must end failed (it may have been delivered), not stay queued."""
    _host, svc = make()
    m = svc.send("bob", "held in memory when the agent died")
    svc.stop()
    host2, svc2 = make(state=tmp_path / "me", start=False)
    host2.unclean = lambda: (1, 10_000)  # type: ignore[method-assign]
    svc2.start()
    got = svc2.history.get(m.id)
    assert got is not None and got.status == "failed" and "may have been delivered" in got.reason


def test_send_waits_briefly_for_pubacks_only_when_online_and_far_ahead(make: Make, monkeypatch: Any) -> None:
    from edge_agent.messaging import snapshots

    monkeypatch.setattr(snapshots, "SEND_WINDOW", 50)
    host, svc = make()
    sent = [svc.send("bob", {"i": i}) for i in range(50)]  # none acknowledged: 50 waiting
    t = time.monotonic()
    svc.send("bob", {"i": 50})
    assert time.monotonic() - t >= snapshots.WINDOW_WAIT * 0.9  # waited for PUBACKs that did not come
    host.connection_status = ConnectionStatus("offline")
    t = time.monotonic()
    svc.send("bob", {"i": 51})
    assert time.monotonic() - t < snapshots.WINDOW_WAIT / 2  # offline: the outbox keeps them, no wait
    host.connection_status = ConnectionStatus("online")
    for m in sent:
        host.ack(m.seq)
    assert svc.settle()
    t = time.monotonic()
    svc.send("bob", {"i": 52})
    assert time.monotonic() - t < snapshots.WINDOW_WAIT / 2  # acknowledged: room again
