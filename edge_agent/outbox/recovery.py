"""Opening the queue database safely: structural precheck, quick_check, quarantine of a damaged file,
salvage of what is still readable, and the seq sidecar that keeps seqs monotonic across all that.

Corruption at open (not a database, damaged pages found by ``PRAGMA quick_check``, a WAL torn inside a
frame): the files are renamed ``outbox.db.corrupt-<UTC timestamp>`` (+ ``-wal``/``-shm``), what is still
readable is salvaged into a fresh database, and the outbox reports it (see :class:`Recovered`). Errors
that are not damage (disk full, locked, I/O, permissions) raise :class:`OutboxError` instead: a healthy
file is never quarantined for them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import codec
from edge_agent.errors import OutboxError
from edge_agent.fsutil import atomic_write
from edge_agent.outbox import continuity
from edge_agent.outbox.maintenance import DiskReserve
from edge_agent.outbox.rangeset import NONE_ACKED, Acked, range_end
from edge_agent.outbox.schema import count_in_ranges, delete_ranges, meta_int, meta_ranges, open_db

log = logging.getLogger("edge_agent.outbox")

SEQ_RESERVE = 10000  # seqs reserved per sidecar write; a corruption recovery skips (and reports) at most this


class SeqSidecar:
    """``outbox.db.seq``: a seq reservation that survives the loss of the database.

    ``reserved`` is written (atomically: temp file, fsync, rename) *before* any seq above it is
    committed, so it is always >= every seq that may have been published; it never goes down (a write
    with a lower value keeps the old one), so it is the floor of every seq assigned after an open.
    ``floor`` is the lowest seq that may still have been unsent when it was written (a stale, i.e.
    lower, floor only makes a loss report cover more). ``db_id`` is the random id of the database the
    sidecar belongs to (also in its ``meta``: a database or WAL of another outbox is recognised).
    ``known``: the file was read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reserved = 0
        self.floor = 1
        self.db_id: str | None = None
        self.on_disk_id: str | None = None  # the db_id the file on disk holds
        self.known = False
        try:
            d = json.loads(path.read_text())
            self.reserved = int(d.get("reserved", 0))
            self.floor = int(d.get("floor", 1))
            self.db_id = str(d["db_id"]) if d.get("db_id") else None
            self.on_disk_id = self.db_id
            self.known = True
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            pass

    def write(self, reserved: int, floor: int) -> None:
        reserved = max(reserved, self.reserved)  # never lower: seqs never go back
        doc: dict[str, Any] = {"reserved": reserved, "floor": floor}
        if self.db_id:
            doc["db_id"] = self.db_id
        atomic_write(self.path, json.dumps(doc))
        self.reserved, self.floor, self.on_disk_id = reserved, floor, self.db_id


def _wal_problem(wal: Path, wsize: int) -> str | None:
    """A WAL of the current generation cut short inside a frame (SQLite would quietly drop it)."""
    with open(wal, "rb") as f:
        wh = f.read(32)
        if len(wh) < 32:
            return f"WAL truncated inside its header ({wsize} bytes)"
        if int.from_bytes(wh[:4], "big") not in (0x377F0682, 0x377F0683):
            return "WAL has a bad header (magic)"
        page = int.from_bytes(wh[8:12], "big")
        if page < 512 or page > 65536 or page & (page - 1):
            return f"WAL has a bad page size {page}"
        salts = wh[16:24]
        frame = 24 + page
        off = 32
        while off + 24 <= wsize:
            f.seek(off)
            fh = f.read(24)
            if fh[8:16] != salts:
                return None  # an older generation: not part of the live log
            if off + frame > wsize:
                return f"WAL truncated inside a frame at offset {off} ({wsize} bytes)"
            off += frame
        if off < wsize:
            f.seek(off)
            tail = f.read(24)
            if len(tail) >= 16 and tail[8:16] == salts:
                return f"WAL truncated inside a frame header at offset {off}"
    return None


def precheck(path: Path) -> str | None:
    """Cheap structural checks before SQLite opens the file: a reason string if damaged, else None.

    SQLite itself quietly ignores a WAL torn inside a frame (it rolls back to the last complete commit);
    that is data loss we must report, so a frame of the current WAL generation cut short is damage.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or head[:16] != b"SQLite format 3\x00":
        return "not an SQLite database (bad file header)"
    wal = Path(f"{path}-wal")
    try:
        wsize = wal.stat().st_size
    except FileNotFoundError:
        return None
    return _wal_problem(wal, wsize) if wsize else None


def bounded(db: sqlite3.Connection, timeout: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with a time limit; raises sqlite3.OperationalError on timeout."""
    deadline = time.monotonic() + timeout
    db.set_progress_handler(lambda: int(time.monotonic() > deadline), 10000)
    try:
        return fn()
    finally:
        db.set_progress_handler(None, 0)


@dataclass
class Recovered:
    """What a recovery found: the quarantined ``file``, the ``error``, how many rows were ``salvaged``,
    the seqs ``lost`` and the ``counters`` read from the damaged file."""

    file: str
    error: str
    salvaged: int
    last_seq: int
    lost: list[int]
    counters: dict[str, int] = field(default_factory=dict)
    reason: str = "corrupt"  # the events/dropped reason: "corrupt", "db_lost" or "wal_lost"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "error": self.error, "salvaged": self.salvaged, "last_seq": self.last_seq,
                "lost": self.lost, "counters": self.counters, "reason": self.reason}


@dataclass
class Salvage:
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # (seq, prio, topic name, ...) as in a Row
    last_seq: int = 0
    counters: dict[str, int] = field(default_factory=dict)


class Opener:
    """Opens ``path`` checked; a damaged file is quarantined and salvaged (see the module docstring)."""

    def __init__(self, path: Path, *, sync: str, check_timeout: float, reserve: DiskReserve,
                 sidecar: SeqSidecar) -> None:
        self.path = path
        self.sync = sync
        self.check_timeout = check_timeout
        self.reserve = reserve
        self.sidecar = sidecar

    def open(self) -> tuple[sqlite3.Connection, Recovered | None]:
        """The writer's connection, and what was recovered or lost (None when the files were healthy)."""
        wal_note = continuity.foreign_wal(self.path, self.sidecar)  # before SQLite applies it
        marker = continuity.CleanMarker(self.path)
        clean = marker.peek()  # the last seq at a clean stop (-1: unknown), None after any other stop
        wal = "clean" if clean is not None else continuity.wal_state(self.path)
        problem = precheck(self.path)
        if problem is None:
            try:
                db = self._open_retrying()
            except sqlite3.DatabaseError as e:
                problem = f"cannot open: {e}"
            else:
                problem = self._quick_check(db)
                if problem is None:
                    db, rec = self._continuity(db, wal, wal_note, clean)
                    continuity.ensure_identity(db, self.sidecar)
                    marker.clear()
                    return db, rec
                db.close()
        db, rec = self._recover(problem)
        continuity.ensure_identity(db, self.sidecar)
        marker.clear()
        return db, rec

    def _continuity(self, db: sqlite3.Connection, wal: str, wal_note: str | None,
                    clean: int | None) -> tuple[sqlite3.Connection, Recovered | None]:
        """A healthy file that is not the one the sidecar knows (emptied, removed, rewound, foreign, its
        WAL lost): seqs continue above the reservation and everything possibly lost is reported."""
        gap = continuity.find_gap(db, self.sidecar, wal, wal_note, clean)
        if gap is None:
            return db, None
        where = str(self.path)
        if gap.foreign_db:
            db.close()
            where = str(continuity.quarantine(self.path, ("", "-wal", "-shm")))
            try:
                db = open_db(self.path, self.sync)
            except sqlite3.DatabaseError as e:
                raise OutboxError(f"{self.path}: cannot create a fresh outbox database: {e}") from e
        db_last = meta_int(db, "last_seq")
        last = max(self.sidecar.reserved, db_last)
        lost = list(range(max(1, self.sidecar.floor, db_last + 1), last + 1))
        log.error("outbox: %s: %s; seqs continue at %d, %d seq(s) reported lost (%s)", self.path, gap.error,
                  last + 1, len(lost), gap.reason)
        return db, Recovered(file=where, error=gap.error, salvaged=0, last_seq=last, lost=lost, reason=gap.reason)

    def _recover(self, problem: str) -> tuple[sqlite3.Connection, Recovered]:
        """Quarantine the damaged file, salvage what is readable into a fresh one (reason "corrupt")."""
        log.error("outbox: %s is damaged (%s); moving it aside and starting a fresh one", self.path, problem)
        base = self._quarantine()
        try:
            db = open_db(self.path, self.sync)
        except sqlite3.DatabaseError as e:
            raise OutboxError(f"{self.path}: cannot create a fresh outbox database: {e}") from e
        found = self._salvage(base)
        salvaged = copy_into(db, found.rows)
        last = max(found.last_seq, max(salvaged, default=0), self.sidecar.reserved)
        lost = sorted(set(range(max(1, self.sidecar.floor), last + 1)) - set(salvaged))
        return db, Recovered(file=str(base), error=problem, salvaged=len(salvaged), last_seq=last, lost=lost,
                             counters=found.counters)

    def _open_retrying(self) -> sqlite3.Connection:
        """``open_db()``; a full disk (SQLite needs a few KiB for -wal/-shm even to read) is answered by
        releasing the reserve file and trying again. Errors that are not damage raise OutboxError."""
        for attempt in (1, 2):
            try:
                return open_db(self.path, self.sync)
            except sqlite3.DatabaseError as e:
                if getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) \
                        or type(e) is sqlite3.DatabaseError:
                    raise
                if attempt == 1 and self.reserve.exists():
                    log.error("outbox: cannot open %s (%s); releasing the disk reserve and retrying", self.path, e)
                    self.reserve.drop()
                    continue
                raise OutboxError(f"{self.path}: cannot open outbox database: {e} (disk full? "
                                  f"{self.path.parent} needs a little free space)") from e
        raise AssertionError("unreachable")

    def _quick_check(self, db: sqlite3.Connection) -> str | None:
        try:
            res = bounded(db, self.check_timeout, lambda: db.execute("PRAGMA quick_check(5)").fetchall())
        except sqlite3.OperationalError as e:
            if "interrupt" in str(e).lower():
                log.warning("outbox: quick_check skipped after %.0f s (database too large/slow)", self.check_timeout)
                return None
            if getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                return f"quick_check failed: {e}"
            db.close()  # locked, I/O error: not damage, never quarantine a healthy file for it
            raise OutboxError(f"{self.path}: cannot check outbox database: {e}") from e
        except sqlite3.DatabaseError as e:
            return f"quick_check failed: {e}"
        msgs = [str(r[0]) for r in res]
        return None if msgs == ["ok"] else "quick_check: " + "; ".join(msgs)

    def _quarantine(self) -> Path:
        """Move the database (and its -wal/-shm) to ``quarantine/<name>.corrupt-<UTC stamp>[.n]``."""
        return continuity.quarantine(self.path, ("", "-wal", "-shm"), tag="corrupt-")

    def _salvage(self, old: Path) -> Salvage:
        """Every still-readable, un-acked row of a quarantined database (within ``check_timeout``)."""
        found = Salvage()
        try:
            # read-write: SQLite needs the WAL index to read what the quarantined WAL still holds
            src = sqlite3.connect(old, timeout=2)
        except sqlite3.Error:
            return found
        try:
            bounded(src, self.check_timeout, lambda: read_salvage(src, found))
        except sqlite3.Error as e:
            log.warning("outbox: salvage failed: %s", e)
        finally:
            src.close()
        return found


def copy_into(new: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[int]:
    """Store salvaged rows in a fresh database; their seqs."""
    if rows:
        ids: dict[str, int] = {}
        new.execute("BEGIN IMMEDIATE")
        for t in {r[2] for r in rows}:
            ids[t] = new.execute("INSERT INTO topics (topic) VALUES (?)", (t,)).lastrowid or 0
        new.executemany("INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?,?,?)",
                        [(r[0], r[1], ids[r[2]], *r[3:]) for r in rows])
        new.execute("COMMIT")
    return [int(r[0]) for r in rows]


def _ms(v: Any) -> int:
    """A schema-1 REAL seconds value or a schema-2 integer ms value, as integer ms."""
    return int(v * 1000) if isinstance(v, float) else int(v)


def read_salvage(src: sqlite3.Connection, found: Salvage) -> None:
    with contextlib.suppress(sqlite3.Error):
        meta = dict(src.execute("SELECT key, value FROM meta").fetchall())
        found.last_seq = int(meta.get("last_seq", 0))
        found.counters.update({k[2:]: int(v) for k, v in meta.items() if str(k).startswith("c.")})
    acked = meta_ranges(src, "acked")
    acked_starts = [r[0] for r in acked]
    names: dict[int, str] = {}
    with contextlib.suppress(sqlite3.Error):
        names = dict(src.execute("SELECT id, topic FROM topics").fetchall())
    try:
        for r in src.execute("SELECT seq, prio, topic, payload, created, expires, qos, retain, props "
                             "FROM messages ORDER BY seq"):
            if range_end(acked, acked_starts, r[0]) is not None:
                continue  # acked before the damage: already delivered
            topic = names.get(r[2]) if isinstance(r[2], int) else r[2]
            if topic is None or not isinstance(r[3], bytes):
                continue
            expires = None if r[5] is None else _ms(r[5])
            found.rows.append((r[0], r[1], topic, r[3], _ms(r[4]), expires, r[6], r[7], r[8]))
    except sqlite3.Error as e:
        log.warning("outbox: salvage stopped after %d row(s): %s", len(found.rows), e)


def purge_stored_acks(db: sqlite3.Connection) -> Acked:
    """At open: delete the rows a previous run had acked but not yet deleted; what is still stored of
    them when that fails (e.g. disk full at start: they are skipped, and deleted later)."""
    rngs = meta_ranges(db, "acked")
    if not rngs:
        return NONE_ACKED
    try:
        db.execute("BEGIN IMMEDIATE")
        delete_ranges(db, rngs)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('acked', ?)", (codec.encode([]),))
        db.execute("COMMIT")
    except sqlite3.Error as e:
        log.warning("outbox: cannot delete acked rows at start: %s", e)
        if db.in_transaction:
            db.execute("ROLLBACK")
        return Acked(rngs, count_in_ranges(db, rngs))
    return NONE_ACKED
