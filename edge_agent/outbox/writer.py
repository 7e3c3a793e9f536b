"""The writer thread: the only one that writes the queue database.

Every cycle is one transaction: maintenance's victims (with their ``events/dropped`` report), the memory
batch, and the acks. A cycle waits for work, lets more join (:meth:`Staging.next_cycle`), then: maintain
(when due) -> collect -> commit -> publish -> notify the listeners. A failed commit puts everything back
into memory and retries (see :meth:`Writer._failed`); it never raises into the producers.

Acked rows are not deleted one by one (a B-tree delete rewrites every page it touches, doubling the bytes
written per message): their seqs are kept as ranges in ``meta.acked``, and once every stored row is
acked the table is emptied with one unqualified DELETE, which frees the pages without writing them.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent import codec
from edge_agent.outbox.ageclock import AgeClock
from edge_agent.outbox.claims import Claims
from edge_agent.outbox.continuity import CleanMarker
from edge_agent.outbox.ledger import FOLDED, Ledger, Victims
from edge_agent.outbox.maintenance import Maintenance, is_disk_full
from edge_agent.outbox.rangeset import NONE_ACKED, Acked, merge_ranges, ranges
from edge_agent.outbox.recovery import SEQ_RESERVE, Salvage, SeqSidecar
from edge_agent.outbox.reopen import Reopener, Upkeep
from edge_agent.outbox.schema import Row, Topics, count_in_ranges, delete_ranges
from edge_agent.outbox.staging import Staging

log = logging.getLogger("edge_agent.outbox")

ACKED_LIMIT = 200_000  # acked rows kept (not yet deleted) before they are deleted row by row

CommittedListener = Callable[[list[int]], None]
DroppedListener = Callable[[list[int], str], None]


@dataclass
class Timing:
    commit_interval: float
    ack_interval: float
    maintenance_interval: float


@dataclass
class _Work:
    """What one commit stores: the batch, the acks, the victims, and the counters after it."""
    batch: list[Row]
    acks: list[int]
    victims: Victims
    deltas: dict[str, int]
    counters: list[tuple[str, int]]


class Writer:
    """Owns the writer connection, ``last_seq``, the stored count and the acked rows still stored.
    Its fields are the writer thread's; the other threads read ``last_seq`` (one int)."""

    def __init__(self, db: sqlite3.Connection, *, staging: Staging, claims: Claims, ledger: Ledger,
                 maintenance: Maintenance, topics: Topics, sidecar: SeqSidecar, timing: Timing,
                 memory_buffer: int, clock: AgeClock, last_seq: int, stored: int, acked: Acked,
                 committed: list[CommittedListener], dropped: list[DroppedListener]) -> None:
        self.db = db
        self.staging, self.claims, self.ledger = staging, claims, ledger
        self.maintenance, self.topics, self.sidecar = maintenance, topics, sidecar
        self.timing, self.memory_buffer, self.clock = timing, memory_buffer, clock
        self.last_seq = last_seq
        self.stored = stored  # rows stored and not acked
        self.acked = acked
        self.purge_acked = False  # delete the acked rows still stored with the next commit
        self.committed_listeners, self.dropped_listeners = committed, dropped
        self.next_maint = time.monotonic() + timing.maintenance_interval  # the first commit must not wait
        self.last_sidecar = 0.0
        self.heartbeat: Callable[[], None] = lambda: None
        self.reopener: Reopener | None = None  # notices a vanished database file (set before start)
        self._carry: tuple[Salvage, str | None] | None = None  # rows read from a vanished file, not yet stored
        self.on_reopened: Callable[[dict[str, Any]], None] = lambda info: None
        self.upkeep = Upkeep()  # periodic checkpoint, commit time for ``outbox stats``
        self._exit_lock = threading.Lock()
        self._ended = False  # the loop has returned: the connection is free to close
        self._final: Callable[[], None] | None = None  # set when close() gave up waiting (see release)
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def release(self, final: Callable[[], None]) -> bool:
        """Run ``final`` (the rest of the stop) now if the loop has ended, else hand it to the thread for
        when it does: closing the connection under a running commit crashes sqlite3. True if run here."""
        with self._exit_lock:
            if not self._ended and self._thread.is_alive():
                self._final = final
                return False
        final()
        return True

    def close_db(self) -> None:
        """Checkpoint into the database file and close, once the loop has ended (see :meth:`release`): the
        clean marker first, so a later start tells a lost WAL from one a clean stop removed."""
        if self.reopener is not None:
            CleanMarker(self.reopener.path).set(self.last_seq)
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            log.warning("outbox: checkpoint at close failed: %s", e)
        self.db.close()

    def write_sidecar(self, reserved: int) -> None:
        """Move the seq reservation; raises OSError when it cannot (then no seq above the old one is
        committed until it can)."""
        row = self.db.execute("SELECT seq FROM messages ORDER BY seq LIMIT 1").fetchone()
        floor = row[0] if row else self.last_seq + 1
        try:
            self.sidecar.write(reserved, floor)
        except OSError as e:
            log.warning("outbox: cannot write %s: %s", self.sidecar.path, e)
            self.staging.defer_renew()
            raise
        self.last_sidecar = time.monotonic()
        self.staging.set_reserved(reserved, SEQ_RESERVE // 2)

    def finish(self, last_assigned: int) -> bool:
        """At a clean stop (everything stored or acked): record ``last_assigned`` as the last seq, with
        the counters, so the next start continues after it without reporting a crash."""
        counters = [(f"c.{k}", v) for k, v in self.staging.snapshot()[0].items()]
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?,?)",
                                [("last_seq", max(self.last_seq, last_assigned)), *counters])
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            log.warning("outbox: cannot record the last seq at stop: %s", e)
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            return False
        self.last_seq = max(self.last_seq, last_assigned)
        return True

    # ------------------------------------------------------------------ the loop
    def _beat(self) -> None:
        self.heartbeat()  # looked up on each beat: the owner may set it after the thread started

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._exit_lock:
                self._ended, final = True, self._final
            if final is not None:
                final()

    def _loop(self) -> None:
        t = self.timing
        while True:
            closing, flush_target = self.staging.next_cycle(
                next_maint=self.next_maint, urgent=self.purge_acked, heartbeat=self._beat,
                commit_interval=t.commit_interval, ack_interval=t.ack_interval)
            ok = self._cycle(time.monotonic() >= self.next_maint)
            self.heartbeat()
            if self.staging.cycle_done(ok, closing, flush_target):
                return

    def _cycle(self, maint: bool) -> bool:
        """One commit: maintenance (eviction/expiry) + the memory batch + acks, in one transaction."""
        if maint:
            self._maintain()
        assigned = self.staging.renew_due()
        if assigned:  # move the seq reservation on well before put() reaches it
            with contextlib.suppress(OSError):
                self.write_sidecar(assigned + SEQ_RESERVE)
        work = self._collect()
        if not (work.batch or work.acks or work.victims or self.purge_acked):
            if maint and not self.maintenance.disk_full:
                self.upkeep.idle(self.db)
            return True
        try:
            self._commit(work)
        except (sqlite3.Error, OSError) as e:
            self._failed(work, e)
            return False
        self._committed(work)
        self._notify(work)
        self.upkeep.committed(self.db)
        return True

    # ------------------------------------------------------------------ maintenance
    def _maintain(self) -> None:
        self.next_maint = time.monotonic() + self.timing.maintenance_interval
        why = self.reopener.moved() if self.reopener is not None else None
        why = why or self.claims.take_damage()
        try:
            if why is not None:
                self._reopen(why)
            self._plan_maintenance()
        except sqlite3.Error as e:
            log.warning("outbox: maintenance failed: %s", e)

    def _plan_maintenance(self) -> None:
        """Let maintenance choose expired rows and victims; they join the next commit via the ledger."""
        now_ms = self.clock.now_ms()
        exclude = self.claims.claimed()
        with self.staging.cond:  # rows already chosen (a failed commit retries them) are not chosen twice
            exclude |= self.ledger.chosen()
        rid = self.topics.ids.get(self.ledger.report_topic, -1)
        folds = self.maintenance.fold_reports(rid, exclude, self.acked)
        if folds:
            with self.staging.cond:
                self.ledger.fold(folds)
            exclude |= {s for seqs, _ in folds.values() for s in seqs}
        expire, reschedule = self.staging.take_expiry(now_ms)
        mem_floor = self.staging.lowest_prio()  # nothing stored goes before a lower class waiting in memory
        plan = self.maintenance.plan(now_ms=now_ms, expire=expire, reschedule=reschedule, exclude=exclude,
                                     stored_rows=self.stored + self.acked.rows, acked=self.acked,
                                     report_topic=rid, max_prio=mem_floor)
        if plan.purge_acked:
            self.purge_acked = True
        with self.staging.cond:
            self.ledger.choose("expired", plan.expired)
            self.ledger.choose(plan.reason, plan.victims)
        if reschedule:
            self.staging.reschedule_expiry(plan.next_expiry_ms)
        if time.monotonic() - self.last_sidecar > 60.0:
            self.last_sidecar = time.monotonic()  # at most one attempt a minute, even when it fails
            with contextlib.suppress(OSError):
                self.write_sidecar(max(self.sidecar.reserved, self.last_seq + 1))

    def _reopen(self, why: str) -> None:
        """The database file vanished or was replaced: carry the rows over to a fresh file, report."""
        reopener = self.reopener
        assert reopener is not None
        log.error("outbox: %s (%s); moving to a fresh database file", why, reopener.path)
        found, err = self._carry or reopener.read(self.db)
        self._carry = (found, err)  # kept until a fresh file holds them (the old one is closed below)

        def replace() -> tuple[sqlite3.Connection, list[int]]:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()  # never keep writing into an unlinked file
            return reopener.fresh(found.rows)

        new, seqs = self.claims.swap(reopener.path, replace)
        self._carry = None
        self.db = self.maintenance.db = new
        self.topics.reset()
        self.topics.load(new)
        self.acked, self.purge_acked, self.stored = NONE_ACKED, False, len(seqs)
        lost = sorted(set(range(max(1, self.sidecar.floor), self.last_seq + 1)) - set(seqs)) if err else []
        with contextlib.suppress(OSError):
            self.write_sidecar(max(self.sidecar.reserved, self.last_seq + 1))
        if lost:
            with self.staging.cond:
                self.ledger.account("db_lost", lost)
        self.on_reopened({"file": str(reopener.path), "error": why + (f"; unreadable: {err}" if err else ""),
                          "salvaged": len(seqs), "lost": len(lost), "ranges": ranges(lost), "reason": "db_lost"})

    # ------------------------------------------------------------------ one commit
    def _collect(self) -> _Work:
        with self.staging.cond:
            victims = self.ledger.take_victims()  # their reports join the batch taken next
            batch, acks, fresh = self.staging.take_locked()
            deltas = {"enqueued": fresh, "acked": len(acks),
                      "evicted": sum(len(v) for k, v in victims.items() if k not in ("expired", FOLDED)),
                      "expired": len(victims.get("expired", ()))}
            counters = self.staging.counters_after_locked(deltas)
        return _Work(batch, acks, victims, deltas, counters)

    def _commit(self, work: _Work) -> None:
        last_seq = max(self.last_seq, max((r[0] for r in work.batch), default=0))
        if last_seq > self.sidecar.reserved or self.sidecar.on_disk_id != self.sidecar.db_id:
            self.write_sidecar(last_seq + SEQ_RESERVE)
        deleted, n_acked, acked = self._transaction(work, last_seq)
        self.last_seq = last_seq
        self.stored += len(work.batch) - deleted - n_acked
        self.acked = acked
        self.claims.settle(work.acks, acked)
        if not acked.ranges:
            self.purge_acked = False

    def _transaction(self, work: _Work, last_seq: int) -> tuple[int, int, Acked]:
        """Insert the batch, delete victims, record acks; returns (victims deleted, rows newly acked,
        acked rows still stored)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        new_topics: list[str] = []
        ids = self.topics.ids
        try:
            rows = []
            for r in work.batch:
                tid = ids.get(r[2])
                if tid is None:
                    tid = self._new_topic(r[2], new_topics)
                rows.append((r[0], r[1], tid, *r[3:]))
            deleted = 0
            gone = {s for v in work.victims.values() for s in v}
            if gone:
                deleted = delete_ranges(db, ranges(gone))
            new_acks = [s for s in sorted(set(work.acks)) if s not in gone and s not in self.acked]
            acked = self._settle_acked(new_acks, deleted)
            if rows:
                db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?)", rows)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?,?)",
                           [("last_seq", last_seq), ("acked", codec.encode(acked.ranges)),
                            ("committed_ms", int(time.time() * 1000)), *self.clock.meta_rows(), *work.counters])
            db.execute("COMMIT")
        except BaseException:
            for t in new_topics:
                self.topics.forget(t)
            raise
        return deleted, len(new_acks), acked

    def _new_topic(self, topic: str, new_topics: list[str]) -> int:
        tid = self.db.execute("INSERT INTO topics (topic) VALUES (?)", (topic,)).lastrowid or 0
        self.topics.remember(tid, topic)
        new_topics.append(topic)
        return tid

    def _settle_acked(self, new_acks: list[int], deleted: int) -> Acked:
        """Record ``new_acks`` (inside the transaction): the acked rows still stored afterwards."""
        db = self.db
        acked = merge_ranges([*self.acked.ranges, *ranges(new_acks)])
        acked_rows = self.acked.rows + len(new_acks)
        if acked_rows and self.stored - deleted - len(new_acks) <= 0:
            # every stored row is acked: empty the table (pages freed, not rewritten). Verified
            # first: a miscount here must never delete an un-acked row.
            total = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            in_acked = count_in_ranges(db, acked)
            if total == in_acked:
                db.execute("DELETE FROM messages")
            else:
                log.error("outbox: pending count off (%d stored, %d acked); deleting acked rows only",
                          total, in_acked)
                delete_ranges(db, acked)
                self.stored = total - in_acked + deleted + len(new_acks)
            return NONE_ACKED
        if acked_rows > ACKED_LIMIT or (self.purge_acked and acked_rows):
            delete_ranges(db, acked)
            return NONE_ACKED
        return Acked(acked, acked_rows)

    def _committed(self, work: _Work) -> None:
        with self.staging.cond:
            self.staging.committed_locked(self.stored, work.deltas, [r[0] for r in work.batch])
            self.ledger.committed({r[0] for r in work.batch})
        self.claims.committed(work.batch)
        self.maintenance.store_ok()
        if self.staging.hold is not None:  # hold rows again once the disk reserve is back (room to spare)
            self.staging.set_holding(self.maintenance.reserve.exists())
        topic = self.ledger.report_topic
        self.maintenance.reports_stored(sum(1 for r in work.batch if r[2] == topic),
                                        len(work.victims.get(FOLDED, ())))

    def _notify(self, work: _Work) -> None:
        for reason, seqs in work.victims.items():
            if reason == FOLDED:
                continue
            log.warning("outbox: dropped %d message(s) (%s), reported on %s", len(seqs), reason,
                        self.ledger.report_topic)
            for fn in self.dropped_listeners:
                try:
                    fn(sorted(seqs), reason)
                except Exception:
                    log.exception("outbox dropped listener failed")
        if work.batch:
            self.claims.data_ready()
            seqs = [r[0] for r in work.batch]
            for fn in self.committed_listeners:
                try:
                    fn(seqs)
                except Exception:
                    log.exception("outbox committed listener failed")

    def _failed(self, work: _Work, err: BaseException) -> None:
        """Keep what could not be stored in memory (bounded) and retry; on disk full, make room."""
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
        full = is_disk_full(err)
        with self.staging.cond:
            self.staging.restore_locked(work.batch, work.acks)  # held rows too: memory_buffer bounds them all
            self.ledger.retry(work.victims)  # retried with their report (back in the batch)
            gone = self.staging.trim_locked(self.memory_buffer, keep=self.ledger.open_reports())
            self.ledger.dropped_from_memory(gone)
        self.maintenance.store_failed(full, sum(len(r[3]) + 32 for r in work.batch), err, self.memory_buffer)
        if full:
            self.next_maint = 0.0  # evict at once
        else:
            log.error("outbox: cannot store %d message(s): %s; kept in memory, retrying", len(work.batch), err)
        time.sleep(min(0.5, max(0.05, self.timing.commit_interval * 10)) if self.timing.commit_interval else 0.5)
