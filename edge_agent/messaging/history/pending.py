"""Outgoing messages stored a little later: ``send()`` returns after one append to a journal file, and the
rows reach ``history.db`` in batches (one transaction for all that waited), before anything else reads or
writes the database (:class:`~edge_agent.messaging.history.db.Database` flushes first).

::

    add_later(row)  --> os.write(journal) + queue (in memory)      send() returns: the row is kept
    take + insert   --> every queued row inserted, in order, in the transaction of whoever uses the database next
    done            --> committed: the journal file those rows were in is emptied; else they are queued again
    open()          --> rows a killed process left in the journal are stored again (duplicates ignored)

Two journal files (``history.db.j0``, ``.j1``) take turns: a flush switches appends to the other file, so a
file is emptied only once every row in it is committed, and neither grows past one batch. The journal is
mapped into memory and written without msync or fsync, like the history's commits with ``sync = "normal"``:
it survives the process being killed (the pages are the kernel's), not a power cut (``sync = "full"`` does
not store later at all). A record's length is written last: one cut short by a kill was never returned by
``send()``, and replay stops there.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import sqlite3
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent import codec
from edge_agent.messaging.history.records import HistoryUnavailable
from edge_agent.messaging.history.store import Row, insert_row, insert_rows

log = logging.getLogger("edge_agent.messaging.history")

_LEN = struct.Struct(">I")
_ZERO = bytes(_LEN.size)
QUEUE_LIMIT = 1000  # rows waiting at most before add() waits for the writer ...
QUEUE_WAIT = 0.2  # ... at most this long (a writer that cannot store, e.g. a full disk, does not stop send())
_INITIAL = 1 << 20  # bytes mapped per journal file at first (it grows when a batch needs more)


class Journal:
    """One journal file, mapped into memory: an append is a copy into the page cache (no system call, so
    the GIL is kept; the kernel writes the pages back as for any file). Records are ``u32 length`` +
    msgpack; a zero length ends them (each append writes the next zero before its own length)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._off = 0

    def open(self) -> list[tuple[int, Row]]:
        """Map the file (made if missing); return the records it holds, then start it empty."""
        left = self._read()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._map_size(max(os.fstat(self._fd).st_size, _INITIAL))
        self.reset()
        return left

    def _map_size(self, size: int) -> None:
        try:  # blocks now: a full disk is an error here, not a SIGBUS later
            os.posix_fallocate(self._fd, 0, size)
        except (AttributeError, OSError) as e:  # no fallocate here (macOS, some file systems)
            if isinstance(e, OSError) and e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            os.ftruncate(self._fd, max(size, os.fstat(self._fd).st_size))
        if self._map is not None:
            self._map.close()
        self._map = mmap.mmap(self._fd, size)

    def _read(self) -> list[tuple[int, Row]]:
        try:
            buf = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out, i = [], 0
        while i + _LEN.size <= len(buf):
            (n,) = _LEN.unpack_from(buf, i)
            if n == 0 or i + _LEN.size + n > len(buf):
                break  # the end (or a record whose length was never written: send() did not return it)
            try:
                order, row = codec.decode(buf[i + _LEN.size:i + _LEN.size + n], max_bytes=1 << 30,
                                          max_str=1 << 26, max_bin=1 << 26)
            except (codec.DecodeError, ValueError, TypeError) as e:
                log.warning("%s: unreadable journal record at byte %d (%s); the rest is skipped", self.path, i, e)
                break
            out.append((order, row))
            i += _LEN.size + n
        return out

    def append(self, rec: bytes) -> None:
        m, off, n = self._map, self._off, len(rec)
        if m is None:
            raise OSError(f"{self.path}: journal not open")
        end = off + _LEN.size + n
        if end + _LEN.size > len(m):
            self._map_size(max(2 * len(m), end + _LEN.size + _INITIAL))
            m = self._map
            assert m is not None
        m[end:end + _LEN.size] = _ZERO  # the new end first, the length that makes the record visible last
        m[off + _LEN.size:end] = rec
        m[off:off + _LEN.size] = _LEN.pack(n)
        self._off = end

    def reset(self) -> None:
        """Empty it (what it held is committed)."""
        if self._map is not None:
            self._map[0:_LEN.size] = _ZERO
        self._off = 0

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class PendingAdds:
    """Rows accepted but not yet in the database, and their journal (see the module docstring)."""

    def __init__(self, db_path: Path, wake: Callable[[], None] | None = None) -> None:
        self.files = tuple(Journal(db_path.with_name(f"{db_path.name}.j{i}")) for i in (0, 1))
        self._wake = wake  # called when the first row is queued (the writer thread flushes)
        self._lock = threading.Lock()
        self._taken = threading.Condition(self._lock)
        self._rows: list[tuple[int, Any]] = []  # (journal file index, row) or (-1, write), oldest first
        self._cur = 0
        self._order = 0  # the journal records' order across both files
        self.inserted = 0  # rows stored by insert() (retention counts them)

    def open(self) -> list[Row]:
        """Open the journal files; return the rows a previous process left in them (oldest first). They
        must be committed before :meth:`clear`."""
        left = [x for j in self.files for x in j.open()]
        left.sort(key=lambda x: x[0])
        return [r for _, r in left]

    def clear(self) -> None:
        """Empty both journal files (what they held is committed); new records start after the old ones."""
        for j in self.files:
            j.reset()

    def add(self, row: Row) -> None:
        """Journal ``row`` and queue it; HistoryUnavailable if the journal cannot be written. With
        :data:`QUEUE_LIMIT` rows waiting already, first wait (up to :data:`QUEUE_WAIT`) for the writer to
        take them: the queue stays bounded, and a caller that never blocks cannot starve the other threads."""
        with self._lock:
            if len(self._rows) >= QUEUE_LIMIT:
                self._taken.wait(QUEUE_WAIT)
            self._order += 1
            try:
                self.files[self._cur].append(codec.encode([self._order, row]))
            except OSError as e:
                raise HistoryUnavailable(f"{self.files[self._cur].path}: cannot write the history journal: "
                                         f"{e}") from e
            first = not self._rows
            self._rows.append((self._cur, row))
        if first and self._wake is not None:
            self._wake()

    def later(self, fn: Callable[[sqlite3.Connection], None], then: Callable[[], None] | None = None) -> None:
        """Queue a write (not journaled: a status the tracker can tell again after a crash) to run in order
        with the rows, in the next transaction; ``then()`` once that is committed."""
        with self._lock:
            first = not self._rows
            self._rows.append((-1, (fn, then)))
        if first and self._wake is not None:
            self._wake()

    def __bool__(self) -> bool:
        return bool(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def take(self) -> list[tuple[int, Any]]:
        """Every queued row (to insert now); appends from now on go to the other journal file."""
        with self._lock:
            taken, self._rows = self._rows, []
            self._cur ^= 1
            self._taken.notify_all()
        return taken

    def insert(self, conn: sqlite3.Connection, taken: list[tuple[int, Any]]) -> None:
        """Insert ``taken`` in the caller's open transaction (duplicates of committed rows are ignored)."""
        rows: list[Row] = []  # consecutive plain rows go in together (insert_rows)
        for f, item in taken:
            if f >= 0 and item[19] == [item[2]]:
                rows.append(item)
                continue
            self._insert(conn, rows)
            rows = []
            if f < 0:
                item[0](conn)  # a later write (History.set_sent ...), in its place
            elif insert_row(conn, item) is not None:
                self.inserted += 1
        self._insert(conn, rows)

    def _insert(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        if rows:
            self.inserted += insert_rows(conn, rows)

    def done(self, taken: list[tuple[int, Any]], committed: bool) -> None:
        """After the transaction: committed, the journal file no queued row is in is emptied; rolled back,
        ``taken`` is queued again in front (still journaled) for the next flush."""
        with self._lock:
            if not committed:
                self._rows[:0] = taken
                return
            self.files[self._cur ^ 1].reset()  # every row queued since take() is in the current one
            if not self._rows:
                self.files[self._cur].reset()
        for f, item in taken:
            if f < 0 and item[1] is not None:
                item[1]()  # e.g. report the statuses just stored

    def close(self) -> None:
        with self._lock:
            for j in self.files:
                j.close()
