"""Unit tests of the message signatures (canonical bytes, seal, verify, device key) and the roster
(sign, verify, versions, the RosterBook), with real Ed25519 keys and real msgpack."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from nacl.signing import SigningKey

from edge_agent import codec
from edge_agent.commands.signing import Signer
from edge_agent.config import OperatorKey
from edge_agent.messaging.authn import (
    Authenticator,
    DeviceKeyError,
    Seal,
    canonical,
    load_or_create_key,
    verify,
)
from edge_agent.roster import (
    RosterBook,
    RosterError,
    add_device,
    new_roster,
    read_roster,
    remove_device,
    sign_roster,
    verify_roster,
)

TOPIC = "edge/bob/inbox"


def envelope(key: SigningKey, topic: str = TOPIC, **over: Any) -> dict[str, Any]:
    fields = {"dev": "alice", "seq": 7, "ts": 1764316800.25, "stream": "msg", "data": {"b": 1, "a": [1.5, b"x"]},
              "to": "bob", "kind": "msg", **over}
    raw = codec.encode_envelope(fields.pop("dev"), fields.pop("seq"), fields.pop("ts"), fields.pop("stream"),
                                fields.pop("data"), sig=Seal(key, topic), **fields)
    return codec.decode(raw)


def test_canonical_bytes_are_the_documented_msgpack() -> None:
    env = {"v": 1, "dev": "alice", "seq": 7, "ts": 2.5, "stream": "msg", "data": {"z": 1, "a": b"\x00"},
           "sig": b"s" * 64}
    got = canonical(TOPIC, env)
    want = msgpack.packb(["edge-agent-msg/1", TOPIC, {"data": {"a": b"\x00", "z": 1}, "dev": "alice", "seq": 7,
                                                      "stream": "msg", "ts": 2.5, "v": 1}], use_bin_type=True)
    assert got == want
    # key order of the sender's map does not matter, the signature field is not covered, the topic is
    assert canonical(TOPIC, dict(reversed(list(env.items())))) == got
    assert canonical(TOPIC, {k: v for k, v in env.items() if k != "sig"}) == got
    assert canonical("edge/carol/inbox", env) != got
    assert canonical(TOPIC, {**env, "ts": 2}) != got  # 2 (int) and 2.5 (float64) are different values


def test_seal_and_verify_roundtrip_through_the_codec() -> None:
    key = SigningKey.generate()
    pub = bytes(key.verify_key)
    env = envelope(key)
    assert isinstance(env["sig"], bytes) and len(env["sig"]) == 64
    assert verify(TOPIC, env, pub)
    assert not verify("edge/carol/inbox", env, pub)  # re-addressed
    for field, value in (("seq", 8), ("dev", "mallory"), ("ts", env["ts"] + 1), ("to", "carol"),
                         ("data", {"b": 2, "a": [1.5, b"x"]}), ("stream", "file")):
        assert not verify(TOPIC, {**env, field: value}, pub), field
    assert not verify(TOPIC, env, bytes(SigningKey.generate().verify_key))  # someone else's key
    assert not verify(TOPIC, {k: v for k, v in env.items() if k != "sig"}, pub)
    assert not verify(TOPIC, {**env, "sig": env["sig"][:63]}, pub)
    assert not verify(TOPIC, {**env, "sig": "text"}, pub)


def test_device_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "device.key"
    k1 = load_or_create_key(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert bytes(load_or_create_key(path)) == bytes(k1)  # read back, not replaced
    os.chmod(path, 0o644)
    with pytest.raises(DeviceKeyError, match="readable by group/others"):
        load_or_create_key(path)
    path.write_text("not base64!\n")
    os.chmod(path, 0o600)
    with pytest.raises(DeviceKeyError, match="not a base64 Ed25519 private key"):
        load_or_create_key(path)


def operator(name: str = "op", allow: tuple[str, ...] = ("roster.publish",)) -> tuple[Signer, OperatorKey]:
    s = Signer.generate()
    return s, OperatorKey(name=name, public_key=s.public_b64(), allow=allow)


def test_roster_sign_verify_and_refusals() -> None:
    op, trusted = operator()
    alice = bytes(SigningKey.generate().verify_key)
    r = new_roster("edge").with_device("alice", alice, ["ops"])
    doc = sign_roster(r, op)
    got = verify_roster(doc, [trusted], "edge")
    assert got.version == 1 and got.key("alice") == alice and got.devices["alice"].groups == ("ops",)
    with pytest.raises(RosterError, match="not a trusted operator key"):
        verify_roster(sign_roster(r, Signer.generate()), [trusted])
    with pytest.raises(RosterError, match="for fleet 'edge', this device is in 'other'"):
        verify_roster(doc, [trusted], "other")
    _, narrow = operator(allow=("config.*",))
    with pytest.raises(RosterError, match=r"not allowed 'roster\.publish'"):
        verify_roster(sign_roster(r, Signer(op.key)), [dataclasses.replace(narrow, public_key=op.public_b64())])
    tampered = json.loads(doc)
    tampered["devices"]["alice"]["groups"] = ["admins"]
    with pytest.raises(RosterError, match="signature does not verify"):
        verify_roster(json.dumps(tampered).encode(), [trusted])
    unsigned = json.loads(doc)
    del unsigned["sig"]
    with pytest.raises(RosterError, match="is not signed"):
        verify_roster(json.dumps(unsigned).encode(), [trusted])
    with pytest.raises(RosterError, match="not JSON"):
        verify_roster(b"\x81\xa1v\x01", [trusted])
    with pytest.raises(RosterError, match="'all'"):
        verify_roster(json.dumps({**json.loads(doc), "devices": {"all": {"key": "x"}}}).encode(), [trusted])


def test_roster_file_add_remove_and_the_book_keeps_the_newest(tmp_path: Path) -> None:
    op, trusted = operator()
    path = tmp_path / "roster.json"
    k1, k2 = SigningKey.generate(), SigningKey.generate()
    v1 = add_device(path, "alice", bytes(k1.verify_key), op, groups=["ops"])
    v2 = add_device(path, "bob", Signer(k2).public_b64(), op)  # base64 text, as the CLI takes it
    assert (v1.version, v2.version) == (1, 2) and read_roster(path).version == 2
    doc2 = path.read_bytes()
    v3 = remove_device(path, "alice", op)
    assert v3.version == 3 and set(v3.devices) == {"bob"}
    with pytest.raises(RosterError, match="not in the roster"):
        remove_device(path, "alice", op)

    book = RosterBook([trusted], "edge", tmp_path / "state-roster.json")
    book.open(path)
    assert book.current is not None and book.current.version == 3 and book.key("alice") is None
    assert not book.offer(path.read_bytes())  # the same version again: nothing changes
    with pytest.raises(RosterError, match="version 2 refused: version 3 is held"):
        book.offer(doc2)
    # a restart with an older pinned file keeps the stored newer one
    book2 = RosterBook([trusted], "edge", tmp_path / "state-roster.json")
    older = tmp_path / "old.json"
    older.write_bytes(doc2)
    book2.open(older)
    assert book2.current is not None and book2.current.version == 3


def test_authenticator_modes() -> None:
    key = SigningKey.generate()
    env = envelope(key, ts=time.time())
    assert Authenticator(None, None, mode="off", max_age=60).check(TOPIC, {**env, "sig": b""}) is None
    open_ = Authenticator(key, None, mode="auto", max_age=60)  # no roster held: not enforcing yet
    assert open_.check(TOPIC, {**env, "sig": b""}) is None and "sig" in open_.extra(TOPIC)
    strict = Authenticator(key, None, mode="required", max_age=60)
    assert strict.check(TOPIC, env) == "unknown sender: not in the fleet roster"
    assert strict.counts() == {"unknown sender": 1}


def test_config_checks_of_the_signature_settings(tmp_path: Path) -> None:
    from edge_agent import config as config_mod
    from edge_agent.errors import ConfigError

    def problems(messaging: dict[str, Any], commands: dict[str, Any] | None = None) -> str:
        with pytest.raises(ConfigError) as e:
            config_mod.build({"device": {"id": "me"}, "messaging": messaging, "commands": commands or {}})
        return "; ".join(e.value.errors)

    assert problems({"signatures": "required"}).startswith("messaging.signatures: 'required' needs a fleet roster")
    assert "file not found" in problems({"roster": str(tmp_path / "nope.json")})
    roster = tmp_path / "r.json"
    roster.write_text("{}")
    assert "add the operator's [[commands.keys]]" in problems({"roster": str(roster)})
    assert "messaging.signatures" in problems({"signatures": "maybe"})
    _, op = operator()
    keys = {"keys": [{"name": op.name, "public_key": op.public_key, "allow": ["*"]}]}
    cfg = config_mod.build({"device": {"id": "me"}, "messaging": {"roster": str(roster)}, "commands": keys})
    assert cfg.messaging.signatures == "auto" and cfg.messaging.roster == str(roster)


def test_the_sender_remembers_what_it_signed() -> None:
    key = SigningKey.generate()
    auth = Authenticator(key, None, mode="auto", max_age=60)
    seal = auth.extra(TOPIC)["sig"]
    raw = codec.encode_envelope("alice", 7, time.time(), "msg", "hi", sig=seal)
    chunk = codec.encode_envelope("alice", 9, time.time(), "file", {"transfer": "alice:8", "chunk": b"x"},
                                  sig=auth.extra(TOPIC)["sig"])
    assert auth.signed(codec.decode(raw)["sig"]) == "alice:7"
    assert auth.signed(codec.decode(chunk)["sig"]) == "alice:8"  # a chunk belongs to its transfer
    assert auth.signed(b"\x01" * 64) is None and auth.signed(None) is None


def test_enforcing_with_a_roster_refuses_unknown_unsigned_forged_and_too_old(tmp_path: Path) -> None:
    op, trusted = operator()
    alice = SigningKey.generate()
    book = RosterBook([trusted], "edge", tmp_path / "roster.json")
    auth = Authenticator(alice, book, mode="auto", max_age=3600)
    env = envelope(alice, ts=time.time())
    assert auth.check(TOPIC, {**env, "sig": b""}) is None  # auto, no roster yet: open
    assert book.offer(sign_roster(new_roster("edge").with_device("alice", bytes(alice.verify_key)), op))
    assert auth.check(TOPIC, env) is None
    assert auth.check(TOPIC, {**env, "dev": "carol"}) == "unknown sender: not in the fleet roster"
    assert auth.check(TOPIC, {k: v for k, v in env.items() if k != "sig"}) == "unsigned"
    assert auth.check(TOPIC, {**env, "seq": 8}) == "bad signature"
    old = envelope(alice, ts=time.time() - 3601)
    assert auth.check(TOPIC, old).startswith("too old")  # type: ignore[union-attr]
    assert auth.counts() == {"unknown sender": 1, "unsigned": 1, "bad signature": 1, "too old": 1}


def test_a_group_membership_is_signed_and_checked_against_the_roster(tmp_path: Path) -> None:
    """messaging/groups.py signs ``{"dev", "joined"}`` for its retained members topic (base64 ``sig``)."""
    op, trusted = operator()
    alice, mallory = SigningKey.generate(), SigningKey.generate()
    book = RosterBook([trusted], "edge", tmp_path / "roster.json")
    auth = Authenticator(alice, book, mode="auto", max_age=60)
    topic = "edge/group/ops/members/alice"
    doc = {"dev": "alice", "joined": 1764316800.25}
    signed = {**doc, "sig": auth.sign_doc(topic, doc)}
    forged = {**doc, "sig": Authenticator(mallory, None, mode="auto", max_age=60).sign_doc(topic, doc)}
    assert auth.check_doc(topic, forged) is None  # no roster held yet: open
    assert book.offer(sign_roster(new_roster("edge").with_device("alice", bytes(alice.verify_key)), op))
    assert auth.check_doc(topic, signed) is None  # an old "joined" is fine: no age limit
    assert auth.check_doc(topic, forged) == "bad signature"
    assert auth.check_doc("edge/group/lab/members/alice", signed) == "bad signature"  # not another group's
    assert auth.check_doc(topic, {**signed, "joined": 1.0}) == "bad signature"
    assert auth.check_doc(topic, doc) == "bad signature"  # unsigned
    assert auth.check_doc(topic, {**signed, "sig": "not base64!"}) == "bad signature"
    assert auth.check_doc(topic, {**signed, "dev": "carol"}) == "unknown sender: not in the fleet roster"
    assert Authenticator(None, None, mode="off", max_age=60).sign_doc(topic, doc) is None
