"""The durable store-and-forward outbox: the only module that touches the queue database.

::

    sensors/pipeline/commands --put()--> [memory batch] --group commit--> SQLite (WAL)
                                                                            |
    forwarder <--begin(n)-- claimed rows ------------------------------------+
    forwarder --accept(seqs)--> deleted in the next commit (after PUBACK)
    forwarder --release(seqs)--> back in the queue (connection lost)

* ``put()`` assigns the message its ``seq`` (strictly increasing, persisted in ``meta.last_seq`` in the
  same transaction as the row) and returns it at once; a writer thread commits every
  ``storage.commit_interval`` seconds (one transaction, and with ``sync = "full"`` one fsync, for many
  readings). A message is visible to ``begin()`` only once committed, so nothing is sent before it is
  stored. A crash loses at most the uncommitted batch, whose seqs were never published and are
  therefore safely assigned again after the restart.
* A row is deleted only after ``accept()`` (the broker's PUBACK). Rows ``begin()`` handed out are
  "claimed" and not handed out again until ``release()``d or deleted. Acks are committed in groups
  (``ack_interval``): a crash before that only causes duplicates, never a loss.
* ``begin()`` orders by class (alarm > event > inference > telemetry), then seq. It keeps a cursor per
  class so a drain never re-reads rows it already handed out.

Every gap is accounted (see docs/reliability.md). Rows leave the database without a PUBACK only by
eviction (``storage.max_bytes``, free disk), expiry (``storage.max_age`` / ``Outgoing.ttl``), disk full
or corruption; each time the outbox itself stores an ``events/dropped`` message whose ``data`` is
``{"ranges": [[first, last], ...], "count": n, "reason": ...}``, *in the same transaction* as the
deletion, so a crash can never leave an unaccounted hole. Eviction takes the lowest class first,
oldest first; alarms are the last thing ever dropped.

Disk full (SQLITE_FULL/ENOSPC): the writer keeps what it could not store in memory (at most
``storage.memory_buffer`` messages; beyond that the lowest class, oldest first, is dropped and
accounted), frees a small reserve file it keeps beside the database so that eviction itself can write,
evicts, and retries; when space returns it recreates the reserve. It never raises into the producers.

Corruption at open (not a database, damaged pages found by ``PRAGMA quick_check``, a WAL torn inside a
frame): the files are renamed ``outbox.db.corrupt-<UTC timestamp>`` (+ ``-wal``/``-shm``), what is still
readable is salvaged into a fresh database, and an ``events/outbox_corrupt`` alarm plus an
``events/dropped`` (reason ``"corrupt"``) message are queued. Seqs stay monotonic across this: a small
sidecar file ``outbox.db.seq`` (written atomically, only every ``SEQ_RESERVE`` seqs) holds a seq
reservation that is always >= every committed seq, and the fresh database continues after it.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import codec
from edge_agent.errors import OutboxClosed, OutboxError
from edge_agent.message import MESSAGE_CLASSES, Outgoing, class_rank

log = logging.getLogger("edge_agent.outbox")

SCHEMA_VERSION = 2
# Kept lean on purpose (bytes written per message matter on SD cards): the topic is an id into
# ``topics``, ``created`` is integer ms, ``expires`` is NULL for the default TTL (created + max_age),
# and only non-telemetry rows and rows with their own TTL get index entries.
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq      INTEGER PRIMARY KEY,
    prio     INTEGER NOT NULL,
    topic    INTEGER NOT NULL,
    payload  BLOB    NOT NULL,
    created  INTEGER NOT NULL,
    expires  INTEGER,
    qos      INTEGER NOT NULL DEFAULT 1,
    retain   INTEGER NOT NULL DEFAULT 0,
    props    BLOB
);
CREATE INDEX IF NOT EXISTS messages_urgent ON messages (prio, seq) WHERE prio > 0;
CREATE INDEX IF NOT EXISTS messages_ttl ON messages (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS topics (id INTEGER PRIMARY KEY, topic TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""

COUNTERS = ("enqueued", "sent", "acked", "evicted", "expired", "reconnects", "dropped_memory",
            "store_errors", "corrupt_recovered", "rejected")

DROPPED_STREAM = "events/dropped"
CORRUPT_STREAM = "events/outbox_corrupt"
SEQ_RESERVE = 10000  # seqs reserved per sidecar write; a corruption recovery skips (and reports) at most this
MAX_BATCH = 2000
REPORT_TTL = 100 * 365 * 86400.0
ACKED_LIMIT = 200_000  # acked rows kept (not yet deleted) before they are deleted row by row
PRIOS = tuple(range(len(MESSAGE_CLASSES) - 1, -1, -1))  # highest class first


@dataclass(frozen=True, slots=True)
class Pending:
    """A stored message handed to the forwarder."""

    seq: int
    prio: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: dict[str, Any] | None
    created: float


@dataclass
class OutboxStats:
    pending: int
    last_seq: int
    oldest_age_s: float
    db_bytes: int
    counters: dict[str, int] = field(default_factory=dict)
    by_class: dict[str, int] = field(default_factory=dict)
    max_bytes: int = 0
    used_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"pending": self.pending, "backlog": self.pending, "last_seq": self.last_seq,
                "oldest_age_s": round(self.oldest_age_s, 3), "db_bytes": self.db_bytes,
                "used_bytes": self.used_bytes, **({"max_bytes": self.max_bytes} if self.max_bytes else {}),
                "by_class": self.by_class, **self.counters}


# (seq, prio, topic, payload, created_ms, expires_ms | None, qos, retain, props)
_Row = tuple[int, int, str, bytes, int, int | None, int, int, bytes | None]


def ranges(seqs: Iterable[int]) -> list[list[int]]:
    """``[3, 1, 2, 7]`` -> ``[[1, 3], [7, 7]]``."""
    out: list[list[int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def merge_ranges(rs: Iterable[Iterable[int]]) -> list[list[int]]:
    """Union of ``[first, last]`` ranges, sorted and coalesced."""
    out: list[list[int]] = []
    for a, b in sorted((int(x[0]), int(x[1])) for x in (list(r) for r in rs)):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    code = getattr(err, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(err).lower()


class _SeqSidecar:
    """``outbox.db.seq``: a seq reservation that survives the loss of the database.

    ``reserved`` is written (atomically: temp file, fsync, rename) *before* any seq above it is
    committed, so it is always >= every seq that may have been published. ``floor`` is the lowest
    seq that may still have been unsent when it was written (a stale, i.e. lower, floor only makes a
    corruption report cover more).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reserved = 0
        self.floor = 1
        try:
            d = json.loads(path.read_text())
            self.reserved = int(d.get("reserved", 0))
            self.floor = int(d.get("floor", 1))
        except (OSError, ValueError, TypeError, AttributeError):
            pass

    def write(self, reserved: int, floor: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps({"reserved": reserved, "floor": floor}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.reserved, self.floor = reserved, floor


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
    if wsize == 0:
        return None
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


class Outbox:
    """See module docstring. Thread-safe; one writer thread owns all writes."""

    def __init__(self, path: str | os.PathLike[str], device_id: str, *, max_age: float = 7 * 86400.0,
                 max_bytes: int = 256 * 1024 * 1024, commit_interval: float = 0.05, sync: str = "normal",
                 memory_buffer: int = 10000, clock: Callable[[], float] = time.time,
                 topic_prefix: str = "edge", min_free: int = 16 * 1024 * 1024,
                 reserve_bytes: int | None = None, ack_interval: float = 0.25,
                 maintenance_interval: float = 1.0, check_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.device_id = device_id
        self.topic_prefix = topic_prefix
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.min_free = min_free
        self.reserve_bytes = reserve_bytes if reserve_bytes is not None else \
            max(256 * 1024, min(4 * 1024 * 1024, max_bytes // 16))
        self.commit_interval = commit_interval
        self.ack_interval = max(ack_interval, commit_interval)
        self.maintenance_interval = maintenance_interval
        self.check_timeout = check_timeout
        self.sync = sync
        self.memory_buffer = memory_buffer
        self._clock = clock
        self._lock = threading.Lock()  # guards the read connection, the claims and the cursors
        self._cond = threading.Condition(threading.Lock())  # guards the memory batch, acks, counters
        self._batch: list[_Row] = []
        self._acks: list[int] = []
        self._committing = 0  # rows of the batch the writer is committing right now
        self._claimed: dict[int, int] = {}  # seq -> prio
        self._cursor: dict[tuple[int, str], int] = {}
        self._data_ready = threading.Event()
        self._committed_listeners: list[Callable[[list[int]], None]] = []
        self._dropped_listeners: list[Callable[[list[int], str], None]] = []
        self._acct: dict[str, tuple[int, list[list[int]]]] = {}  # reason -> (uncommitted report seq, ranges)
        self._fold_pending: dict[str, tuple[list[int], list[list[int]]]] = {}  # reports to fold into new ones
        self._report_rows = 0  # stored events/dropped rows (recounted when it looks large)
        self._mem_dropped: list[int] = []
        self._evict_pending: dict[str, list[int]] = {}  # selected by maintenance, not yet reported
        self._evict_retry: dict[str, list[int]] = {}  # reported in a batch whose commit failed
        self._topic_ids: dict[str, int] = {}
        self._topic_names: dict[int, str] = {}
        self._closed = False
        self._flush_req = 0
        self._flush_done = 0
        self._disk_full = False
        self._failed_bytes = 0
        self._next_maint = time.monotonic() + maintenance_interval  # the first commit must not wait for it
        self._next_expiry_ms: int | None = None
        self._last_sidecar = 0.0
        self.heartbeat: Callable[[], None] = lambda: None
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._reserve_path = self.path.with_name(self.path.name + ".reserve")
        self._sidecar = _SeqSidecar(self.path.with_name(self.path.name + ".seq"))
        self.recovered: dict[str, Any] | None = None
        self._db = self._open_checked()  # the writer's connection (writer thread only, after start)
        self._last_seq = max(self._meta_int("last_seq"), self._last_seq_floor)
        for name in COUNTERS:
            self.counters[name] = self._meta_int(f"c.{name}")
        # Acked rows are not deleted one by one (a B-tree delete rewrites every page it touches, doubling
        # the bytes written per message): their seqs are kept as ranges in meta.acked, and once every
        # stored row is acked the table is emptied with one unqualified DELETE, which frees the pages
        # without writing them. See _transaction.
        self._acked: list[list[int]] = []
        self._acked_starts: list[int] = []
        self._acked_rows = 0
        self._purge_acked = False
        self._purge_stored_acks()
        self._pending = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] - self._acked_rows
        self._load_topics()
        rid = self._topic_ids.get(self._topic(DROPPED_STREAM))
        if rid is not None:
            self._report_rows = self._db.execute("SELECT COUNT(*) FROM messages WHERE topic = ?", (rid,)).fetchone()[0]
        self._next_seq = self._last_seq + 1
        self._next_expiry_ms = self._min_expiry()
        with contextlib.suppress(OSError):  # retried before the first commit that needs it
            self._write_sidecar(self._last_seq + SEQ_RESERVE)
        self._ensure_reserve()
        # readers (begin, stats) use their own connection: in WAL mode they see the last commit and never
        # wait for the writer's transaction, so a long commit cannot stall the forwarder
        self._rdb = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._rdb.execute("PRAGMA query_only=1")
        if self.recovered is not None:
            self._report_recovery()
        self._writer = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ open, check, recover
    def _open(self, path: Path | None = None) -> sqlite3.Connection:
        p = path or self.path
        db = sqlite3.connect(p, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
            db.execute("PRAGMA journal_size_limit=8388608")
            # Debian builds SQLite with SECURE_DELETE on: zeroing every deleted row would double the
            # bytes written per message. FAST only zeroes what costs no extra I/O.
            db.execute("PRAGMA secure_delete=FAST")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            cols = [r[1] for r in db.execute("PRAGMA table_info(messages)")]
            if cols and version < SCHEMA_VERSION:
                self._migrate_v1(db)
            if version != SCHEMA_VERSION or not cols:  # no write at all when nothing changes (disk may be full)
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @staticmethod
    def _migrate_v1(db: sqlite3.Connection) -> None:
        """Schema 1 (topic TEXT, created/expires REAL) -> 2, in one transaction."""
        db.execute("BEGIN IMMEDIATE")
        db.execute("ALTER TABLE messages RENAME TO messages_v1")
        db.execute("DROP INDEX IF EXISTS messages_order")
        for stmt in SCHEMA.strip().split(";"):
            if stmt.strip():
                db.execute(stmt)
        db.execute("INSERT OR IGNORE INTO topics (topic) SELECT DISTINCT topic FROM messages_v1")
        db.execute("INSERT INTO messages SELECT m.seq, m.prio, t.id, m.payload, CAST(m.created * 1000 AS INTEGER), "
                   "CAST(m.expires * 1000 AS INTEGER), m.qos, m.retain, m.props FROM messages_v1 m "
                   "JOIN topics t ON t.topic = m.topic")
        db.execute("DROP TABLE messages_v1")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")

    def _bounded(self, db: sqlite3.Connection, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with a time limit (``check_timeout``); raises sqlite3.OperationalError on timeout."""
        deadline = time.monotonic() + self.check_timeout
        db.set_progress_handler(lambda: int(time.monotonic() > deadline), 10000)
        try:
            return fn()
        finally:
            db.set_progress_handler(None, 0)

    def _quick_check(self, db: sqlite3.Connection) -> str | None:
        try:
            res = self._bounded(db, lambda: db.execute("PRAGMA quick_check(5)").fetchall())
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

    def _open_retrying(self) -> sqlite3.Connection:
        """``_open()``; a full disk (SQLite needs a few KiB for -wal/-shm even to read) is answered by
        releasing the reserve file and trying again. Errors that are not damage (full, locked, I/O,
        permissions) raise OutboxError: a healthy file is never quarantined for them."""
        for attempt in (1, 2):
            try:
                return self._open()
            except sqlite3.DatabaseError as e:
                if getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) \
                        or type(e) is sqlite3.DatabaseError:
                    raise
                if attempt == 1 and self._reserve_path.exists():
                    log.error("outbox: cannot open %s (%s); releasing the disk reserve and retrying", self.path, e)
                    self._drop_reserve()
                    continue
                raise OutboxError(f"{self.path}: cannot open outbox database: {e} (disk full? "
                                  f"{self.path.parent} needs a little free space)") from e
        raise AssertionError("unreachable")

    def _open_checked(self) -> sqlite3.Connection:
        self._last_seq_floor = 0
        problem = precheck(self.path)
        if problem is None:
            try:
                db = self._open_retrying()
            except sqlite3.DatabaseError as e:
                problem = f"cannot open: {e}"
            else:
                problem = self._quick_check(db)
                if problem is None:
                    return db
                db.close()
        log.error("outbox: %s is damaged (%s); moving it aside and starting a fresh one", self.path, problem)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while base.exists():
            n += 1
            base = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, f"{base}{suffix}")
        try:
            db = self._open()
        except sqlite3.DatabaseError as e:
            raise OutboxError(f"{self.path}: cannot create a fresh outbox database: {e}") from e
        salvaged, old_last, counters = self._salvage(base, db)
        last = max(old_last, max(salvaged, default=0), self._sidecar.reserved)
        lost = sorted(set(range(max(1, self._sidecar.floor), last + 1)) - set(salvaged))
        self._last_seq_floor = last
        self.recovered = {"file": str(base), "error": problem, "salvaged": len(salvaged), "last_seq": last,
                          "lost": lost, "counters": counters}
        return db

    def _salvage(self, old: Path, new: sqlite3.Connection) -> tuple[list[int], int, dict[str, int]]:
        """Copy every still-readable row of a quarantined database into the fresh one."""
        rows: list[tuple[Any, ...]] = []
        last = 0
        counters: dict[str, int] = {}
        try:
            # read-write: SQLite needs the WAL index to read what the quarantined WAL still holds
            src = sqlite3.connect(old, timeout=2)
        except sqlite3.Error:
            return [], 0, {}
        try:
            def read() -> None:
                nonlocal last
                with contextlib.suppress(sqlite3.Error):
                    meta = dict(src.execute("SELECT key, value FROM meta").fetchall())
                    last = int(meta.get("last_seq", 0))
                    counters.update({k[2:]: int(v) for k, v in meta.items() if str(k).startswith("c.")})
                acked = _meta_ranges(src, "acked")
                acked_starts = [r[0] for r in acked]
                names: dict[int, str] = {}
                with contextlib.suppress(sqlite3.Error):
                    names = dict(src.execute("SELECT id, topic FROM topics").fetchall())
                try:
                    for r in src.execute("SELECT seq, prio, topic, payload, created, expires, qos, retain, props "
                                         "FROM messages ORDER BY seq"):
                        if _range_end(acked, acked_starts, r[0]) is not None:
                            continue  # acked before the damage: already delivered
                        topic = names.get(r[2]) if isinstance(r[2], int) else r[2]
                        if topic is None or not isinstance(r[3], bytes):
                            continue
                        created = int(r[4] * 1000) if isinstance(r[4], float) else int(r[4])
                        expires = None if r[5] is None else (int(r[5] * 1000) if isinstance(r[5], float)
                                                             else int(r[5]))
                        rows.append((r[0], r[1], topic, r[3], created, expires, r[6], r[7], r[8]))
                except sqlite3.Error as e:
                    log.warning("outbox: salvage stopped after %d row(s): %s", len(rows), e)

            self._bounded(src, read)
        except sqlite3.Error as e:
            log.warning("outbox: salvage failed: %s", e)
        finally:
            src.close()
        if rows:
            ids: dict[str, int] = {}
            new.execute("BEGIN IMMEDIATE")
            for t in {r[2] for r in rows}:
                ids[t] = new.execute("INSERT INTO topics (topic) VALUES (?)", (t,)).lastrowid or 0
            new.executemany("INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?,?,?)",
                            [(r[0], r[1], ids[r[2]], *r[3:]) for r in rows])
            new.execute("COMMIT")
        return [int(r[0]) for r in rows], last, counters

    def _report_recovery(self) -> None:
        rec = self.recovered
        assert rec is not None
        for k, v in rec["counters"].items():
            if k in self.counters:
                self.counters[k] = v
        self.counters["corrupt_recovered"] += 1
        lost = rec["lost"]
        self.put(Outgoing(topic=self._topic(CORRUPT_STREAM), stream=CORRUPT_STREAM, cls="alarm",
                          data={"file": rec["file"], "error": rec["error"], "salvaged": rec["salvaged"],
                                "lost": len(lost), "ranges": ranges(lost)}))
        if lost:
            with self._cond:
                self._account_locked("corrupt", lost)

    def _purge_stored_acks(self) -> None:
        """At open: delete the rows a previous run had acked but not yet deleted."""
        rngs = _meta_ranges(self._db, "acked")
        if not rngs:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            _delete_ranges(self._db, rngs)
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('acked', ?)", (codec.encode([]),))
            self._db.execute("COMMIT")
        except sqlite3.Error as e:  # e.g. disk full at start: keep skipping them, delete later
            log.warning("outbox: cannot delete acked rows at start: %s", e)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._set_acked(rngs, _count_in_ranges(self._db, rngs))

    def _set_acked(self, rngs: list[list[int]], rows: int) -> None:
        """Acked rows still stored: their ranges (sorted, disjoint), the ranges' first seqs (for bisect)
        and how many rows they hold."""
        self._acked = rngs
        self._acked_starts = [r[0] for r in rngs]
        self._acked_rows = rows

    def _is_acked(self, seq: int) -> bool:
        return _range_end(self._acked, self._acked_starts, seq) is not None

    def _meta_int(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _load_topics(self) -> None:
        for i, t in self._db.execute("SELECT id, topic FROM topics"):
            self._topic_ids[t] = i
            self._topic_names[i] = t

    def _topic(self, stream: str) -> str:
        return f"{self.topic_prefix}/{self.device_id}/{stream}"

    def _min_expiry(self) -> int | None:
        """The earliest expiry of any stored row (ms), from the oldest default-TTL row and the TTL index."""
        max_age_ms = int(self.max_age * 1000)
        a = self._db.execute("SELECT created FROM messages WHERE expires IS NULL ORDER BY seq LIMIT 1").fetchone()
        b = self._db.execute("SELECT MIN(expires) FROM messages WHERE expires IS NOT NULL").fetchone()
        cands = ([a[0] + max_age_ms] if a else []) + ([b[0]] if b and b[0] is not None else [])
        return min(cands) if cands else None

    def _write_sidecar(self, reserved: int) -> None:
        row = self._db.execute("SELECT seq FROM messages ORDER BY seq LIMIT 1").fetchone()
        floor = row[0] if row else self._last_seq + 1
        try:
            self._sidecar.write(reserved, floor)
        except OSError as e:
            log.warning("outbox: cannot write %s: %s", self._sidecar.path, e)
            raise  # the reservation did not move: no seq above it is committed until it does
        self._last_sidecar = time.monotonic()

    # ------------------------------------------------------------------ producer side
    def on_committed(self, fn: Callable[[list[int]], None]) -> None:
        """Call ``fn(seqs)`` from the writer thread after rows are durably stored."""
        self._committed_listeners.append(fn)

    def on_dropped(self, fn: Callable[[list[int], str], None]) -> None:
        """Call ``fn(seqs, reason)`` from the writer thread after rows are gone without a PUBACK.

        ``reason`` is ``"capacity"``, ``"expired"``, ``"disk_full"`` or ``"corrupt"``.
        """
        self._dropped_listeners.append(fn)

    def _make_row(self, msg: Outgoing, seq: int, now: float) -> _Row:
        ts = msg.ts if msg.ts is not None else now
        expires = int((ts + msg.ttl) * 1000) if msg.ttl else None
        props = codec.encode(msg.props) if msg.props else None
        prio = class_rank(msg.cls) if msg.cls in MESSAGE_CLASSES else 0
        if msg.raw is not None:
            payload = msg.raw
        else:
            extra = dict(msg.extra) if msg.extra else {}
            if msg.cls != "telemetry":
                extra.setdefault("cls", msg.cls)
            payload = codec.encode_envelope(self.device_id, seq, ts, msg.stream, msg.data, **extra)
        return (seq, prio, msg.topic, payload, int(now * 1000), expires, msg.qos, int(msg.retain), props)

    def put(self, msg: Outgoing) -> int:
        """Queue ``msg`` for the next commit and return its seq. Never blocks on the network or disk."""
        now = self._clock()
        with self._cond:
            if self._closed:
                raise OutboxClosed(f"{self.path}: outbox is closed")
            seq = self._next_seq
            self._next_seq += 1
            row = self._make_row(msg, seq, now)
            self._batch.append(row)
            exp = row[5] if row[5] is not None else row[4] + int(self.max_age * 1000)
            if self._next_expiry_ms is None or exp < self._next_expiry_ms:
                self._next_expiry_ms = exp
            if len(self._batch) == 1 or len(self._batch) >= MAX_BATCH:
                self._cond.notify()
        return seq

    def skip_to(self, seq: int, reason: str = "crash") -> list[int]:
        """Never hand out a seq <= ``seq`` again and report the skipped ones in ``events/dropped``.

        For a client that recorded seqs put just before the last process died, uncommitted (messaging
        uses seqs as message ids): without this, the next put()s would get them again."""
        with self._cond:
            if self._closed:
                raise OutboxClosed(f"{self.path}: outbox is closed")
            skipped = list(range(self._next_seq, seq + 1))
            if skipped:
                self._next_seq = seq + 1
                self._account_locked(reason, skipped)
                self._cond.notify()
        return skipped

    def _account_locked(self, reason: str, seqs: Iterable[int] = (), rngs: Iterable[Iterable[int]] = ()) -> None:
        """Record ``seqs``/``rngs`` as dropped for ``reason`` in an uncommitted events/dropped row (caller
        holds _cond).

        One row per reason is kept open in the memory batch and re-encoded as more seqs join it, so a
        long disk-full episode costs one message, not one per failed commit.
        """
        new = merge_ranges([*ranges(seqs), *rngs])
        if not new:
            return
        now = self._clock()
        prev = self._acct.get(reason)
        seq = None
        if prev is not None:
            idx = next((i for i, r in enumerate(self._batch) if r[0] == prev[0]), None)
            if idx is not None:
                seq, new = prev[0], merge_ranges([*prev[1], *new])
        data = {"ranges": new, "count": sum(b - a + 1 for a, b in new), "reason": reason}
        # reports never expire (an explicit far expiry also keeps them out of the default-TTL scan)
        msg = Outgoing(topic=self._topic(DROPPED_STREAM), stream=DROPPED_STREAM, data=data, cls="event",
                       ttl=REPORT_TTL)
        if seq is not None:
            self._batch[idx] = self._make_row(msg, seq, now)
        else:
            seq = self._next_seq
            self._next_seq += 1
            self._batch.append(self._make_row(msg, seq, now))
        self._acct[reason] = (seq, new)

    # ------------------------------------------------------------------ consumer side
    def begin(self, limit: int, *, live_after: int | None = None, part: str = "all") -> list[Pending]:
        """Claim up to ``limit`` committed, unclaimed rows, highest class first, then by seq.

        ``part`` splits the queue for a throttled drain: ``"live"`` is every alarm/event plus any row
        with seq > ``live_after``; ``"backlog"`` is the rest (telemetry/inference up to ``live_after``).
        """
        if limit <= 0:
            return []
        if part not in ("all", "live", "backlog"):
            raise ValueError(f"part must be 'all', 'live' or 'backlog', got {part!r}")
        boundary = live_after or 0
        out: list[Pending] = []
        with self._lock:
            for p in PRIOS:
                need = limit - len(out)
                if need <= 0:
                    break
                if part == "all" or p >= 2:
                    self._fetch(p, "all", 0, None, need, out)
                elif part == "live":
                    self._fetch(p, "live", boundary, None, need, out)
                else:
                    self._fetch(p, "backlog", 0, boundary, need, out)
            if not out:
                self._data_ready.clear()
            return out

    def _fetch(self, p: int, seg: str, floor: int, ceil: int | None, need: int, out: list[Pending]) -> None:
        key = (p, "all" if p >= 2 else seg)
        cur = max(self._cursor.get(key, 0), floor)
        where = "prio = 0" if p == 0 else f"prio > 0 AND prio = {p}"  # the partial index needs 'prio > 0'
        sql = ("SELECT seq, topic, payload, qos, retain, props, created FROM messages WHERE "
               f"{where} AND seq > ?{' AND seq <= ?' if ceil is not None else ''} ORDER BY seq LIMIT ?")
        while need > 0:
            chunk = need + 32
            args = (cur, ceil, chunk) if ceil is not None else (cur, chunk)
            rows = self._rdb.execute(sql, args).fetchall()
            for seq, topic, payload, qos, retain, props, created in rows:
                cur = seq
                if seq in self._claimed or self._is_acked(seq):
                    continue
                self._claimed[seq] = p
                out.append(Pending(seq, p, self._topic_names.get(topic) or self._topic_name(topic), payload,
                                   qos, bool(retain), codec.decode(props) if props else None, created / 1000.0))
                need -= 1
                if need == 0:
                    break
            if len(rows) < chunk:
                break
        self._cursor[key] = cur

    def _topic_name(self, tid: int) -> str:
        row = self._rdb.execute("SELECT topic FROM topics WHERE id=?", (tid,)).fetchone()
        name = str(row[0]) if row else ""
        self._topic_names[tid] = name
        return name

    def accept(self, seqs: Iterable[int]) -> None:
        """The broker acknowledged these: delete them in the next commit."""
        with self._cond:
            wake = not self._acks and not self._batch
            self._acks.extend(seqs)
            if wake:
                self._cond.notify()

    def release(self, seqs: Iterable[int]) -> None:
        """Return claimed rows to the queue (e.g. the connection dropped before PUBACK)."""
        with self._lock:
            for s in seqs:
                p = self._claimed.pop(s, None)
                if p is None:
                    continue
                for key, cur in self._cursor.items():
                    if key[0] == p and cur >= s:
                        self._cursor[key] = s - 1
        self._data_ready.set()

    def wait(self, timeout: float) -> bool:
        """Wait until committed rows may be available."""
        return self._data_ready.wait(timeout)

    def count(self, name: str, n: int = 1) -> None:
        with self._cond:
            self.counters[name] = self.counters.get(name, 0) + n

    @property
    def last_assigned(self) -> int:
        """The highest seq handed out by put() (committed or not)."""
        with self._cond:
            return self._next_seq - 1

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._batch or self._acks or self._closed or self._flush_req > self._flush_done
                           or time.monotonic() >= self._next_maint or self._purge_acked):
                    self._cond.wait(max(0.01, min(1.0, self._next_maint - time.monotonic())))
                    self.heartbeat()
                # group commit: let more readings and acks join, bounded by commit_interval (acks alone
                # wait ack_interval: a late ack costs at most a duplicate after a crash)
                acks_only = not self._batch
                start = time.monotonic()
                deadline = start + (self.ack_interval if acks_only else self.commit_interval)
                while not self._closed and self._flush_req <= self._flush_done and len(self._batch) < MAX_BATCH:
                    if acks_only and self._batch:
                        acks_only = False
                        deadline = min(deadline, time.monotonic() + self.commit_interval)
                    left = deadline - time.monotonic()
                    if left <= 0 or not (self._batch or self._acks):
                        break
                    self._cond.wait(left)
                closing = self._closed
                flush_target = self._flush_req
            maint = time.monotonic() >= self._next_maint
            ok = self._cycle(maint)
            self.heartbeat()
            with self._cond:
                if ok or closing:
                    self._flush_done = max(self._flush_done, flush_target)
                self._cond.notify_all()
                if closing and (not (self._batch or self._acks) or not ok):
                    return

    def _cycle(self, maint: bool) -> bool:
        """One commit: maintenance (eviction/expiry) + the memory batch + acks, in one transaction."""
        if maint:
            self._next_maint = time.monotonic() + self.maintenance_interval
            try:
                self._maintain()
            except sqlite3.Error as e:
                log.warning("outbox: maintenance failed: %s", e)
        with self._cond:
            # new victims get their events/dropped report now, in the same transaction as their deletion;
            # victims of a failed commit were reported already (their report is back in the batch)
            victims: dict[str, list[int]] = {r: list(s) for r, s in self._evict_retry.items() if s}
            for reason, seqs in self._evict_pending.items():
                if seqs:
                    self._account_locked(reason, seqs)
                    victims.setdefault(reason, []).extend(seqs)
            self._evict_pending = {}
            self._evict_retry = {}
            for reason, (seqs, rngs) in self._fold_pending.items():
                # stored reports that were never sent, replaced by one report covering them and their ranges
                self._account_locked(reason, seqs, rngs)
                victims.setdefault("_folded", []).extend(seqs)
            self._fold_pending = {}
            if self._mem_dropped:
                self._account_locked("disk_full", self._mem_dropped)
                self._mem_dropped = []
            batch, self._batch = self._batch, []
            self._committing = len(batch)  # still counted as pending while the transaction runs
            acks, self._acks = self._acks, []
            n_enq = len(batch)
            n_evicted = sum(len(v) for k, v in victims.items() if k not in ("expired", "_folded"))
            n_expired = len(victims.get("expired", ()))
            after = dict(self.counters)
            after["enqueued"] += n_enq
            after["acked"] += len(acks)
            after["evicted"] += n_evicted
            after["expired"] += n_expired
            counters_snapshot = [(f"c.{k}", v) for k, v in after.items()]
        if not (batch or acks or victims or self._purge_acked):
            return True
        last_seq = max(self._last_seq, max((r[0] for r in batch), default=0))
        try:
            if last_seq > self._sidecar.reserved:
                self._write_sidecar(last_seq + SEQ_RESERVE)
            deleted, n_acked, acked, acked_rows = self._transaction(batch, acks, victims, last_seq,
                                                                    counters_snapshot)
            with self._lock:
                self._last_seq = last_seq
                self._pending += len(batch) - deleted - n_acked
                for s in acks:
                    self._claimed.pop(s, None)
                self._set_acked(acked, acked_rows)
                if not acked:
                    self._purge_acked = False
        except (sqlite3.Error, OSError) as e:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            self._store_failed(batch, acks, victims, e)  # puts the batch back into _batch
            with self._cond:
                self._committing = 0
            return False
        with self._cond:
            self._committing = 0
            self.counters["enqueued"] += n_enq
            self.counters["acked"] += len(acks)
            self.counters["evicted"] += n_evicted
            self.counters["expired"] += n_expired
            committed = {r[0] for r in batch}
            for reason in [k for k, (s, _) in self._acct.items() if s in committed]:
                del self._acct[reason]
        if self._disk_full:
            self._disk_full = False
            log.warning("outbox: writes succeed again")
        rid = self._topic_ids.get(self._topic(DROPPED_STREAM))
        self._report_rows += sum(1 for r in batch if r[2] == self._topic(DROPPED_STREAM)) if rid else 0
        for reason, seqs in victims.items():
            if reason == "_folded":
                self._report_rows = max(0, self._report_rows - len(seqs))
                continue
            log.warning("outbox: dropped %d message(s) (%s), reported on %s", len(seqs), reason, DROPPED_STREAM)
            for fn in self._dropped_listeners:
                try:
                    fn(sorted(seqs), reason)
                except Exception:
                    log.exception("outbox dropped listener failed")
        if batch:
            self._data_ready.set()
            seqs = [r[0] for r in batch]
            for fn in self._committed_listeners:
                try:
                    fn(seqs)
                except Exception:
                    log.exception("outbox committed listener failed")
        return True

    def _transaction(self, batch: list[_Row], acks: list[int], victims: dict[str, list[int]], last_seq: int,
                     counters: list[tuple[str, int]]) -> tuple[int, int, list[list[int]], int]:
        """Insert the batch, delete victims, record acks; returns (victims deleted, rows newly acked, acked
        ranges still stored, acked rows still stored)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        new_topics: list[str] = []
        rows = []
        for r in batch:
            tid = self._topic_ids.get(r[2])
            if tid is None:
                tid = db.execute("INSERT INTO topics (topic) VALUES (?)", (r[2],)).lastrowid or 0
                self._topic_ids[r[2]] = tid
                self._topic_names[tid] = r[2]
                new_topics.append(r[2])
            rows.append((r[0], r[1], tid, *r[3:]))
        try:
            deleted = 0
            gone = {s for v in victims.values() for s in v}
            if gone:
                deleted = _delete_ranges(db, ranges(gone))
            new_acks = [s for s in sorted(set(acks)) if s not in gone and not self._is_acked(s)]
            acked = merge_ranges([*self._acked, *ranges(new_acks)])
            acked_rows = self._acked_rows + len(new_acks)
            if acked_rows and self._pending - deleted - len(new_acks) <= 0:
                # every stored row is acked: empty the table (pages freed, not rewritten). Verified
                # first: a miscount here must never delete an un-acked row.
                total = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
                in_acked = _count_in_ranges(db, acked)
                if total == in_acked:
                    db.execute("DELETE FROM messages")
                else:
                    log.error("outbox: pending count off (%d stored, %d acked); deleting acked rows only",
                              total, in_acked)
                    _delete_ranges(db, acked)
                    self._pending = total - in_acked + deleted + len(new_acks)
                acked, acked_rows = [], 0
            elif acked_rows > ACKED_LIMIT or (self._purge_acked and acked_rows):
                _delete_ranges(db, acked)
                acked, acked_rows = [], 0
            if rows:
                db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?)", rows)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?,?)",
                           [("last_seq", last_seq), ("acked", codec.encode(acked)), *counters])
            db.execute("COMMIT")
        except BaseException:
            for t in new_topics:
                self._topic_names.pop(self._topic_ids.pop(t, -1), None)
            raise
        return deleted, len(new_acks), acked, acked_rows

    def _store_failed(self, batch: list[_Row], acks: list[int], victims: dict[str, list[int]],
                      err: BaseException) -> None:
        """Keep what could not be stored in memory (bounded) and retry; on disk full, make room."""
        full = _is_disk_full(err)
        self._failed_bytes = sum(len(r[3]) + 32 for r in batch)
        with self._cond:
            self.counters["store_errors"] += 1
            self._batch[:0] = batch
            self._acks[:0] = acks
            for reason, seqs in victims.items():  # retried with their report (back in the batch)
                self._evict_retry.setdefault(reason, []).extend(seqs)
            overflow = len(self._batch) - self.memory_buffer
            if overflow > 0:
                keep = {s for s, _ in self._acct.values()}  # reports are never dropped from memory
                order = sorted((r[1], r[0]) for r in self._batch if r[0] not in keep)
                gone = {seq for _, seq in order[:overflow]}
                self._batch = [r for r in self._batch if r[0] not in gone]
                self._mem_dropped.extend(sorted(gone))
                self.counters["dropped_memory"] += len(gone)
        if full:
            if not self._disk_full:
                log.error("outbox: disk full (%s): keeping up to %d messages in memory, evicting to make room",
                          err, self.memory_buffer)
            self._disk_full = True
            self._drop_reserve()
            self._next_maint = 0.0  # evict at once
        else:
            log.error("outbox: cannot store %d message(s): %s; kept in memory, retrying", len(batch), err)
        time.sleep(min(0.5, max(0.05, self.commit_interval * 10)))

    # ------------------------------------------------------------------ maintenance
    def _used_bytes(self) -> tuple[int, int]:
        """(bytes used by live pages, bytes of free pages inside the file)."""
        page = self._db.execute("PRAGMA page_size").fetchone()[0]
        count = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (count - free) * page, free * page

    def _maintain(self) -> None:
        """Expiry, capacity (max_bytes and free disk), reserve file, sidecar floor. Writer thread only."""
        now_ms = int(self._clock() * 1000)
        expired: list[int] = []
        with self._lock:
            claimed = set(self._claimed)
        with self._cond:  # rows already chosen (a failed commit retries them) are not chosen twice
            for group in (self._evict_pending, self._evict_retry):
                for seqs in group.values():
                    claimed.update(seqs)
        rid = self._topic_ids.get(self._topic(DROPPED_STREAM), -1)
        if self._report_rows >= 64:
            self._fold_reports(rid, claimed)
        claimed = claimed | {s for seqs, _ in self._fold_pending.values() for s in seqs}
        if self._next_expiry_ms is not None and now_ms >= self._next_expiry_ms:
            expired = self._select_expired(now_ms, claimed, rid)
            self._next_expiry_ms = None  # recomputed below
        used, inner_free = self._used_bytes()
        pending = max(self._pending + self._acked_rows, 1)  # rows stored
        try:
            st = os.statvfs(self.path.parent)
            disk_free = st.f_bavail * st.f_frsize
        except OSError:
            disk_free = 1 << 62
        reserve_missing = 0 if self._reserve_path.exists() else self.reserve_bytes
        disk_cap = used + inner_free + disk_free - self.min_free - reserve_missing
        cap = min(self.max_bytes, disk_cap)
        reason = "capacity" if cap == self.max_bytes else "disk_full"
        victims: list[int] = []
        if self._disk_full and self._acked_rows:
            self._purge_acked = True
        if self._disk_full:
            # the disk refused a write: free about twice what the failed commit needed (at least 64 KiB),
            # lowest class first; the next failure frees more. Small steps: alarms are the last to go.
            per_row = max(used / pending, 64.0)
            need = max(64 * 1024, 2 * self._failed_bytes)
            victims = self._select_victims(math.ceil(need / per_row), claimed | set(expired), rid)
            reason = "disk_full"
        elif used > cap and self._acked_rows:
            self._purge_acked = True  # acked rows still stored go first: they cost nothing to drop
        elif used > cap:
            per_row = max(used / pending, 64.0)
            target = int(cap * 0.9)
            victims = self._select_victims(math.ceil((used - target) / per_row), claimed | set(expired), rid)
        with self._cond:
            if expired:
                self._evict_pending.setdefault("expired", []).extend(expired)
            if victims:
                self._evict_pending.setdefault(reason, []).extend(victims)
        if self._next_expiry_ms is None:
            self._next_expiry_ms = self._min_expiry_after(now_ms, set(expired))
        if not self._disk_full and disk_free > 2 * self.reserve_bytes + self.min_free:
            self._ensure_reserve()
        if time.monotonic() - self._last_sidecar > 60.0:
            self._last_sidecar = time.monotonic()  # at most one attempt a minute, even when it fails
            with contextlib.suppress(OSError):
                self._write_sidecar(max(self._sidecar.reserved, self._last_seq + 1))

    def _fold_reports(self, rid: int, claimed: set[int]) -> None:
        """Many stored events/dropped rows (a long outage): fold them into one per reason, so accounting
        itself stays bounded. Reports are never evicted or expired (that would lose their ranges)."""
        rows = self._db.execute("SELECT seq, payload FROM messages WHERE topic = ?", (rid,)).fetchall()
        self._report_rows = len(rows)
        if len(rows) < 64:
            return
        with self._cond:
            for seq, payload in rows:
                if seq in claimed or self._is_acked(seq):
                    continue
                try:
                    data = codec.decode_envelope(payload)["data"]
                    reason, rngs = str(data["reason"]), data["ranges"]
                except (KeyError, TypeError, ValueError):
                    continue
                seqs, acc = self._fold_pending.setdefault(reason, ([], []))
                seqs.append(seq)
                acc.extend(rngs)

    def _select_expired(self, now_ms: int, claimed: set[int], rid: int) -> list[int]:
        max_age_ms = int(self.max_age * 1000)
        out: list[int] = []
        cur = 0
        while True:  # default-TTL rows expire in seq order: stop at the first live one
            rows = self._db.execute("SELECT seq, created, topic FROM messages WHERE expires IS NULL AND seq > ? "
                                    "ORDER BY seq LIMIT 1000", (cur,)).fetchall()
            stop = False
            for seq, created, topic in rows:
                cur = seq
                if topic == rid:
                    continue
                if created + max_age_ms > now_ms:
                    stop = True
                    break
                if seq not in claimed and not self._is_acked(seq):
                    out.append(seq)
            if stop or len(rows) < 1000:
                break
        out += [s for (s, t) in self._db.execute("SELECT seq, topic FROM messages WHERE expires IS NOT NULL "
                                                 "AND expires <= ?", (now_ms,))
                if s not in claimed and t != rid and not self._is_acked(s)]
        return out

    def _min_expiry_after(self, now_ms: int, gone: set[int]) -> int | None:
        max_age_ms = int(self.max_age * 1000)
        a = None
        for seq, created in self._db.execute("SELECT seq, created FROM messages WHERE expires IS NULL "
                                             "ORDER BY seq"):
            if seq not in gone:
                a = created + max_age_ms
                break
        b = self._db.execute("SELECT MIN(expires) FROM messages WHERE expires IS NOT NULL AND expires > ?",
                             (now_ms,)).fetchone()[0]
        cands = [x for x in (a, b) if x is not None]
        return min(cands) if cands else None

    def _select_victims(self, n: int, exclude: set[int], rid: int) -> list[int]:
        """The ``n`` rows to evict: lowest class first, oldest first; ``exclude`` holds the claimed (in
        flight) rows and those already chosen."""
        out: list[int] = []
        for p in reversed(PRIOS):
            if len(out) >= n:
                break
            where = "prio = 0" if p == 0 else f"prio > 0 AND prio = {p}"
            for (seq, topic) in self._db.execute(f"SELECT seq, topic FROM messages WHERE {where} ORDER BY seq "
                                                 "LIMIT ?", (n - len(out) + len(exclude) + self._report_rows,)):
                if seq in exclude or topic == rid or self._is_acked(seq):
                    continue
                out.append(seq)
                if len(out) >= n:
                    break
        return out

    def _ensure_reserve(self) -> None:
        """A preallocated file whose deletion gives eviction room to write when the disk is full."""
        if self.reserve_bytes <= 0 or self._reserve_path.exists():
            return
        try:
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError as e:
            log.debug("outbox: no reserve file: %s", e)
            with contextlib.suppress(OSError):
                self._reserve_path.unlink()

    def _drop_reserve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._reserve_path.unlink()
            log.warning("outbox: released the %d-byte disk reserve", self.reserve_bytes)

    # ------------------------------------------------------------------ lifecycle and stats
    def flush(self, timeout: float = 10.0) -> bool:
        """Commit everything put so far; return False on timeout (e.g. the disk refuses writes)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_req += 1
            target = self._flush_req
            self._cond.notify_all()
            while self._flush_done < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._writer.is_alive():
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._writer.join(timeout)
        with self._lock:
            self._rdb.close()
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                log.warning("outbox: checkpoint at close failed: %s", e)
            self._db.close()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def pending(self) -> int:
        """Messages not yet acked: stored ones plus those still waiting in memory for their commit (so
        "pending == 0" really means drained, also right after a burst of put())."""
        with self._cond:  # a batch moves _batch -> _committing -> _pending: never counted as zero
            return self._pending + len(self._batch) + self._committing

    def stats(self) -> OutboxStats:
        with self._lock:
            st = _stats(self._rdb, self.path, self._clock())
        with self._cond:
            st.counters = dict(self.counters)
        st.max_bytes = self.max_bytes
        return st

    def status(self) -> dict[str, Any]:
        """Cheap figures for the retained status message (no table scan)."""
        with self._lock:
            row = _oldest(self._rdb, self._acked)
        with self._cond:
            c = dict(self.counters)
            mem = len(self._batch)
        pending = self.pending
        return {"pending": pending, "backlog": pending, "last_seq": self._last_seq,
                "oldest_age_s": round(max(0.0, self._clock() - row[0] / 1000.0), 3) if row else 0.0,
                "memory": mem, "disk_full": self._disk_full, **c}


def _meta_ranges(db: sqlite3.Connection, key: str) -> list[list[int]]:
    try:
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return merge_ranges(codec.decode(row[0])) if row and isinstance(row[0], bytes) else []
    except (sqlite3.Error, ValueError, TypeError):
        return []


def _range_end(rngs: list[list[int]], starts: list[int], seq: int) -> int | None:
    """The last seq of the range in ``rngs`` (sorted, disjoint; ``starts`` their first seqs) that holds
    ``seq``, or None."""
    i = bisect.bisect_right(starts, seq) - 1
    return rngs[i][1] if i >= 0 and rngs[i][1] >= seq else None


def _delete_ranges(db: sqlite3.Connection, rngs: Iterable[Sequence[int]]) -> int:
    """Delete the rows whose seq lies in any ``[first, last]`` range; how many were deleted."""
    cur = db.executemany("DELETE FROM messages WHERE seq BETWEEN ? AND ?", [(a, b) for a, b in rngs])
    return max(cur.rowcount, 0)


def _count_in_ranges(db: sqlite3.Connection, rngs: Iterable[Sequence[int]]) -> int:
    return sum(db.execute("SELECT COUNT(*) FROM messages WHERE seq BETWEEN ? AND ?", (a, b)).fetchone()[0]
               for a, b in rngs)


def _oldest(db: sqlite3.Connection, acked: list[list[int]]) -> tuple[int] | None:
    """``(created,)`` of the lowest stored seq that is not acked, or None."""
    starts = [r[0] for r in acked]
    cur = 0
    while True:
        row = db.execute("SELECT seq, created FROM messages WHERE seq > ? ORDER BY seq LIMIT 1", (cur,)).fetchone()
        if row is None:
            return None
        hit = _range_end(acked, starts, row[0])
        if hit is None:
            return (row[1],)
        cur = hit


def _stats(db: sqlite3.Connection, path: Path, now: float) -> OutboxStats:
    acked = _meta_ranges(db, "acked")
    pending = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    by_prio = dict(db.execute("SELECT prio, COUNT(*) FROM messages GROUP BY prio").fetchall())
    for a, b in acked:  # stored but acked: not pending
        for p, n in db.execute("SELECT prio, COUNT(*) FROM messages WHERE seq BETWEEN ? AND ? GROUP BY prio",
                               (a, b)).fetchall():
            by_prio[p] -= n
            pending -= n
    row = _oldest(db, acked)
    by_class = {MESSAGE_CLASSES[p]: n for p, n in by_prio.items() if 0 <= p < len(MESSAGE_CLASSES) and n}
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    counters = {k: int(meta.get(f"c.{k}", 0)) for k in COUNTERS}
    size = 0
    for suffix in ("", "-wal"):
        try:
            size += os.path.getsize(f"{path}{suffix}")
        except OSError:
            pass
    page = db.execute("PRAGMA page_size").fetchone()[0]
    used = (db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]) * page
    created = row[0] / 1000.0 if row and isinstance(row[0], int) else (row[0] if row else 0.0)
    return OutboxStats(pending=pending, last_seq=int(meta.get("last_seq", 0)),
                       oldest_age_s=max(0.0, now - created) if row else 0.0, db_bytes=size,
                       counters=counters, by_class=by_class, used_bytes=used)


def read_stats(path: str | os.PathLike[str]) -> OutboxStats:
    """Stats of an outbox file, read-only (safe while the agent runs)."""
    p = Path(path)
    if not p.exists():
        raise OutboxError(f"{p}: no outbox database here (has the agent run with this storage.dir?)")
    db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5)
    try:
        return _stats(db, p, time.time())
    except sqlite3.Error as e:
        raise OutboxError(f"{p}: cannot read outbox: {e}") from e
    finally:
        db.close()


def integrity_check(path: str | os.PathLike[str]) -> str:
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=5)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()
