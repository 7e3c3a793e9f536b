"""The one SQLite connection of a history, behind one lock.

``with db as conn:`` holds the lock for reads; ``with db.tx() as conn:`` is one IMMEDIATE transaction.
Both refuse a closed database with :class:`HistoryUnavailable`, and a write that SQLite refuses (disk
full, I/O error, read-only file, a damaged database) is rolled back and raised as
:class:`HistoryUnavailable` too, so callers can tell "cannot store right now" from a bad query.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from edge_agent.messaging.history.records import HistoryError, HistoryUnavailable

log = logging.getLogger("edge_agent.messaging.history")


class Pending(Protocol):
    """What :class:`Database` needs of :class:`~edge_agent.messaging.history.pending.PendingAdds`."""

    def __bool__(self) -> bool: ...
    def take(self) -> list[Any]: ...
    def insert(self, conn: sqlite3.Connection, taken: list[Any]) -> None: ...
    def done(self, taken: list[Any], committed: bool) -> None: ...


class Database:
    """A history database file opened read-write (schema applied) or read-only. Thread-safe."""

    def __init__(self, path: str | os.PathLike[str], *, schema: str, sync: str = "normal",
                 readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.sync = sync
        self._lock = threading.RLock()
        self._depth = 0  # nested tx() blocks join the outermost transaction
        self._closed = False
        self.pending: Pending | None = None  # rows stored later (pending.py): in before anything else
        try:
            self._conn = self._open_ro() if readonly else self._open_rw(schema, sync)
        except sqlite3.DatabaseError as e:
            raise HistoryError(f"{self.path}: cannot open history database: {e}") from e

    def _open_ro(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise HistoryError(f"{self.path}: no message history here (has an agent with messaging "
                               "run with this storage.dir?)")
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10, check_same_thread=False,
                               isolation_level=None)

    def _open_rw(self, schema: str, sync: str) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only effective on a new file
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            conn.execute("PRAGMA journal_size_limit=8388608")
            conn.executescript(schema)
        except BaseException:
            conn.close()
            raise
        return conn

    # ------------------------------------------------------------------ access
    def __enter__(self) -> sqlite3.Connection:
        conn = self._acquire()
        if self.pending and not self._depth:  # rows stored later go in first: every read sees them
            try:
                with self.tx():
                    pass
            except HistoryError as e:
                log.warning("%s: rows waiting to be stored are not yet: %s", self.path, e)
        return conn

    def _acquire(self) -> sqlite3.Connection:
        self._lock.acquire()
        if self._closed:
            self._lock.release()
            raise HistoryUnavailable(f"{self.path}: history is closed")
        return self._conn

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        self._lock.release()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed when the block ends, rolled back if it raises. A tx()
        inside another (same thread: the lock is held) joins it: many writes, one commit. Rows stored
        later (``pending``) are inserted first, in the same transaction."""
        conn = self._acquire()
        try:
            if self._depth:
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            yield from self._outermost(conn)
        finally:
            self._lock.release()

    def _outermost(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        self._depth = 1
        taken: list[Any] = []
        ok = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            if self.pending:
                taken = self.pending.take()
                self.pending.insert(conn, taken)
            yield conn
            conn.execute("COMMIT")
            ok = True
        except sqlite3.DatabaseError as e:
            self._rollback(conn)
            raise HistoryUnavailable(f"{self.path}: cannot write the history: {e}") from e
        except BaseException:
            self._rollback(conn)
            raise
        finally:
            self._depth = 0
            if taken and self.pending is not None:
                self.pending.done(taken, ok)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as e:  # e.g. SQLite already rolled back after an I/O error
                log.debug("history rollback: %s", e)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self.pending:
                try:
                    with self.tx():
                        pass
                except HistoryError as e:
                    log.warning("%s: rows waiting to be stored are left in the journal for the next start: %s",
                                self.path, e)
            self._closed = True
            if not self.readonly:
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as e:
                    log.debug("history checkpoint at close failed: %s", e)
            self._conn.close()

    @property
    def closed(self) -> bool:
        return self._closed
