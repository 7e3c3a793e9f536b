"""The history database on its own: real SQLite with FTS5, every filter, summary, unread, retention."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.errors import EdgeAgentError
from edge_agent.messaging.history import History, HistoryError, can_move, fts_query, to_epoch

T0 = 1_700_000_000.0


def filled(tmp_path: Path) -> History:
    h = History(tmp_path / "history.db")
    rows = [
        # mid, sender, outgoing, kind, peer, group, stream, ts, data
        ("me:1", "me", True, "msg", "bob", None, None, T0 + 1, {"text": "hello bob, pump is fine"}),
        ("bob:1", "bob", False, "msg", "bob", None, None, T0 + 2, {"text": "thanks, the pump sounds odd"}),
        ("ann:5", "ann", False, "msg", None, "ops", None, T0 + 3, "ops: valve 3 stuck"),
        ("me:2", "me", True, "msg", None, "ops", None, T0 + 4, "on my way to valve 3"),
        ("me:3", "me", True, "stream", None, None, "inference/m1", T0 + 5, {"score": 0.9, "label": "anomaly"}),
        ("bob:2", "bob", False, "msg", "bob", None, None, T0 + 6, {"text": "pumping station offline"}),
        ("cid:7", "cid", False, "stream", None, None, "inference/m1", T0 + 7, {"score": 0.1}),
    ]
    for mid, sender, out, kind, peer, group, stream, ts, data in rows:
        h.add(mid=mid, sender=sender, seq=int(mid.split(":")[1]), outgoing=out, kind=kind, data=data, ts=ts,
              status="sent" if out else "received", peer=peer, group=group, stream=stream,
              unread=False if kind == "stream" else None, now=T0 + 10)
    return h


def ids(it: object) -> list[str]:
    return [m.id for m in it]  # type: ignore[attr-defined]


def test_each_filter(tmp_path: Path) -> None:
    h = filled(tmp_path)
    assert ids(h.query()) == ["me:1", "bob:1", "ann:5", "me:2", "me:3", "bob:2", "cid:7"]
    assert ids(h.query(peer="bob")) == ["me:1", "bob:1", "bob:2"]
    assert ids(h.query(group="ops")) == ["ann:5", "me:2"]
    assert ids(h.query(stream="inference/m1")) == ["me:3", "cid:7"]
    assert ids(h.query(sender="bob")) == ["bob:1", "bob:2"]
    assert ids(h.query(since=T0 + 3, until=T0 + 6)) == ["ann:5", "me:2", "me:3"]
    assert ids(h.query(limit=2, newest_first=True)) == ["cid:7", "bob:2"]
    assert ids(h.query(peer="bob", newest_first=True, limit=1)) == ["bob:2"]
    assert ids(h.query(unread=True)) == ["bob:1", "ann:5", "bob:2"]
    assert ids(h.query(kind="stream")) == ["me:3", "cid:7"]
    assert ids(h.query(kind="msg", sender="me")) == ["me:1", "me:2"]
    # pagination gives the same answer as one page
    assert ids(h.query(page=2)) == ids(h.query())
    assert ids(h.query(page=2, newest_first=True, limit=5)) == ids(h.query(newest_first=True, limit=5))


def test_full_text_search(tmp_path: Path) -> None:
    h = filled(tmp_path)
    assert ids(h.query(search="pump")) == ["me:1", "bob:1"]
    assert ids(h.query(search="pump*")) == ["me:1", "bob:1", "bob:2"]
    assert ids(h.query(search="valve 3")) == ["ann:5", "me:2"]
    assert ids(h.query(search="valve", group="ops", sender="ann")) == ["ann:5"]
    assert ids(h.query(search="anomaly")) == ["me:3"]
    assert ids(h.query(search="nothing-like-this")) == []
    # FTS syntax in user text is neutralised, not an error and not an operator
    assert ids(h.query(search='pump AND ( "')) == []
    assert fts_query("pump* AND x") == '"pump"* "AND" "x"'
    with pytest.raises(HistoryError, match="no words"):
        list(h.query(search="  ()  "))


def test_summary_and_unread_counts_and_mark_read(tmp_path: Path) -> None:
    h = filled(tmp_path)
    s = {c.conv: c for c in h.summary()}
    assert set(s) == {"peer:bob", "group:ops", "stream:inference/m1", "stream:cid/inference/m1"}
    assert s["peer:bob"].last.id == "bob:2" and s["peer:bob"].unread == 2
    assert s["group:ops"].last.id == "me:2" and s["group:ops"].unread == 1
    assert s["stream:inference/m1"].unread == 0
    assert next(c.conv for c in h.summary()) == "stream:cid/inference/m1"  # newest conversation first
    assert h.unread_count() == 3
    changed = h.mark_read(peer="bob")
    assert changed == {"bob": ["bob:1", "bob:2"]}
    assert h.mark_read(peer="bob") == {}  # idempotent: nothing new to report
    assert h.unread_count() == 1 and h.unread_count("peer:bob") == 0
    assert {c.conv: c.unread for c in h.summary()}["peer:bob"] == 0
    assert h.get("bob:1").status == "read"  # type: ignore[union-attr]


def test_duplicates_are_dropped(tmp_path: Path) -> None:
    h = filled(tmp_path)
    again = h.add(mid="bob:1", sender="bob", seq=1, outgoing=False, kind="msg", data="dup", ts=T0, status="received",
                  peer="bob")
    assert again is None and h.count() == 7 and h.get("bob:1").data == {"text": "thanks, the pump sounds odd"}  # type: ignore[union-attr]


def test_status_moves_only_forward(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db")
    h.add(mid="me:1", sender="me", seq=1, outgoing=True, kind="msg", data="x", ts=T0, status="pending", peer="bob",
          outseqs=[1])
    assert h.set_status("me:1", "queued") and h.set_status("me:1", "delivered")
    assert not h.set_status("me:1", "sent")  # late PUBACK after the receipt: ignored
    assert not h.set_status("me:1", "expired")  # delivered cannot expire
    assert h.set_status("me:1", "read")
    assert can_move("expired", "delivered") and not can_move("expired", "sent")
    assert can_move("pending", "failed") and not can_move("read", "failed")
    # receipts only from the recipient of a direct message
    assert h.apply_receipt("me:1", "mallory", "read") == (False, "read")
    assert h.apply_receipt("me:1", "bob", "delivered")[0]
    assert not h.apply_receipt("me:1", "bob", "delivered")[0]


def test_restart_keeps_everything(tmp_path: Path) -> None:
    h = filled(tmp_path)
    h.set_status("me:1", "delivered")
    h.close()
    h2 = History(tmp_path / "history.db")
    assert h2.count() == 7 and h2.get("me:1").status == "delivered"  # type: ignore[union-attr]
    assert ids(h2.query(search="pump")) == ["me:1", "bob:1"]


def test_retention_by_age_and_size(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db", max_age=100.0, max_bytes=1024 * 1024)
    now = time.time()
    for i in range(1, 201):
        h.add(mid=f"a:{i}", sender="a", seq=i, outgoing=False, kind="msg", data="x" * 100, ts=now, status="received",
              peer="a", now=now - 1000 if i <= 50 else now)
    assert h.trim(now) == 50
    assert h.count() == 150 and ids(h.query(limit=1)) == ["a:51"]
    # size: 300 x 8 KiB of text cannot fit in 1 MiB: the oldest go first, the newest stay
    for i in range(201, 501):
        h.add(mid=f"a:{i}", sender="a", seq=i, outgoing=False, kind="msg", data=f"w{i} " + "y" * 8000, ts=now + i,
              status="received", peer="a", now=now)
    assert h.trim(now) > 0
    assert h.size_bytes() <= 1024 * 1024
    assert h.get("a:500") is not None and h.get("a:51") is None
    s = h.summary()
    assert s[0].last.id == "a:500"
    assert (tmp_path / "h.db").stat().st_size < 3 * 1024 * 1024  # incremental vacuum gives pages back


def test_bad_queries_are_refused_clearly(tmp_path: Path) -> None:
    h = filled(tmp_path)
    with pytest.raises(HistoryError, match="since: expected epoch seconds"):
        list(h.query(since="yesterday-ish"))
    with pytest.raises(HistoryError, match=r"until .* is before since"):
        list(h.query(since=T0 + 5, until=T0))
    with pytest.raises(HistoryError, match="limit must be a non-negative integer"):
        list(h.query(limit=-1))
    with pytest.raises(HistoryError, match="kind must be one of msg, file, stream"):
        list(h.query(kind="sms"))
    with pytest.raises(HistoryError, match="peer must be a non-empty string"):
        list(h.query(peer=""))
    assert isinstance(HistoryError("x"), EdgeAgentError) and isinstance(HistoryError("x"), ValueError)
    assert abs(to_epoch("2h", "since") - (time.time() - 7200)) < 5  # type: ignore[operator]
    assert to_epoch("2023-11-14T22:13:20+00:00", "since") == T0


def test_readonly_open_of_missing_file_says_why(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="no message history here"):
        History(tmp_path / "nope.db", readonly=True)
