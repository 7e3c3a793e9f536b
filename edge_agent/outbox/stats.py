"""Outbox figures: :class:`OutboxStats` from a connection, and :func:`read_stats`, the out-of-process
read-only reader behind ``edge-agent outbox stats`` (safe while the agent runs)."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import OutboxError
from edge_agent.message import MESSAGE_CLASSES
from edge_agent.outbox.ageclock import reader_now
from edge_agent.outbox.rangeset import range_end
from edge_agent.outbox.schema import COUNTERS, meta_ranges

STALE_AFTER = 15.0  # s; a running writer records its commit time at least every 10 s, even when idle


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
    as_of: float = 0.0  # epoch s of the last commit the figures come from (0: unknown)
    age_s: float = 0.0  # how old they are when read

    @property
    def stale(self) -> bool:
        """The agent has not committed for longer than it would even when idle (disk full, stopped,
        stuck): the figures may lag behind its real ones."""
        return self.as_of > 0 and self.age_s > STALE_AFTER

    def as_dict(self) -> dict[str, Any]:
        return {"as_of": round(self.as_of, 3), "age_s": round(self.age_s, 3), "stale": self.stale,
                "pending": self.pending, "backlog": self.pending, "last_seq": self.last_seq,
                "oldest_age_s": round(self.oldest_age_s, 3), "db_bytes": self.db_bytes,
                "used_bytes": self.used_bytes, **({"max_bytes": self.max_bytes} if self.max_bytes else {}),
                "by_class": self.by_class, **self.counters}


def oldest(db: sqlite3.Connection, acked: list[list[int]]) -> tuple[int] | None:
    """``(created,)`` of the lowest stored seq that is not acked, or None."""
    starts = [r[0] for r in acked]
    cur = 0
    while True:
        row = db.execute("SELECT seq, created FROM messages WHERE seq > ? ORDER BY seq LIMIT 1", (cur,)).fetchone()
        if row is None:
            return None
        hit = range_end(acked, starts, row[0])
        if hit is None:
            return (row[1],)
        cur = hit


def _pending_by_class(db: sqlite3.Connection, acked: list[list[int]]) -> tuple[int, dict[str, int]]:
    pending = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    by_prio = dict(db.execute("SELECT prio, COUNT(*) FROM messages GROUP BY prio").fetchall())
    for a, b in acked:  # stored but acked: not pending
        for p, n in db.execute("SELECT prio, COUNT(*) FROM messages WHERE seq BETWEEN ? AND ? GROUP BY prio",
                               (a, b)).fetchall():
            by_prio[p] -= n
            pending -= n
    return pending, {MESSAGE_CLASSES[p]: n for p, n in by_prio.items() if 0 <= p < len(MESSAGE_CLASSES) and n}


def _file_bytes(path: Path) -> int:
    size = 0
    for suffix in ("", "-wal"):
        try:
            size += os.path.getsize(f"{path}{suffix}")
        except OSError:
            pass
    return size


def stats_of(db: sqlite3.Connection, path: Path, now: float) -> OutboxStats:
    """The figures of the outbox database behind ``db`` (a reader connection); ``now`` on the age clock."""
    acked = meta_ranges(db, "acked")
    pending, by_class = _pending_by_class(db, acked)
    row = oldest(db, acked)
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    counters = {k: int(meta.get(f"c.{k}", 0)) for k in COUNTERS}
    page = db.execute("PRAGMA page_size").fetchone()[0]
    used = (db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]) * page
    created = row[0] / 1000.0 if row and isinstance(row[0], int) else (row[0] if row else 0.0)
    as_of = int(meta.get("committed_ms", 0)) / 1000.0
    return OutboxStats(pending=pending, last_seq=int(meta.get("last_seq", 0)),
                       oldest_age_s=max(0.0, now - created) if row else 0.0, db_bytes=_file_bytes(path),
                       counters=counters, by_class=by_class, used_bytes=used, as_of=as_of,
                       age_s=max(0.0, time.time() - as_of) if as_of else 0.0)  # both wall clock


def read_stats(path: str | os.PathLike[str]) -> OutboxStats:
    """Stats of an outbox file, read-only (safe while the agent runs)."""
    p = Path(path)
    if not p.exists():
        raise OutboxError(f"{p}: no outbox database here (has the agent run with this storage.dir?)")
    db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5)
    try:
        return stats_of(db, p, reader_now(db))
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
