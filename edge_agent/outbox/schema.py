"""The queue database: DDL, schema version, opening a connection, and the small queries every part uses."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from edge_agent import codec
from edge_agent.message import MESSAGE_CLASSES
from edge_agent.outbox.rangeset import merge_ranges

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

# persisted as meta "c.<name>"
COUNTERS = ("enqueued", "sent", "acked", "evicted", "expired", "reconnects", "dropped_memory",
            "store_errors", "corrupt_recovered", "rejected")

PRIOS = tuple(range(len(MESSAGE_CLASSES) - 1, -1, -1))  # the prio column's values, highest class first

# A row before it is stored: (seq, prio, topic, payload, created_ms, expires_ms | None, qos, retain, props)
Row = tuple[int, int, str, bytes, int, int | None, int, int, bytes | None]


def open_db(path: Path, sync: str) -> sqlite3.Connection:
    """Open (creating or migrating) the queue database at ``path``; sqlite3 errors propagate."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        db.execute("PRAGMA journal_size_limit=8388608")  # continuity.WAL_LIMIT
        # Debian builds SQLite with SECURE_DELETE on: zeroing every deleted row would double the
        # bytes written per message. FAST only zeroes what costs no extra I/O.
        db.execute("PRAGMA secure_delete=FAST")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        cols = [r[1] for r in db.execute("PRAGMA table_info(messages)")]
        if cols and version < SCHEMA_VERSION:
            _migrate_v1(db)
        if version != SCHEMA_VERSION or not cols:  # no write at all when nothing changes (disk may be full)
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


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


def meta_int(db: sqlite3.Connection, key: str) -> int:
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return int(row[0]) if row else 0


def meta_ranges(db: sqlite3.Connection, key: str) -> list[list[int]]:
    try:
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return merge_ranges(codec.decode(row[0])) if row and isinstance(row[0], bytes) else []
    except (sqlite3.Error, ValueError, TypeError):
        return []


def delete_ranges(db: sqlite3.Connection, rngs: Iterable[Sequence[int]]) -> int:
    """Delete the rows whose seq lies in any ``[first, last]`` range; how many were deleted."""
    cur = db.executemany("DELETE FROM messages WHERE seq BETWEEN ? AND ?", [(a, b) for a, b in rngs])
    return max(cur.rowcount, 0)


def count_in_ranges(db: sqlite3.Connection, rngs: Iterable[Sequence[int]]) -> int:
    return sum(db.execute("SELECT COUNT(*) FROM messages WHERE seq BETWEEN ? AND ?", (a, b)).fetchone()[0]
               for a, b in rngs)


class Topics:
    """Topic name <-> id of the ``topics`` table. The writer adds names (and takes them back when their
    transaction fails); readers look names up. Plain dicts: each single get/set is atomic in CPython."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: dict[int, str] = {}

    def load(self, db: sqlite3.Connection) -> None:
        for i, t in db.execute("SELECT id, topic FROM topics"):
            self.remember(i, t)

    def remember(self, tid: int, name: str) -> None:
        self.ids[name] = tid
        self.names[tid] = name

    def reset(self) -> None:
        """Forget every name (in place: readers hold these dicts)."""
        self.ids.clear()
        self.names.clear()

    def forget(self, name: str) -> None:
        self.names.pop(self.ids.pop(name, -1), None)
