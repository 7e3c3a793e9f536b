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
  "claimed" and not handed out again until ``release()``d or deleted.
* ``begin()`` orders by class (alarm > event > inference > telemetry), then seq.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import codec
from edge_agent.config import MESSAGE_CLASSES, class_rank
from edge_agent.errors import OutboxClosed, OutboxError

log = logging.getLogger("edge_agent.outbox")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq      INTEGER PRIMARY KEY,
    prio     INTEGER NOT NULL,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    created  REAL    NOT NULL,
    expires  REAL    NOT NULL,
    qos      INTEGER NOT NULL DEFAULT 1,
    retain   INTEGER NOT NULL DEFAULT 0,
    props    BLOB
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (prio DESC, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""

COUNTERS = ("enqueued", "sent", "acked", "evicted", "expired", "reconnects", "dropped_memory",
            "store_errors", "corrupt_recovered")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to store and forward.

    ``data`` goes into a msgpack envelope built with the assigned seq, unless ``raw`` is given (e.g. a
    JSON command reply), which is stored and sent as is.
    """

    topic: str
    stream: str
    data: Any = None
    cls: str = "telemetry"
    ts: float | None = None
    ttl: float | None = None
    qos: int = 1
    retain: bool = False
    props: dict[str, Any] | None = None
    raw: bytes | None = None
    extra: dict[str, Any] | None = None


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

    def as_dict(self) -> dict[str, Any]:
        return {"pending": self.pending, "last_seq": self.last_seq,
                "oldest_age_s": round(self.oldest_age_s, 3), "db_bytes": self.db_bytes,
                "by_class": self.by_class, **self.counters}


_Row = tuple[int, int, str, bytes, float, float, int, int, bytes | None]


class Outbox:
    """See module docstring. Thread-safe; one writer thread owns all writes."""

    def __init__(self, path: str | os.PathLike[str], device_id: str, *, max_age: float = 7 * 86400.0,
                 max_bytes: int = 256 * 1024 * 1024, commit_interval: float = 0.05, sync: str = "normal",
                 memory_buffer: int = 10000, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.device_id = device_id
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.commit_interval = commit_interval
        self.sync = sync
        self.memory_buffer = memory_buffer
        self._clock = clock
        self._lock = threading.Lock()  # guards the connection and the claimed set
        self._cond = threading.Condition(threading.Lock())  # guards the memory batch and acks
        self._batch: list[_Row] = []
        self._acks: list[int] = []
        self._claimed: set[int] = set()
        self._data_ready = threading.Event()
        self._committed_listeners: list[Callable[[list[int]], None]] = []
        self._closed = False
        self._flush_req = 0
        self._flush_done = 0
        self.heartbeat: Callable[[], None] = lambda: None
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()
        self._last_seq = self._meta_int("last_seq")
        for name in COUNTERS:
            self.counters[name] = self._meta_int(f"c.{name}")
        self._pending = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        self._next_seq = self._last_seq + 1
        self._writer = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ open
    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
            db.execute("PRAGMA journal_size_limit=8388608")
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise OutboxError(f"{self.path}: cannot open outbox database: {e}") from e
        return db

    def _meta_int(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ producer side
    def on_committed(self, fn: Callable[[list[int]], None]) -> None:
        """Call ``fn(seqs)`` from the writer thread after rows are durably stored."""
        self._committed_listeners.append(fn)

    def put(self, msg: Outgoing) -> int:
        """Queue ``msg`` for the next commit and return its seq. Never blocks on the network."""
        now = self._clock()
        ts = msg.ts if msg.ts is not None else now
        ttl = msg.ttl if msg.ttl else self.max_age
        props = codec.encode(msg.props) if msg.props else None
        prio = class_rank(msg.cls) if msg.cls in MESSAGE_CLASSES else 0
        with self._cond:
            if self._closed:
                raise OutboxClosed(f"{self.path}: outbox is closed")
            seq = self._next_seq
            self._next_seq += 1
            if msg.raw is not None:
                payload = msg.raw
            else:
                extra = dict(msg.extra) if msg.extra else {}
                if msg.cls != "telemetry":
                    extra.setdefault("cls", msg.cls)
                payload = codec.encode_envelope(self.device_id, seq, ts, msg.stream, msg.data, **extra)
            self._batch.append((seq, prio, msg.topic, payload, now, ts + ttl, msg.qos, int(msg.retain), props))
            if len(self._batch) == 1 or len(self._batch) >= 2000:
                self._cond.notify()
        return seq

    # ------------------------------------------------------------------ consumer side
    def begin(self, limit: int) -> list[Pending]:
        """Claim up to ``limit`` committed, unclaimed rows, highest class first, then by seq."""
        if limit <= 0:
            return []
        with self._lock:
            n = limit + len(self._claimed)
            rows = self._db.execute(
                "SELECT seq, prio, topic, payload, qos, retain, props, created FROM messages "
                "ORDER BY prio DESC, seq LIMIT ?", (n,)).fetchall()
            out: list[Pending] = []
            for seq, prio, topic, payload, qos, retain, props, created in rows:
                if seq in self._claimed:
                    continue
                self._claimed.add(seq)
                out.append(Pending(seq, prio, topic, payload, qos, bool(retain),
                                   codec.decode(props) if props else None, created))
                if len(out) >= limit:
                    break
            if not out:
                self._data_ready.clear()
            return out

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
            self._claimed.difference_update(seqs)
        self._data_ready.set()

    def wait(self, timeout: float) -> bool:
        """Wait until committed rows may be available."""
        return self._data_ready.wait(timeout)

    def count(self, name: str, n: int = 1) -> None:
        with self._cond:
            self.counters[name] = self.counters.get(name, 0) + n

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._batch or self._acks or self._closed or self._flush_req > self._flush_done):
                    self._cond.wait(1.0)
                    self.heartbeat()
                # group commit: let more readings and acks join, bounded by commit_interval
                deadline = time.monotonic() + self.commit_interval
                while not self._closed and self._flush_req <= self._flush_done and len(self._batch) < 2000:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._batch = self._batch, []
                acks, self._acks = self._acks, []
                closing = self._closed
                flush_target = self._flush_req
            if batch or acks:
                self._commit(batch, acks)
            self.heartbeat()
            with self._cond:
                self._flush_done = flush_target
                self._cond.notify_all()
            if closing and not self._batch and not self._acks:
                return

    def _commit(self, batch: list[_Row], acks: list[int]) -> None:
        counters_snapshot: list[tuple[str, int]]
        with self._cond:
            self.counters["enqueued"] += len(batch)
            self.counters["acked"] += len(acks)
            counters_snapshot = [(f"c.{k}", v) for k, v in self.counters.items()]
        last_seq = batch[-1][0] if batch else self._last_seq
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if batch:
                    self._db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?)", batch)
                deleted = 0
                if acks:
                    cur = self._db.executemany("DELETE FROM messages WHERE seq=?", ((s,) for s in acks))
                    deleted = cur.rowcount
                self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?,?)",
                                     [("last_seq", last_seq), *counters_snapshot])
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._db.execute("ROLLBACK") if self._db.in_transaction else None
                self._store_failed(batch, acks, e)
                return
            self._last_seq = last_seq
            self._pending += len(batch) - max(deleted, 0)
            self._claimed.difference_update(acks)
        if batch:
            self._data_ready.set()
            seqs = [r[0] for r in batch]
            for fn in self._committed_listeners:
                try:
                    fn(seqs)
                except Exception:
                    log.exception("outbox committed listener failed")

    def _store_failed(self, batch: list[_Row], acks: list[int], err: sqlite3.Error) -> None:
        """Keep what could not be stored in memory (bounded) and retry with the next commit."""
        with self._cond:
            self.counters["store_errors"] += 1
            self._batch[:0] = batch
            self._acks[:0] = acks
            overflow = len(self._batch) - self.memory_buffer
            if overflow > 0:
                dropped = self._batch[:overflow]
                del self._batch[:overflow]
                self.counters["dropped_memory"] += len(dropped)
        log.error("outbox: cannot store %d message(s): %s; kept in memory, retrying", len(batch), err)
        time.sleep(min(1.0, self.commit_interval * 10))

    # ------------------------------------------------------------------ lifecycle and stats
    def flush(self, timeout: float = 10.0) -> bool:
        """Commit everything put so far; return False on timeout."""
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
        return self._pending

    def stats(self) -> OutboxStats:
        with self._lock:
            return _stats(self._db, self.path, self._clock())


def _stats(db: sqlite3.Connection, path: Path, now: float) -> OutboxStats:
    pending = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    row = db.execute("SELECT created FROM messages ORDER BY seq LIMIT 1").fetchone()
    by_class = {MESSAGE_CLASSES[p]: n for p, n in
                db.execute("SELECT prio, COUNT(*) FROM messages GROUP BY prio").fetchall()
                if 0 <= p < len(MESSAGE_CLASSES)}
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    counters = {k: int(meta.get(f"c.{k}", 0)) for k in COUNTERS}
    size = 0
    for suffix in ("", "-wal"):
        try:
            size += os.path.getsize(f"{path}{suffix}")
        except OSError:
            pass
    return OutboxStats(pending=pending, last_seq=int(meta.get("last_seq", 0)),
                       oldest_age_s=max(0.0, now - row[0]) if row else 0.0, db_bytes=size,
                       counters=counters, by_class=by_class)


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
