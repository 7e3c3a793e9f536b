"""Maintenance, run by the writer thread on its own connection: expiry (``storage.max_age`` /
``Outgoing.ttl``), eviction (``storage.max_bytes``, free disk, a disk that refused a write) and the disk
reserve. It only *chooses* rows; the writer deletes them in the same transaction as their
``events/dropped`` report (see :mod:`edge_agent.outbox.ledger`).

Eviction takes the lowest class first, oldest first; alarms are the last thing ever dropped. Stored
``events/dropped`` reports are never evicted or expired (that would lose their ranges).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent import codec
from edge_agent.outbox.rangeset import Acked
from edge_agent.outbox.schema import PRIOS

log = logging.getLogger("edge_agent.outbox")

FOLD_AT = 64  # stored events/dropped rows from which they are folded into one per reason


def is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    code = getattr(err, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(err).lower()


class DiskReserve:
    """A preallocated file beside the database whose deletion gives eviction room to write when the disk
    is full; recreated when space returns."""

    def __init__(self, path: Path, nbytes: int) -> None:
        self.path = path
        self.nbytes = nbytes

    def exists(self) -> bool:
        """The reserve is there whole (a power cut soon after it was made can leave it empty)."""
        try:
            return self.path.stat().st_size >= self.nbytes
        except OSError:
            return False

    def ensure(self) -> None:
        if self.nbytes <= 0 or self.exists():
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.nbytes)
                os.fsync(fd)  # without fallocate support glibc writes zeros: unsynced, a power cut empties them
            finally:
                os.close(fd)
        except OSError as e:
            log.debug("outbox: no reserve file: %s", e)
            with contextlib.suppress(OSError):
                self.path.unlink()

    def drop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            log.warning("outbox: released the %d-byte disk reserve", self.nbytes)


@dataclass
class Plan:
    """What one maintenance pass chose: rows to expire, rows to evict (and why), whether acked rows still
    stored must go now, and (when expiry ran) the next time anything expires."""

    expired: list[int] = field(default_factory=list)
    victims: list[int] = field(default_factory=list)
    reason: str = "capacity"
    purge_acked: bool = False
    next_expiry_ms: int | None = None


class Maintenance:
    """Chooses what leaves the database without a PUBACK. Writer thread only (it uses the writer's
    connection). ``disk_full`` is set when a commit failed for lack of space and cleared by the next
    commit that succeeds."""

    def __init__(self, db: sqlite3.Connection, directory: Path, *, max_age: float, max_bytes: int,
                 min_free: int, reserve: DiskReserve, report_rows: int = 0) -> None:
        self.db = db
        self.directory = directory
        self.max_age_ms = int(max_age * 1000)
        self.max_bytes = max_bytes
        self.min_free = min_free
        self.reserve = reserve
        self.disk_full = False
        self.failed_bytes = 0  # what the last failed commit needed to write
        self.report_rows = report_rows  # stored events/dropped rows (recounted when it looks large)

    # ------------------------------------------------------------------ the disk
    def store_failed(self, full: bool, failed_bytes: int, err: BaseException, memory_buffer: int) -> None:
        self.failed_bytes = failed_bytes
        if full:
            if not self.disk_full:
                log.error("outbox: disk full (%s): keeping up to %d messages in memory, evicting to make room",
                          err, memory_buffer)
            self.disk_full = True
            self.reserve.drop()

    def store_ok(self) -> None:
        if self.disk_full:
            self.disk_full = False
            log.warning("outbox: writes succeed again")

    def used_bytes(self) -> tuple[int, int]:
        """(bytes used by live pages, bytes of free pages inside the file)."""
        page = self.db.execute("PRAGMA page_size").fetchone()[0]
        count = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return (count - free) * page, free * page

    def _disk_free(self) -> int:
        try:
            st = os.statvfs(self.directory)
            return st.f_bavail * st.f_frsize
        except OSError:
            return 1 << 62

    # ------------------------------------------------------------------ one pass
    def plan(self, *, now_ms: int, expire: bool, reschedule: bool, exclude: set[int], stored_rows: int,
             acked: Acked, report_topic: int, max_prio: int = PRIOS[0]) -> Plan:
        """Choose expired rows (when ``expire``) and eviction victims; with ``reschedule``, also the next
        expiry. ``exclude``: claimed rows (in flight) and those already chosen; ``stored_rows``: rows in
        the table (acked ones too)."""
        plan = Plan()
        if expire:
            plan.expired = self._select_expired(now_ms, exclude, acked, report_topic)
        self._choose_victims(plan, exclude | set(plan.expired), max(stored_rows, 1), acked, report_topic,
                             max_prio)
        if reschedule:
            plan.next_expiry_ms = self._min_expiry_after(now_ms, set(plan.expired))
        return plan

    def _choose_victims(self, plan: Plan, exclude: set[int], rows: int, acked: Acked, report_topic: int,
                        max_prio: int) -> None:
        used, inner_free = self.used_bytes()
        disk_free = self._disk_free()
        reserve_missing = 0 if self.reserve.exists() else self.reserve.nbytes
        cap = min(self.max_bytes, used + inner_free + disk_free - self.min_free - reserve_missing)
        plan.reason = "capacity" if cap == self.max_bytes else "disk_full"
        if self.disk_full:
            # the disk refused a write: free about twice what the failed commit needed (at least 64 KiB),
            # lowest class first; the next failure frees more. Small steps: alarms are the last to go.
            plan.purge_acked = acked.rows > 0
            per_row = max(used / rows, 64.0)
            need = max(64 * 1024, 2 * self.failed_bytes)
            # never a class above the lowest one still waiting in memory (that goes first, see Writer)
            plan.victims = self._select_victims(math.ceil(need / per_row), exclude, acked, report_topic,
                                                max_prio=max_prio)
            plan.reason = "disk_full"
        elif used > cap and acked.rows:
            plan.purge_acked = True  # acked rows still stored go first: they cost nothing to drop
        elif used > cap:
            per_row = max(used / rows, 64.0)
            target = int(cap * 0.9)
            if used <= cap + reserve_missing:  # only to recreate the reserve: never an event or alarm
                max_prio = min(max_prio, 1)
            plan.victims = self._select_victims(math.ceil((used - target) / per_row), exclude, acked,
                                                report_topic, max_prio=max_prio)
        if not self.disk_full and disk_free > 2 * self.reserve.nbytes + self.min_free:
            self.reserve.ensure()

    def _select_expired(self, now_ms: int, exclude: set[int], acked: Acked, rid: int) -> list[int]:
        out: list[int] = []
        cur = 0
        while True:  # default-TTL rows expire in seq order: stop at the first live one
            rows = self.db.execute("SELECT seq, created, topic FROM messages WHERE expires IS NULL AND seq > ? "
                                   "ORDER BY seq LIMIT 1000", (cur,)).fetchall()
            stop = False
            for seq, created, topic in rows:
                cur = seq
                if topic == rid:
                    continue
                if created + self.max_age_ms > now_ms:
                    stop = True
                    break
                if seq not in exclude and seq not in acked:
                    out.append(seq)
            if stop or len(rows) < 1000:
                break
        out += [s for (s, t) in self.db.execute("SELECT seq, topic FROM messages WHERE expires IS NOT NULL "
                                                "AND expires <= ?", (now_ms,))
                if s not in exclude and t != rid and s not in acked]
        return out

    def min_expiry(self) -> int | None:
        """The earliest expiry of any stored row (ms), from the oldest default-TTL row and the TTL index."""
        a = self.db.execute("SELECT created FROM messages WHERE expires IS NULL ORDER BY seq LIMIT 1").fetchone()
        b = self.db.execute("SELECT MIN(expires) FROM messages WHERE expires IS NOT NULL").fetchone()
        cands = ([a[0] + self.max_age_ms] if a else []) + ([b[0]] if b and b[0] is not None else [])
        return min(cands) if cands else None

    def _min_expiry_after(self, now_ms: int, gone: set[int]) -> int | None:
        a = None
        for seq, created in self.db.execute("SELECT seq, created FROM messages WHERE expires IS NULL "
                                            "ORDER BY seq"):
            if seq not in gone:
                a = created + self.max_age_ms
                break
        b = self.db.execute("SELECT MIN(expires) FROM messages WHERE expires IS NOT NULL AND expires > ?",
                            (now_ms,)).fetchone()[0]
        cands = [x for x in (a, b) if x is not None]
        return min(cands) if cands else None

    def _select_victims(self, n: int, exclude: set[int], acked: Acked, rid: int,
                        max_prio: int = PRIOS[0]) -> list[int]:
        """The ``n`` rows to evict: lowest class first, oldest first, none of ``exclude``, no class above
        ``max_prio``."""
        out: list[int] = []
        for p in reversed(PRIOS):
            if len(out) >= n or p > max_prio:
                break
            where = "prio = 0" if p == 0 else f"prio > 0 AND prio = {p}"
            for (seq, topic) in self.db.execute(f"SELECT seq, topic FROM messages WHERE {where} ORDER BY seq "
                                                "LIMIT ?", (n - len(out) + len(exclude) + self.report_rows,)):
                if seq in exclude or topic == rid or seq in acked:
                    continue
                out.append(seq)
                if len(out) >= n:
                    break
        return out

    # ------------------------------------------------------------------ accounting stays bounded
    def reports_stored(self, added: int, folded: int) -> None:
        """A commit stored ``added`` events/dropped rows and deleted ``folded`` (replaced by a new one)."""
        self.report_rows = max(0, self.report_rows + added - folded)

    def fold_reports(self, rid: int, exclude: set[int], acked: Acked) -> dict[str, tuple[list[int], list[list[int]]]]:
        """Many stored events/dropped rows (a long outage): the unsent ones, by reason, with their ranges,
        to be replaced by one report per reason. Empty below ``FOLD_AT`` rows."""
        if self.report_rows < FOLD_AT:
            return {}
        rows = self.db.execute("SELECT seq, payload FROM messages WHERE topic = ?", (rid,)).fetchall()
        self.report_rows = len(rows)
        folds: dict[str, tuple[list[int], list[list[int]]]] = {}
        if len(rows) < FOLD_AT:
            return folds
        for seq, payload in rows:
            if seq in exclude or seq in acked:
                continue
            try:
                data = codec.decode_envelope(payload)["data"]
                reason, rngs = str(data["reason"]), data["ranges"]
            except (KeyError, TypeError, ValueError):
                continue
            seqs, acc = folds.setdefault(reason, ([], []))
            seqs.append(seq)
            acc.extend(rngs)
        return folds
