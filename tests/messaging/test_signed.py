"""Authentic senders (issue 17) against a real mosquitto: forged, replayed and re-addressed envelopes
published by a raw MQTT client are refused; the roster decides whose key is whose (untrusted rosters,
revocation, rotation)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from nacl.signing import SigningKey

from edge_agent import Agent, codec
from edge_agent.commands.signing import Signer
from edge_agent.devbroker import DevBroker
from edge_agent.messaging.authn import Seal, load_or_create_key
from edge_agent.roster import Roster, new_roster, roster_topic, sign_roster, write_roster
from tests.helpers import Collector, unique, wait_for
from tests.messaging.common import FAST, Recorder

P = "edge"


class RawClient:
    """Any broker user: a plain paho client publishing whatever it likes (QoS 1, waits for each PUBACK)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: paho.Client | None = None

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self.client is None:
            self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=unique("mallory-"),
                                      protocol=paho.MQTTv5)
            self.client.connect("127.0.0.1", self.port)
            self.client.loop_start()
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()


class Fleet:
    """Device keys made up front, a roster signed by the operator ``op``, agents built on them."""

    def __init__(self, broker: DevBroker, tmp_path: Path, names: tuple[str, ...], groups: tuple[str, ...] = ()):
        self.broker, self.tmp, self.groups = broker, tmp_path, groups
        self.op = Signer.generate()
        self.keys = {n: load_or_create_key(tmp_path / n / "device.key") for n in names}
        self.roster: Roster = new_roster(P)
        for n in names:
            self.roster = self.roster.with_device(n, bytes(self.keys[n].verify_key), groups)
        self.roster = dataclasses.replace(self.roster, version=1)
        self.roster_path = tmp_path / "roster.json"
        write_roster(self.roster_path, sign_roster(self.roster, self.op))
        self.pub = RawClient(broker.port)

    def agent(self, name: str) -> Agent:
        settings: dict[str, dict[str, Any]] = {
            "mqtt": dict(FAST), "agent": {"stop_timeout": 3.0},
            "commands": {"keys": [{"name": "op", "public_key": self.op.public_b64(), "allow": ["roster.publish"]}]},
            "messaging": {"roster": str(self.roster_path)}}
        return Agent(device_id=name, host="127.0.0.1", port=self.broker.port, state_dir=self.tmp / name,
                     groups=self.groups, settings=settings)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.pub.publish(topic, payload, retain)

    def publish_roster(self, r: Roster, signer: Signer | None = None) -> None:
        self.roster = r
        self.publish(roster_topic(P), sign_roster(r, signer or self.op), retain=True)


@pytest.fixture
def fleet_factory(broker: DevBroker, tmp_path: Path) -> Iterator[Any]:
    made: list[Fleet] = []

    def make(names: tuple[str, ...], groups: tuple[str, ...] = ()) -> Fleet:
        f = Fleet(broker, tmp_path, names, groups)
        made.append(f)
        return f

    yield make
    for f in made:
        f.pub.stop()


def forged(dev: str, seq: int, topic: str, stream: str, data: Any, how: str, **extra: Any) -> bytes:
    """An envelope claiming to come from ``dev``: unsigned, with junk for a signature, or signed by
    mallory's own (valid, but not ``dev``'s) key."""
    if how == "junk":
        extra["sig"] = b"\x01" * 64
    elif how == "mallory":
        extra["sig"] = Seal(SigningKey.generate(), topic)
    return codec.encode_envelope(dev, seq, time.time(), stream, data, **extra)


HOWS = ("unsigned", "junk", "mallory")


def online(*agents: Agent) -> None:
    assert all(x.wait_online(10) for x in agents)
    time.sleep(0.3)  # first connections: let the SUBACKs for the new sessions land


def test_forged_direct_message_is_never_shown_and_never_displaces_the_real_one(fleet_factory: Any) -> None:
    f = fleet_factory(("alice", "bob"))
    a, b = f.agent("alice"), f.agent("bob")
    ra = Recorder(a)
    with a:
        with b:
            online(a, b)
            m1 = a.send("bob", "genuine 1")
            a.wait_status(m1, "delivered", timeout=15)
        # bob is offline: the forgeries wait in his session *ahead of* alice's genuine message with that seq
        inbox = f"{P}/bob/inbox"
        nxt = a.service.host.last_seq() + 1
        for seq in range(nxt, nxt + 9):  # alice's next seqs, in every forged flavour
            for how in HOWS:
                f.publish(inbox, forged("alice", seq, inbox, "msg", "FORGED", how, to="bob", kind="msg"))
        m2 = a.send("bob", "genuine 2")
        assert nxt <= m2.seq < nxt + 9  # a seq the forgeries claimed
        a.wait_status(m2, "sent", timeout=15)
        b2 = f.agent("bob")
        rb = Recorder(b2)
        with b2:
            assert a.wait_status(m2, "delivered", timeout=15).status == "delivered"
            wait_for(lambda: len(rb.messages) == 2, 5)
            wait_for(lambda: sum(b2.service.refused().values()) == 27, 10, msg=f"refusals {b2.service.refused()}")
            time.sleep(0.5)  # bob's "failed" answers to the forgeries have reached alice by now
            assert rb.data() == ["genuine 1", "genuine 2"] and [m.sender for m in rb.messages] == ["alice", "alice"]
            assert b2.message(m2.id).data == "genuine 2"  # type: ignore[union-attr]
            assert not list(b2.history(search="FORGED"))
            assert b2.service.refused() == {"unsigned": 9, "bad signature": 18}
            # the answers to the forgeries do not touch alice's genuine message with the claimed seq
            assert ra.status_of(m2.id) == ["pending", "queued", "sent", "delivered"], ra.status_of(m2.id)


def test_forged_group_message_is_refused(fleet_factory: Any) -> None:
    f = fleet_factory(("alice", "bob", "carol"), groups=("ops",))
    a, b, c = f.agent("alice"), f.agent("bob"), f.agent("carol")
    rb, rc = Recorder(b), Recorder(c)
    with a, b, c:
        online(a, b, c)
        topic = f"{P}/group/ops/msg"
        nxt = a.service.host.last_seq() + 1
        for seq in range(nxt, nxt + 5):
            for how in HOWS:
                f.publish(topic, forged("alice", seq, topic, "msg", "FORGED", how, group="ops", kind="msg"))
        wait_for(lambda: sum(b.service.refused().values()) >= 15 and sum(c.service.refused().values()) >= 15, 10)
        g = a.send_group("ops", "genuine")
        wait_for(lambda: len((a.message(g.id) or g).receipts) == 2, 15, msg="both members' receipts")
        wait_for(lambda: rb.data() == ["genuine"] and rc.data() == ["genuine"], 5)
        assert rb.messages[0].sender == "alice" and rb.messages[0].group == "ops"


def test_forged_receipts_change_nothing(fleet_factory: Any) -> None:
    f = fleet_factory(("alice", "bob"))
    b = f.agent("bob")
    with b:  # bob's session (inbox subscription) exists from now on
        assert b.wait_online(10)
    a = f.agent("alice")
    ra = Recorder(a)
    with a:
        m = a.send("bob", "while bob is away")
        a.wait_status(m, "sent", timeout=15)
        rtopic = f"{P}/alice/receipts"
        for status in ("delivered", "read", "failed"):
            for how in HOWS:
                f.publish(rtopic, forged("bob", 99, rtopic, "receipts", {"status": status, "ids": [m.id],
                                                                         "reason": "forged"}, how))
        wait_for(lambda: sum(a.service.refused().values()) >= 9, 10, msg=f"refusals {a.service.refused()}")
        time.sleep(0.3)
        assert a.message(m.id).status == "sent" and a.message(m.id).receipts == {}  # type: ignore[union-attr]
        assert ra.status_of(m.id) == ["pending", "queued", "sent"]
        b2 = f.agent("bob")
        with b2:  # the real receipt still counts
            assert a.wait_status(m, "delivered", timeout=15).status == "delivered"


def test_forged_file_chunk_is_refused_and_the_real_file_arrives(fleet_factory: Any, tmp_path: Path) -> None:
    f = fleet_factory(("alice", "bob"))
    a, b = f.agent("alice"), f.agent("bob")
    rb = Recorder(b)
    with a, b:
        online(a, b)
        inbox = f"{P}/bob/inbox"
        evil = b"rm -rf /\n"
        nxt = a.service.host.last_seq() + 1
        for seq in range(nxt, nxt + 3):
            for how in HOWS:
                f.publish(inbox, forged("alice", seq, inbox, "file",
                                        {"transfer": None, "i": 0, "n": 1, "chunk": evil, "name": "model.bin",
                                         "size": len(evil), "sha256": hashlib.sha256(evil).hexdigest()},
                                        how, to="bob", kind="file"))
        wait_for(lambda: sum(b.service.refused().values()) >= 9, 10)
        src = tmp_path / "model.bin"
        src.write_bytes(b"real model " * 20000)
        m = a.send_file("bob", src)
        assert m.seq < nxt + 3
        a.wait_status(m, "delivered", timeout=20)
        wait_for(lambda: len(rb.messages) == 1, 5)
        got = rb.messages[0]
        assert got.kind == "file" and got.sender == "alice" and got.id == m.id
        assert Path(got.data["path"]).read_bytes() == src.read_bytes()


def test_replays_are_refused(fleet_factory: Any) -> None:
    f = fleet_factory(("alice", "bob", "carol"))
    a, b, c = f.agent("alice"), f.agent("bob"), f.agent("carol")
    rb, rc = Recorder(b), Recorder(c)
    with a, b, c, Collector(f.broker.port, f"{P}/bob/inbox") as spy:
        online(a, b, c)
        m = a.send("bob", "pay 10")
        a.wait_status(m, "delivered", timeout=15)
        wait_for(lambda: spy.count() >= 1, 5)
        raw = spy.messages[0].payload
        f.publish(f"{P}/bob/inbox", raw)  # the same bytes: a duplicate of a message already stored
        env = codec.decode(raw, max_bin=2 << 20)
        for seq in (m.seq + 1, m.seq + 1000):  # a new seq would make a new message id: must not verify
            f.publish(f"{P}/bob/inbox", codec.encode({**env, "seq": seq}))
        f.publish(f"{P}/bob/inbox", codec.encode({**env, "ts": time.time()}))
        f.publish(f"{P}/carol/inbox", raw)  # re-addressed to another device
        wait_for(lambda: b.service.refused().get("bad signature", 0) == 3, 10, msg=f"{b.service.refused()}")
        wait_for(lambda: c.service.refused().get("bad signature", 0) == 1, 10, msg=f"{c.service.refused()}")
        time.sleep(0.5)
        assert rb.data() == ["pay 10"] and b.service.history.count() == 1
        assert rc.data() == []
        assert a.message(m.id).status == "delivered"  # type: ignore[union-attr]  # carol's "failed" answer: no


def test_roster_from_an_untrusted_key_is_refused(fleet_factory: Any) -> None:
    f = fleet_factory(("alice", "bob"))
    b = f.agent("bob")
    rb = Recorder(b)
    with b:
        assert b.wait_online(10)
        assert b.service.roster_version == 1
        mallory, mkey = Signer.generate(), SigningKey.generate()
        f.publish_roster(f.roster.with_device("mallory", bytes(mkey.verify_key)), signer=mallory)
        unsigned = f.roster.with_device("mallory", bytes(mkey.verify_key)).as_document()
        f.publish(roster_topic(P), json.dumps(unsigned).encode())  # a newer version, but unsigned
        f.publish(roster_topic(P), codec.encode(unsigned))  # not even JSON
        inbox = f"{P}/bob/inbox"
        env = codec.encode_envelope("mallory", 1, time.time(), "msg", "hi from mallory", to="bob", kind="msg",
                                    sig=Seal(mkey, inbox))
        f.publish(inbox, env)
        wait_for(lambda: b.service.refused().get("unknown sender", 0) == 1, 10, msg=f"{b.service.refused()}")
        assert b.service.roster_version == 1 and rb.data() == []


def test_rotation_and_revocation(fleet_factory: Any) -> None:
    f = fleet_factory(("alice", "bob"))
    a, b = f.agent("alice"), f.agent("bob")
    rb = Recorder(b)
    inbox = f"{P}/bob/inbox"
    with b:
        with a:
            online(a, b)
            a.wait_status(a.send("bob", "before"), "delivered", timeout=15)
        old_key = f.keys["alice"]
        key_file = f.tmp / "alice" / "device.key"
        key_file.unlink()
        new_key = load_or_create_key(key_file)  # alice's new key, not yet in bob's roster
        a2 = f.agent("alice")
        with a2:
            m = a2.send("bob", "new key, old roster")
            failed = a2.wait_status(m, "failed", timeout=15)  # bob answers: refused, and why
            assert failed.reason == "bob: refused by bob: bad signature", failed.reason
            # rotation: version 2 lists the new key
            f.publish_roster(f.roster.with_device("alice", bytes(new_key.verify_key)))
            wait_for(lambda: b.service.roster_version == 2, 10, msg="bob takes roster 2")
            m2 = a2.send("bob", "new key, new roster")
            assert a2.wait_status(m2, "delivered", timeout=15).status == "delivered"
            # the old key no longer speaks for alice
            f.publish(inbox, codec.encode_envelope("alice", m2.seq + 1, time.time(), "msg", "old key", to="bob",
                                                   kind="msg", sig=Seal(old_key, inbox)))
            wait_for(lambda: b.service.refused().get("bad signature", 0) == 2, 10, msg=f"{b.service.refused()}")
            # revocation: alice is not in version 3; she gets no answer (not a roster member any more)
            f.publish_roster(f.roster.without_device("alice"))
            wait_for(lambda: b.service.roster_version == 3, 10, msg="bob takes roster 3")
            m3 = a2.send("bob", "after revocation")
            a2.wait_status(m3, "sent", timeout=15)
            wait_for(lambda: b.service.refused().get("unknown sender", 0) == 1, 10, msg=f"{b.service.refused()}")
            # an older roster (version 2, properly signed, alice in it) is refused now
            v2 = Roster(P, 2, time.time(), {**f.roster.devices, "alice": f.roster.devices["bob"]})
            f.publish(roster_topic(P), sign_roster(v2, f.op), retain=True)
            time.sleep(0.5)
            assert b.service.roster_version == 3 and a2.message(m3.id).status == "sent"  # type: ignore[union-attr]
        assert rb.data() == ["before", "new key, new roster"]
        assert [x.sender for x in rb.messages] == ["alice", "alice"]
