"""Issue 14, item 6: nothing a receiver cannot take is accepted by ``send()``; every refusal at the
receiver goes back to the sender as a ``failed`` receipt (before: a dict with integer keys was accepted
and dropped by the receiver, the sender saying ``sent`` forever; a file named ``meta.json`` passed the
sender's check and was refused by the receiver without a word)."""

from __future__ import annotations

from pathlib import Path

import pytest

import edge_agent.messaging.transfers as transfers_mod
from edge_agent.devbroker import DevBroker
from edge_agent.messaging.envelope import MessagingError
from tests.messaging.common import Recorder, make_agent


@pytest.fixture
def pair(broker: DevBroker, tmp_path: Path):  # type: ignore[no-untyped-def]
    a = make_agent(broker, tmp_path, "sender-6").start()
    b = make_agent(broker, tmp_path, "recv-6")
    rec = Recorder(b)
    b.start()
    assert a.wait_online(10) and b.wait_online(10)
    try:
        yield a, b, rec
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("data", [{1: "one"}, {"nested": {2: "two"}}, [{b"k": 1}, {3.5: 1}],
                                  {str(i): i for i in range(1001)}, list(range(10001))])
def test_send_refuses_what_the_receiver_drops(pair, data: object) -> None:  # type: ignore[no-untyped-def]
    a, _b, _rec = pair
    before = len(list(a.history(peer="recv-6")))
    with pytest.raises(MessagingError, match="refused by the recipient"):
        a.send("recv-6", data)
    assert len(list(a.history(peer="recv-6"))) == before  # nothing half-sent


def test_what_send_accepts_arrives(pair) -> None:  # type: ignore[no-untyped-def]
    a, _b, rec = pair
    m = a.send("recv-6", {"keys": {"1": "string keys"}, "bytes": b"\x00", "list": list(range(10000))})
    assert a.wait_status(m, "delivered", timeout=15).status == "delivered"
    assert rec.data()[-1]["keys"] == {"1": "string keys"}


@pytest.mark.parametrize("name", ["meta.json", "chunks"])
def test_send_file_refuses_a_name_the_receiver_reserves(pair, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    a, _b, _rec = pair
    f = tmp_path / "payload.bin"
    f.write_bytes(b"x" * 1000)
    with pytest.raises(MessagingError, match="reserved"):
        a.send_file("recv-6", f, name=name)


def test_a_refusal_at_the_receiver_comes_back_as_failed(pair, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender without the check (an older agent): the receiver answers with a ``failed`` receipt."""
    a, _b, _rec = pair
    monkeypatch.setattr(transfers_mod, "file_name_problem", lambda _name: None, raising=False)
    f = tmp_path / "payload.bin"
    f.write_bytes(b"y" * 3000)
    m = a.send_file("recv-6", f, name="meta.json")
    got = a.wait_status(m, "failed", timeout=15)
    assert got.status == "failed" and "recv-6" in got.reason and "reserved" in got.reason, got
