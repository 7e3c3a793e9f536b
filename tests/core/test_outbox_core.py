"""The outbox on a real SQLite file: seqs, durability, claims, ordering, replay after restart."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from edge_agent import codec
from edge_agent.errors import OutboxClosed
from edge_agent.message import Outgoing
from edge_agent.outbox import Outbox, integrity_check, read_stats


def put_n(ob: Outbox, n: int, cls: str = "telemetry") -> list[int]:
    return [ob.put(Outgoing(topic="edge/d/telemetry/s", stream="telemetry/s", data={"value": i}, cls=cls))
            for i in range(n)]


def test_seq_strictly_increasing_and_in_envelope(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1").open()
    seqs = put_n(ob, 100)
    assert seqs == list(range(1, 101))
    assert ob.flush()
    rows = ob.begin(1000)
    assert [r.seq for r in rows] == seqs
    env = codec.decode_envelope(rows[0].payload)
    assert env["v"] == 1 and env["dev"] == "d1" and env["seq"] == 1 and env["stream"] == "telemetry/s"
    assert env["data"] == {"value": 0} and isinstance(env["ts"], float)
    ob.close()


def test_seq_never_reused_after_restart_even_when_empty(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1").open()
    put_n(ob, 10)
    ob.flush()
    ob.accept(r.seq for r in ob.begin(100))
    ob.flush()
    assert ob.pending == 0
    ob.close()
    ob2 = Outbox(tmp_path / "o.db", "d1").open()
    assert ob2.put(Outgoing(topic="t", stream="s", data=1)) == 11
    ob2.close()
    assert read_stats(tmp_path / "o.db").last_seq == 11


def test_claimed_rows_not_handed_out_twice_and_release(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1").open()
    put_n(ob, 10)
    ob.flush()
    a = ob.begin(4)
    b = ob.begin(100)
    assert [r.seq for r in a] == [1, 2, 3, 4]
    assert [r.seq for r in b] == [5, 6, 7, 8, 9, 10]
    assert ob.begin(10) == []
    ob.release([2, 3])
    assert [r.seq for r in ob.begin(10)] == [2, 3]
    ob.accept([1])
    ob.flush()
    assert ob.pending == 9
    ob.close()


def test_unacked_rows_replayed_in_order_after_restart(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1").open()
    put_n(ob, 20)
    ob.flush()
    rows = ob.begin(20)
    ob.accept(r.seq for r in rows[:5])  # 1..5 acked, 6..20 in flight when we "crash"
    ob.flush()
    ob.close()
    ob2 = Outbox(tmp_path / "o.db", "d1").open()
    assert [r.seq for r in ob2.begin(100)] == list(range(6, 21))
    ob2.close()
    assert integrity_check(tmp_path / "o.db") == "ok"


def test_higher_class_first_then_seq(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1").open()
    put_n(ob, 3)
    alarm = ob.put(Outgoing(topic="t", stream="events/x", data={}, cls="alarm"))
    event = ob.put(Outgoing(topic="t", stream="events/y", data={}, cls="event"))
    ob.flush()
    assert [r.seq for r in ob.begin(10)] == [alarm, event, 1, 2, 3]
    ob.close()


def test_group_commit_many_rows_one_transaction(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1", commit_interval=0.2).open()
    put_n(ob, 500)
    ob.flush()
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 500
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    st = ob.stats()
    assert st.pending == 500 and st.last_seq == 500 and st.db_bytes > 0 and st.counters["enqueued"] == 500
    ob.close()


def test_raw_payload_and_props_roundtrip(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1").open()
    ob.put(Outgoing(topic="r", stream="cmd-reply/ping", raw=b'{"status":"ok"}',
                    props={"correlation_data": b"\x01\x02", "content_type": "application/json"}))
    ob.flush()
    (row,) = ob.begin(1)
    assert row.payload == b'{"status":"ok"}'
    assert row.props == {"correlation_data": b"\x01\x02", "content_type": "application/json"}
    ob.close()


def test_pipeline_taps_see_every_reading_of_a_batch(tmp_path: Path) -> None:
    from edge_agent.pipeline import Pipeline
    from edge_agent.sensors.base import Reading

    ob = Outbox(tmp_path / "o.db", "d1").open()
    p = Pipeline(ob, "edge", "d1", {"s": 3})
    seen: list[tuple[float, int]] = []
    p.taps.append(lambda r, seq: seen.append((r.data["value"], seq)))
    seqs = [p.submit(Reading("s", 100.0 + i, {"value": float(i)})) for i in range(7)]
    assert seqs == [None, None, 1, None, None, 2, None]
    assert seen == [(0.0, 1), (1.0, 1), (2.0, 1), (3.0, 2), (4.0, 2), (5.0, 2)]
    ob.flush()
    env = codec.decode_envelope(ob.begin(1)[0].payload)
    assert env["data"] == {"ts": [100.0, 101.0, 102.0], "value": [0.0, 1.0, 2.0]} and env["ts"] == 100.0
    p.flush()
    ob.close()


def test_constructor_does_no_io_open_does(tmp_path: Path) -> None:
    """``Outbox(...)`` only stores its parameters: no file, no thread until ``open()``, which returns it."""
    path = tmp_path / "state" / "o.db"
    threads = threading.active_count()
    ob = Outbox(path, "d1")
    assert not path.parent.exists() and threading.active_count() == threads
    with pytest.raises(OutboxClosed, match="not open"):
        ob.put(Outgoing(topic="edge/d1/telemetry/s", stream="telemetry/s", data={}))
    ob.close()  # closing an outbox never opened is harmless
    assert ob.open() is ob and path.exists()
    assert ob.put(Outgoing(topic="edge/d1/telemetry/s", stream="telemetry/s", data={})) == 1
    ob.close()
    with pytest.raises(OutboxClosed, match="closed"):
        ob.put(Outgoing(topic="edge/d1/telemetry/s", stream="telemetry/s", data={}))


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "outbox-writer"]


def test_close_that_times_out_never_closes_the_database_under_a_running_commit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A stop on a slow or full card: close(timeout) gives up waiting, but the writer is inside a
    commit. Closing its connection from here would pull SQLite out from under that commit (a crash in
    the sqlite3 module, or the rows lost); the writer closes it itself when the commit is done."""
    before = set(_writer_threads())
    ob = Outbox(tmp_path / "o.db", "d1", mode="durable").open()
    put_n(ob, 10)
    assert ob.flush()
    (writer,) = set(_writer_threads()) - before
    blocker = sqlite3.connect(tmp_path / "o.db", isolation_level=None, timeout=10)
    blocker.execute("BEGIN IMMEDIATE")  # the writer's next commit waits for this lock (busy timeout)
    try:
        put_n(ob, 50)
        caplog.set_level("WARNING", logger="edge_agent.outbox")
        ob.close(0.3)
        assert writer.is_alive(), "the commit should still be waiting for the lock"
        assert "did not finish within 0.3 s" in caplog.text
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    writer.join(15)
    assert not writer.is_alive()
    ob2 = Outbox(tmp_path / "o.db", "d1").open()
    try:
        # the commit that was running at close() went through: all 60 are stored, none skipped
        assert ob2.pending == 60 and ob2.last_seq == 60
        assert [r.seq for r in ob2.begin(100)] == list(range(1, 61))
    finally:
        ob2.close()
    assert integrity_check(tmp_path / "o.db") == "ok"
