"""The consumer side: the reader connection, the claims and the per-class cursors.

``begin()`` orders by class (alarm > event > inference > telemetry), then seq. Rows it handed out are
"claimed" and not handed out again until ``release()``d or acked. It keeps a cursor per class (and
per part of a throttled drain) so a drain never re-reads rows it already handed out. Readers use their
own connection: in WAL mode they see the last commit and never wait for the writer's transaction, so a
long commit cannot stall the forwarder.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from edge_agent import codec
from edge_agent.message import Pending
from edge_agent.outbox.rangeset import NONE_ACKED, Acked
from edge_agent.outbox.schema import PRIOS, Row, Topics
from edge_agent.outbox.stats import OutboxStats, oldest, stats_of

T = TypeVar("T")
log = logging.getLogger("edge_agent.outbox")


class Claims:
    """Thread-safe: one lock guards the reader connection, the claims and the cursors."""

    def __init__(self, topics: Topics) -> None:
        self._lock = threading.Lock()
        self._names = topics.names  # read for every row handed out
        self._rdb: sqlite3.Connection | None = None
        self._claimed: dict[int, int] = {}  # seq -> prio
        self._cursor: dict[tuple[int, str], int] = {}
        self._acked = NONE_ACKED
        self._ready = threading.Event()
        self.damage: str | None = None  # why the reader could not read the file (guarded by _lock)
        self._held: Callable[[int, int, int | None, int | None], list[Row]] | None = None  # write-behind rows

    def attach(self, path: Path) -> None:
        """Open the reader connection (read-only)."""
        rdb = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        rdb.execute("PRAGMA query_only=1")
        self._rdb = rdb

    def swap(self, path: Path, replace: Callable[[], T]) -> T:
        """The database file is being replaced: close the reader, run ``replace()`` (which creates the new
        file) and read the new one. Claims and cursors stay (the rows keep their seqs)."""
        with self._lock:
            if self._rdb is not None:
                self._rdb.close()
                self._rdb = None
            try:
                return replace()
            finally:
                self._acked = NONE_ACKED
                rdb = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
                rdb.execute("PRAGMA query_only=1")
                self._rdb = rdb
                self._ready.set()

    def hold_from(self, fn: Callable[[int, int, int | None, int | None], list[Row]]) -> None:
        """Also hand out the held rows ``fn(prio, after, upto, limit)`` returns (write-behind), merged by seq."""
        self._held = fn

    def close(self) -> None:
        with self._lock:
            if self._rdb is not None:
                self._rdb.close()

    # ------------------------------------------------------------------ the forwarder
    def begin(self, limit: int, *, live_after: int | None = None, part: str = "all") -> list[Pending]:
        if limit <= 0:
            return []
        if part not in ("all", "live", "backlog"):
            raise ValueError(f"part must be 'all', 'live' or 'backlog', got {part!r}")
        boundary = live_after or 0
        out: list[Pending] = []
        with self._lock:
            self._ready.clear()  # before looking: a row that arrives meanwhile sets it again
            try:
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
            except sqlite3.DatabaseError as e:
                self._damaged(e)
            return out

    def _fetch(self, p: int, seg: str, floor: int, ceil: int | None, need: int, out: list[Pending]) -> None:
        key = (p, "all" if p >= 2 else seg)
        cur = max(self._cursor.get(key, 0), floor)
        claimed, acked = self._claimed, self._acked
        last = cur
        for seq, topic, payload, qos, retain, props, created in self._candidates(p, cur, ceil, need):
            last = seq
            if seq in claimed or seq in acked:
                continue
            claimed[seq] = p
            out.append(Pending(seq, p, topic, payload, qos, bool(retain), codec.decode(props) if props else None,
                               created / 1000.0))
            need -= 1
            if need == 0:
                break
        self._cursor[key] = last

    def _candidates(self, p: int, cur: int, ceil: int | None, need: int) -> Iterator[tuple]:
        """Stored rows of prio ``p`` with ``cur < seq <= ceil`` merged with the held ones, by seq (a row
        both held and just stored comes once)."""
        where = "prio = 0" if p == 0 else f"prio > 0 AND prio = {p}"  # the partial index needs 'prio > 0'
        sql = ("SELECT seq, topic, payload, qos, retain, props, created FROM messages WHERE "
               f"{where} AND seq > ?{' AND seq <= ?' if ceil is not None else ''} ORDER BY seq LIMIT ?")
        rdb = self._rdb
        assert rdb is not None, "begin() before open()"
        # enough held rows for ``need`` after _fetch skips the claimed and acked ones, so no held row beyond
        # the list can come before a stored row _fetch still takes (it stops after ``need``)
        skippable = len(self._claimed) + self._acked.rows
        held = self._held(p, cur, ceil, need + skippable + 1) if self._held is not None else []
        hi = 0
        names = self._names
        while True:
            chunk = need + 32
            rows = rdb.execute(sql, (cur, ceil, chunk) if ceil is not None else (cur, chunk)).fetchall()
            for seq, topic, payload, qos, retain, props, created in rows:
                while hi < len(held) and held[hi][0] <= seq:
                    h = held[hi]
                    hi += 1
                    if h[0] != seq:
                        yield h[0], h[2], h[3], h[6], h[7], h[8], h[4]
                cur = seq
                yield seq, names.get(topic) or self._topic_name(topic), payload, qos, retain, props, created
            if len(rows) < chunk:
                break
        for h in held[hi:]:
            yield h[0], h[2], h[3], h[6], h[7], h[8], h[4]

    def _topic_name(self, tid: int) -> str:
        assert self._rdb is not None
        row = self._rdb.execute("SELECT topic FROM topics WHERE id=?", (tid,)).fetchone()
        name = str(row[0]) if row else ""
        self._names[tid] = name
        return name

    def release(self, seqs: Iterable[int]) -> None:
        with self._lock:
            for s in seqs:
                p = self._claimed.pop(s, None)
                if p is None:
                    continue
                for key, cur in self._cursor.items():
                    if key[0] == p and cur >= s:
                        self._cursor[key] = s - 1
        self._ready.set()

    def wait(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    # ------------------------------------------------------------------ the writer
    def claimed(self) -> set[int]:
        with self._lock:
            return set(self._claimed)

    def settle(self, acks: list[int], acked: Acked) -> None:
        """A commit recorded ``acks``: they are no longer claimed, and ``acked`` is what is still stored
        of the acked rows (one step, so begin() never sees an acked row unclaimed)."""
        with self._lock:
            for s in acks:
                self._claimed.pop(s, None)
            self._acked = acked

    def data_ready(self) -> None:
        if not self._ready.is_set():  # cheap when already set (a put per message calls it)
            self._ready.set()

    def forget(self, seqs: list[int]) -> None:
        """Held rows acked before they were stored: no longer claimed."""
        with self._lock:
            for s in seqs:
                self._claimed.pop(s, None)

    def committed(self, rows: list[Row]) -> None:
        """Rows just stored may lie below a cursor (held rows and reports stored out of seq order):
        move those cursors back so begin() sees them."""
        if not rows:
            return
        low: dict[int, int] = {}
        for r in rows:
            if r[0] < low.get(r[1], r[0] + 1):
                low[r[1]] = r[0]
        with self._lock:
            for key, cur in self._cursor.items():
                s = low.get(key[0])
                if s is not None and cur >= s:
                    self._cursor[key] = s - 1

    # ------------------------------------------------------------------ figures
    def stats(self, path: Path, now: float) -> OutboxStats:
        with self._lock:
            assert self._rdb is not None, "stats() before open()"
            return stats_of(self._rdb, path, now)

    def oldest_created_ms(self) -> int | None:
        """``created`` (ms) of the oldest row not yet acked, or None when there is none."""
        with self._lock:
            assert self._rdb is not None, "status() before open()"
            try:
                row = oldest(self._rdb, self._acked.ranges)
            except sqlite3.DatabaseError as e:
                self._damaged(e)
                return None
        return row[0] if row else None

    def _damaged(self, err: sqlite3.DatabaseError) -> None:
        """The file cannot be read (changed under the outbox): the writer moves to a fresh one at its next
        maintenance pass (see :meth:`take_damage`); meanwhile readers get nothing, never an exception."""
        if self.damage is None:
            log.error("outbox: cannot read the database: %s; moving to a fresh file", err)
        self.damage = f"database unreadable while running ({err})"

    def take_damage(self) -> str | None:
        with self._lock:
            d, self.damage = self.damage, None
        return d
