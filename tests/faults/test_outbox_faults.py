"""The outbox on real SQLite files under capacity, TTL, disk and corruption faults (no broker needed).

Every test ends with the accounting promise: every seq 1..last_seq is still stored, was acked, or is
covered by an events/dropped range stored by the outbox itself.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from edge_agent import codec
from edge_agent.errors import OutboxError
from edge_agent.message import Outgoing
from edge_agent.outbox import Outbox, integrity_check, precheck, ranges, read_stats
from edge_agent.outbox.continuity import prune_quarantine
from tests.faultkit import disk_free, fill_disk, loop_ext4, loop_mount_unavailable

TOPIC = "edge/d1/telemetry/s"


def put_n(ob: Outbox, n: int, cls: str = "telemetry", size: int = 0, ttl: float | None = None) -> list[int]:
    pad = "x" * size
    return [ob.put(Outgoing(topic=TOPIC, stream="telemetry/s", data={"value": i, "pad": pad}, cls=cls, ttl=ttl))
            for i in range(n)]


def drain_all(ob: Outbox) -> list[dict]:
    """Everything the outbox still holds, as decoded envelopes (claims and acks all of it)."""
    out = []
    ob.flush()
    while True:
        rows = ob.begin(1000)
        if not rows:
            break
        out += [codec.decode_envelope(r.payload) for r in rows]
        ob.accept(r.seq for r in rows)
    ob.flush()
    return out


def dropped(envs: list[dict]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for e in envs:
        if e["stream"] == "events/dropped":
            assert e["data"]["count"] == sum(b - a + 1 for a, b in e["data"]["ranges"])
            s = out.setdefault(e["data"]["reason"], set())
            for a, b in e["data"]["ranges"]:
                s.update(range(a, b + 1))
    return out


def assert_accounted(envs: list[dict], last_seq: int, acked: set[int] = frozenset()) -> dict[str, set[int]]:  # type: ignore[assignment]
    got = {e["seq"] for e in envs} | set(acked)
    d = dropped(envs)
    covered = set().union(*d.values()) if d else set()
    missing = [s for s in range(1, last_seq + 1) if s not in got and s not in covered]
    assert not missing, f"unaccounted seqs: {missing[:20]} (of {len(missing)})"
    return d


def test_ranges_helper() -> None:
    assert ranges([5, 1, 2, 3, 9, 10]) == [[1, 3], [5, 5], [9, 10]]
    assert ranges([]) == []


def test_capacity_evicts_lowest_class_oldest_first_and_reports(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1", max_bytes=1024 * 1024, min_free=0, maintenance_interval=0.2).open()
    dropped_calls: list[tuple[list[int], str]] = []
    ob.on_dropped(lambda seqs, reason: dropped_calls.append((seqs, reason)))
    alarms = []
    for _ in range(10):
        alarms += put_n(ob, 1, cls="alarm", size=200)
        put_n(ob, 300, cls="telemetry", size=300)
        put_n(ob, 20, cls="event", size=300)
        ob.flush()
    time.sleep(1.0)
    ob.flush()
    st = ob.stats()
    assert st.used_bytes <= 1024 * 1024, st
    assert st.counters["evicted"] > 0
    last = ob.last_seq
    envs = drain_all(ob)
    d = assert_accounted(envs, last)
    assert set(d) == {"capacity"}
    cap = d["capacity"]
    assert cap == {s for seqs, r in dropped_calls for s in seqs}, "on_dropped saw exactly the evicted seqs"
    got = {e["seq"]: e for e in envs}
    assert all(a in got for a in alarms), "alarms are the last thing ever dropped"
    tele_kept = [s for s, e in got.items() if e["stream"] == "telemetry/s" and "cls" not in e]
    assert tele_kept and max(cap) < min(tele_kept), "telemetry goes oldest first"
    # events (class 2) are only evicted once no telemetry is left before them: here telemetry sufficed
    assert all(got[s]["data"]["reason"] == "capacity" for s in got if got[s]["stream"] == "events/dropped")
    assert len(cap) == st.counters["evicted"]
    ob.close()
    assert integrity_check(tmp_path / "o.db") == "ok"


def test_ttl_expiry_default_and_per_message(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1", max_age=1.0, maintenance_interval=0.2).open()
    old = put_n(ob, 50)
    short = put_n(ob, 5, ttl=0.5, cls="event")
    ob.flush()
    time.sleep(1.6)
    fresh = put_n(ob, 10)
    keep = put_n(ob, 3, ttl=3600, cls="alarm")
    ob.flush()
    time.sleep(0.5)
    ob.flush()
    last = ob.last_seq
    envs = drain_all(ob)
    d = assert_accounted(envs, last)
    assert d["expired"] >= set(old) | set(short)
    assert not d["expired"] & (set(fresh) | set(keep))
    assert ob.counters["expired"] == len(d["expired"])
    ob.close()


def test_alarm_jumps_old_telemetry_backlog(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1").open()
    put_n(ob, 500)
    ob.flush()
    first = ob.begin(50)  # draining has begun
    alarm = ob.put(Outgoing(topic="t", stream="events/a", data={}, cls="alarm"))
    event = ob.put(Outgoing(topic="t", stream="events/e", data={}, cls="event"))
    ob.flush()
    nxt = ob.begin(3)
    assert [r.seq for r in nxt] == [alarm, event, first[-1].seq + 1]
    # the throttled split: live = alarms/events + rows after the boundary; backlog = the rest
    boundary = ob.last_assigned
    live_tele = put_n(ob, 2)
    ob.flush()
    assert [r.seq for r in ob.begin(10, live_after=boundary, part="live")] == live_tele
    assert [r.seq for r in ob.begin(2, live_after=boundary, part="backlog")] == [first[-1].seq + 2,
                                                                               first[-1].seq + 3]
    ob.close()


def test_release_rewinds_cursor(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1").open()
    put_n(ob, 20)
    ob.flush()
    a = ob.begin(10)
    ob.accept([r.seq for r in a[:3]])
    ob.release([r.seq for r in a[3:]])
    ob.flush()
    assert [r.seq for r in ob.begin(100)] == list(range(4, 21))
    ob.close()


def test_seq_sidecar_keeps_seqs_monotonic_when_db_is_lost(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1").open()
    put_n(ob, 30)
    ob.flush()
    ob.close()
    Path(tmp_path / "o.db").write_bytes(b"this is not a database at all" * 100)
    ob2 = Outbox(tmp_path / "o.db", "d1").open()
    nxt = ob2.put(Outgoing(topic="t", stream="s", data=1))
    assert nxt > 30
    ob2.close()


def _kill_copy(tmp_path: Path, n: int = 200) -> Path:
    """An outbox with committed rows still in its WAL, as a SIGKILL leaves it (files copied while open)."""
    src = tmp_path / "live"
    src.mkdir()
    ob = Outbox(src / "o.db", "d1").open()
    for _ in range(4):  # several commits
        put_n(ob, n // 4)
        ob.flush()
    dst = tmp_path / "state"
    dst.mkdir()
    for suffix in ("", "-wal", ".seq"):
        p = Path(f"{src / 'o.db'}{suffix}")
        if p.exists():
            Path(f"{dst / 'o.db'}{suffix}").write_bytes(p.read_bytes())
    ob.close()
    return dst / "o.db"


def _corrupt_flip(db: Path) -> None:
    with sqlite3.connect(db) as c:  # move the rows from the WAL into the main file first
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    page = 4096
    for off in range(2 * page, len(data), page):  # every b-tree page after the first two: header garbage
        data[off:off + 8] = b"\xff\x13\x37\x00\xfe\xed\xfa\xce"
    db.write_bytes(bytes(data))


def _corrupt_wal(db: Path) -> None:
    wal = Path(f"{db}-wal")
    assert wal.stat().st_size > 3 * 4120
    with open(wal, "r+b") as f:
        f.truncate(wal.stat().st_size - 1000)  # cut inside the last frame


def _corrupt_notadb(db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(os.urandom(64 * 1024))


@pytest.mark.parametrize("kind", ["flipped_bytes", "truncated_wal", "not_a_database"])
def test_corruption_quarantined_salvaged_reported(tmp_path: Path, kind: str) -> None:
    db = _kill_copy(tmp_path)
    {"flipped_bytes": _corrupt_flip, "truncated_wal": _corrupt_wal, "not_a_database": _corrupt_notadb}[kind](db)
    if kind != "flipped_bytes":
        assert precheck(db) is not None
    t0 = time.monotonic()
    ob = Outbox(db, "d1").open()
    assert time.monotonic() - t0 < 10
    assert ob.recovered is not None, "damage must be detected"
    quarantined = list((db.parent / "quarantine").glob("o.db.corrupt-*"))
    assert quarantined and all(p.exists() for p in quarantined)
    assert not list(db.parent.glob("o.db.corrupt-*")), "set aside in quarantine/, not beside the database"
    assert ob.counters["corrupt_recovered"] == 1
    nxt = ob.put(Outgoing(topic="t", stream="s", data=1))
    assert nxt > 200, "seqs are never reused across a corruption recovery"
    last = ob.last_seq
    envs = drain_all(ob)
    alarms = [e for e in envs if e["stream"] == "events/outbox_corrupt"]
    assert len(alarms) == 1 and alarms[0]["cls"] == "alarm"
    d = assert_accounted(envs, last)
    salvaged = {e["seq"] for e in envs if e["stream"] == "telemetry/s"}
    if kind == "truncated_wal":
        assert salvaged, "the complete commits before the torn frame are salvaged"
    assert not (salvaged & d.get("corrupt", set()))
    ob.close()
    assert integrity_check(db) == "ok"
    # a second start is clean: no crash loop, no second quarantine
    ob = Outbox(db, "d1").open()
    assert ob.recovered is None and ob.counters["corrupt_recovered"] == 1
    ob.close()


def test_stats_cli_fields(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "d1").open()
    put_n(ob, 5)
    ob.flush()
    ob.close()
    d = read_stats(tmp_path / "o.db").as_dict()
    for k in ("pending", "backlog", "last_seq", "oldest_age_s", "db_bytes", "enqueued", "sent", "acked",
              "evicted", "expired", "reconnects"):
        assert k in d, k
    assert d["pending"] == 5 and d["enqueued"] == 5


needs_loop = pytest.mark.skipif(loop_mount_unavailable() is not None,
                                reason=f"loop-mounted ext4: {loop_mount_unavailable()}")


@needs_loop
def test_disk_full_keeps_sampling_bounded_then_recovers(tmp_path: Path) -> None:
    try:
        cm = loop_ext4(tmp_path, size_mb=16)
        mnt = cm.__enter__()
    except RuntimeError as e:
        pytest.skip(f"cannot loop-mount ext4 here: {e}")
    try:
        state = mnt / "state"
        ob = Outbox(state / "o.db", "d1", max_bytes=64 * 1024 * 1024, min_free=0, memory_buffer=500,
                    reserve_bytes=512 * 1024, maintenance_interval=0.2).open()
        put_n(ob, 2000, size=100)
        assert ob.flush()
        filler = fill_disk(mnt)
        assert disk_free(mnt) < 64 * 1024
        alarm = ob.put(Outgoing(topic="t", stream="events/a", data={}, cls="alarm"))
        for _ in range(20):  # keep "sampling" into a full disk: no exception, memory stays bounded
            put_n(ob, 400, size=400)
            time.sleep(0.05)
        time.sleep(2.0)
        assert ob.counters["store_errors"] > 0
        assert ob.status()["memory"] <= 500 + 10
        filler.unlink()  # space returns
        assert ob.flush(20), "recovers on its own once space is back"
        time.sleep(0.5)
        ob.flush()
        last = ob.last_seq
        assert ob.last_assigned == last
        envs = drain_all(ob)
        d = assert_accounted(envs, last)
        assert "disk_full" in d and ob.counters["dropped_memory"] > 0
        assert alarm in {e["seq"] for e in envs}, "the alarm survived the disk-full episode"
        ob.close()
        assert integrity_check(state / "o.db") == "ok"
    finally:
        cm.__exit__(None, None, None)


def test_acked_rows_leave_without_row_deletes(tmp_path: Path) -> None:
    """Acks are kept as ranges and the table is emptied in one go once everything is acked; stats and
    restarts never count or replay an acked row."""
    ob = Outbox(tmp_path / "o.db", "d1").open()
    put_n(ob, 100)
    ob.flush()
    rows = ob.begin(100)
    ob.accept(r.seq for r in rows[:60])
    ob.flush()
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 100  # acked rows still stored
    assert ob.pending == 40 and read_stats(tmp_path / "o.db").pending == 40
    assert ob.stats().by_class == {"telemetry": 40}
    ob.release(r.seq for r in rows[60:])
    assert [r.seq for r in ob.begin(100)] == list(range(61, 101)), "acked rows are never handed out again"
    ob.close()
    ob = Outbox(tmp_path / "o.db", "d1").open()  # restart: the acked rows are deleted, the rest replayed
    assert ob.pending == 40 and [r.seq for r in ob.begin(100)][:1] == [61]
    ob.accept(range(61, 101))
    ob.flush()
    assert ob.pending == 0
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    db.close()
    ob.close()


@needs_loop
def test_open_on_a_full_disk_is_not_mistaken_for_corruption(tmp_path: Path) -> None:
    try:
        cm = loop_ext4(tmp_path, size_mb=8)
        mnt = cm.__enter__()
    except RuntimeError as e:
        pytest.skip(f"cannot loop-mount ext4 here: {e}")
    try:
        state = mnt / "state"
        ob = Outbox(state / "o.db", "d1", min_free=0, reserve_bytes=256 * 1024).open()
        put_n(ob, 300)
        ob.flush()
        ob.close()
        assert (state / "o.db.reserve").exists()
        filler = fill_disk(mnt)
        # a restart while the disk is full: SQLite needs room for -wal/-shm; the reserve gives it
        ob = Outbox(state / "o.db", "d1", min_free=0, reserve_bytes=256 * 1024).open()
        assert ob.recovered is None and not list(state.rglob("o.db.corrupt-*"))
        assert ob.pending == 300
        put_n(ob, 2000, size=200)  # cannot all be stored: kept in memory, never an exception
        ob.flush(3.0)
        ob.close(2.0)
        filler2 = fill_disk(mnt, name="filler2.bin")
        # no reserve left and still full: it opens (SQLite can reuse its -wal/-shm) or says why; the
        # healthy file is never quarantined
        try:
            Outbox(state / "o.db", "d1", min_free=0, reserve_bytes=0).open().close(2.0)
        except OutboxError as e:
            assert "disk full" in str(e)
        assert not list(state.rglob("o.db.corrupt-*"))
        filler.unlink()
        filler2.unlink(missing_ok=True)
        ob = Outbox(state / "o.db", "d1", min_free=0, reserve_bytes=0).open()
        assert ob.recovered is None and ob.last_seq >= 300
        seq = ob.put(Outgoing(topic=TOPIC, stream="telemetry/s", data={}))
        assert ob.flush() and seq == ob.last_seq
        assert_accounted(drain_all(ob), ob.last_seq)  # whatever the full disk forced out is reported
        ob.close()
        assert integrity_check(state / "o.db") == "ok"
    finally:
        cm.__exit__(None, None, None)


def test_quarantine_keeps_the_newest_sets_and_never_touches_other_files(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    q = tmp_path / "quarantine"
    q.mkdir()
    for day in range(1, 8):  # seven sets of a foreign WAL with its -shm
        for suffix in ("-wal", "-shm"):
            (q / f"o.db.202601{day:02d}T000000Z{suffix}").write_bytes(b"w")
    (q / "o.db.corrupt-20260110T000000Z").write_bytes(b"x")  # two damaged databases in one second
    (q / "o.db.corrupt-20260110T000000Z.2").write_bytes(b"y")
    (tmp_path / "o.db.corrupt-20251231T000000Z").write_bytes(b"z")  # where earlier builds put it
    (q / "notes.txt").write_text("the operator's")
    (q / "other.db.20200101T000000Z").write_bytes(b"another database's")
    removed = prune_quarantine(db, keep=3)
    assert sorted(p.name for p in q.iterdir()) == sorted([
        "o.db.corrupt-20260110T000000Z.2", "o.db.corrupt-20260110T000000Z",
        "o.db.20260107T000000Z-wal", "o.db.20260107T000000Z-shm", "notes.txt", "other.db.20200101T000000Z"])
    assert not (tmp_path / "o.db.corrupt-20251231T000000Z").exists()
    assert len(removed) == 6 * 2 + 1
    assert prune_quarantine(db, keep=3) == []  # nothing more to do
    # the set just made is kept even when a Pi without a real-time clock stamped it in 1970
    (q / "o.db.19700101T000001Z-wal").write_bytes(b"new")
    removed = prune_quarantine(db, keep=2, protect=q / "o.db.19700101T000001Z")
    assert (q / "o.db.19700101T000001Z-wal").exists() and (q / "o.db.corrupt-20260110T000000Z.2").exists()
    assert sorted(p.name for p in removed) == ["o.db.20260107T000000Z-shm", "o.db.20260107T000000Z-wal",
                                               "o.db.corrupt-20260110T000000Z"]


def test_repeated_damage_cannot_fill_the_disk_with_quarantined_files(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    db = _kill_copy(tmp_path)
    for _ in range(4):
        _corrupt_notadb(db)
        ob = Outbox(db, "d1", quarantine_keep=2).open()
        assert ob.recovered is not None and "/quarantine/o.db.corrupt-" in ob.recovered["file"]
        ob.close()
    left = sorted(p.name for p in (db.parent / "quarantine").iterdir())
    assert len(left) == 2 and all(n.startswith("o.db.corrupt-") for n in left), left
    assert Path(ob.recovered["file"]).name in left, "the newest (the one just salvaged) is kept"
    assert "quarantine keeps the newest 2 set(s)" in caplog.text
