"""Persisted command ids and states: ``commands.db`` in the state dir (never the outbox DB).

::

    received --(worker picks it up)--> running --(handler returned/raised)--> done (+ result)

* A row is written (``received``, with the raw request and where to reply) on the network thread
  *before* the PUBLISH is acknowledged, so a redelivery after a crash finds it.
* ``running`` is committed before the handler starts. A row still ``running`` when the store opens
  belongs to a process that died mid-command: its effect is unknown, so it is closed as
  ``done`` with the error ``interrupted`` and **never** run again (at most once). Rows still
  ``received`` never started and are handed back to the service to run.
* A repeat of a known id gets the stored result (``done``) or an "in progress" answer; it never runs
  again. Ids stay until ``expires_at + max_clock_skew`` has passed (a replay after that is refused as
  expired anyway) and the table is capped.

``synchronous=FULL``: a command's state must survive a power cut as well as a crash, and commands are
rare (rate-limited) so the fsync per transition is affordable.

The store also keeps two *time floors* (see :mod:`edge_agent.commands.admission`): the *trusted floor*,
the largest ``min(issued_at, clock)`` of an admitted signed command (only an operator's signature moves
it), and the *clock floor*, the device clock when it looked sane at a start. A Pi without an RTC boots in
the past; a clock below either is recognised as wrong (see ``CommandService.clock_sane``). The clock
floor can be reset by a fresh signed command that confirms the device clock (a clock that was once ahead
must not lock signed commands out until it catches up).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent import codec
from edge_agent.errors import CommandError

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id        TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    digest    BLOB NOT NULL,
    state     TEXT NOT NULL,
    received  REAL NOT NULL,
    expires   REAL NOT NULL,
    updated   REAL NOT NULL,
    request   BLOB,
    reply     BLOB,
    result    BLOB
);
CREATE INDEX IF NOT EXISTS commands_expires ON commands (expires);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""

MAX_ROWS = 100_000


class StoreError(CommandError):
    def __init__(self, message: str) -> None:
        super().__init__("store_error", message)


@dataclass(frozen=True)
class Record:
    id: str
    name: str
    digest: bytes
    state: str
    request: dict[str, Any] | None
    reply: dict[str, Any] | None
    result: dict[str, Any] | None


class CommandStore:
    def __init__(self, path: str | Path, clock: Any = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._floors: dict[str, float] = {}  # meta time floors, cached
        self._db: sqlite3.Connection | None = None
        self.interrupted: list[str] = []

    def open(self) -> CommandStore:
        """Open (create) the database and close out commands a crash left running; idempotent."""
        if self._db is not None:
            return self
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot open the command store: {e}") from e
        self.interrupted = self._close_interrupted()
        return self

    def _close_interrupted(self) -> list[str]:
        result = codec.encode({"status": "error", "error": {
            "code": "interrupted",
            "message": "the agent stopped while this command was running; its effect is unknown and it "
                       "is not run again"}})
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM commands WHERE state='running'")]
            if ids:
                self._db.execute("UPDATE commands SET state='done', result=?, updated=? WHERE state='running'",
                                 (result, self._clock()))
        return ids

    # ------------------------------------------------------------------ rows
    def get(self, cmd_id: str) -> Record | None:
        with self._lock:
            row = self._db.execute("SELECT id, name, digest, state, request, reply, result FROM commands "
                                   "WHERE id=?", (cmd_id,)).fetchone()
        return _record(row) if row else None

    def add(self, cmd_id: str, name: str, digest: bytes, expires: float, request: dict[str, Any],
            reply: dict[str, Any]) -> bool:
        """Record a new command as ``received``; False if the id is already known."""
        now = self._clock()
        try:
            with self._lock:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO commands (id, name, digest, state, received, expires, updated, request,"
                    " reply) VALUES (?, ?, ?, 'received', ?, ?, ?, ?, ?)",
                    (cmd_id, name, digest, now, expires, now, codec.encode(request), codec.encode(reply)))
                return cur.rowcount == 1
        except sqlite3.Error as e:
            raise StoreError(f"cannot record command {cmd_id}: {e}") from e

    def set_running(self, cmd_id: str) -> bool:
        """received -> running; False if the row is not 'received' (someone else has it)."""
        with self._lock:
            cur = self._db.execute("UPDATE commands SET state='running', request=NULL, updated=? "
                                   "WHERE id=? AND state='received'", (self._clock(), cmd_id))
            return cur.rowcount == 1

    def set_done(self, cmd_id: str, result: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("UPDATE commands SET state='done', result=?, request=NULL, updated=? WHERE id=?",
                             (codec.encode(result), self._clock(), cmd_id))

    def received(self) -> list[Record]:
        """Commands stored but never started (the agent died between ack and start)."""
        with self._lock:
            rows = self._db.execute("SELECT id, name, digest, state, request, reply, result FROM commands "
                                    "WHERE state='received' ORDER BY received").fetchall()
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT state, count(*) FROM commands GROUP BY state").fetchall())

    def prune(self, before: float) -> int:
        """Forget done commands that expired before ``before``; keep at most MAX_ROWS."""
        with self._lock:
            n = self._db.execute("DELETE FROM commands WHERE state='done' AND expires < ?", (before,)).rowcount
            total = self._db.execute("SELECT count(*) FROM commands").fetchone()[0]
            if total > MAX_ROWS:
                n += self._db.execute(
                    "DELETE FROM commands WHERE id IN (SELECT id FROM commands WHERE state='done' "
                    "ORDER BY expires LIMIT ?)", (total - MAX_ROWS,)).rowcount
        return n

    # ------------------------------------------------------------------ time floors
    def _meta_float(self, key: str) -> float:
        if key not in self._floors:
            with self._lock:
                row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            self._floors[key] = float(row[0]) if row else 0.0
        return self._floors[key]

    def _raise(self, key: str, t: float, step: float = 0.0) -> None:
        """Persist a larger floor; written only after ``step`` seconds of progress (a coarse bound)."""
        if t <= self._meta_float(key) + step and (self._meta_float(key) > 0 or t <= 0):
            return
        with self._lock:
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO "
                             "UPDATE SET value=max(value, excluded.value)", (key, float(t)))
            self._floors[key] = max(self._floors.get(key, 0.0), float(t))

    def time_floor(self) -> float:
        """The clock floor: the device clock at a start where it looked sane (soft, resettable)."""
        return self._meta_float("time_floor")

    def raise_time_floor(self, t: float) -> None:
        """At most one write per minute of progress."""
        self._raise("time_floor", t, 60.0)

    def reset_time_floor(self, t: float) -> None:
        """Set the clock floor to ``t``, lower or not: a fresh signed command confirmed the device clock."""
        with self._lock:
            self._db.execute("INSERT INTO meta (key, value) VALUES ('time_floor', ?) ON CONFLICT(key) DO "
                             "UPDATE SET value=excluded.value", (float(t),))
            self._floors["time_floor"] = float(t)

    def trusted_floor(self) -> float:
        """The trusted floor: the largest min(issued_at, clock) of an admitted signed command (hard)."""
        return self._meta_float("trusted_floor")

    def raise_trusted_floor(self, t: float) -> None:
        """Exact (commands are rare): a replay of the newest admitted command must not pass for a new one."""
        self._raise("trusted_floor", t)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()


def _record(row: tuple[Any, ...]) -> Record:
    def dec(b: bytes | None) -> Any:
        return codec.decode(b, max_bytes=64 * 1024 * 1024, max_bin=64 * 1024 * 1024) if b else None

    return Record(row[0], row[1], bytes(row[2]), row[3], dec(row[4]), dec(row[5]), dec(row[6]))
