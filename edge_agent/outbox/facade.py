"""The :class:`Outbox`: what the rest of the agent sees of the queue. Thin: each call goes to one part.

::

    put() ------> Staging (memory batch, seqs) --group commit--> Writer --> SQLite (WAL)
    accept() ---> Staging (acks)                                   |  maintain: Maintenance -> Ledger
    begin()/release()/wait() --> Claims (reader connection) <------'
    open() ----> Opener (precheck, quarantine, salvage, seq sidecar) -> Writer thread started
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edge_agent.errors import OutboxError
from edge_agent.message import Outgoing, Pending
from edge_agent.outbox.ageclock import AgeClock, boottime, read_boot_id
from edge_agent.outbox.claims import Claims
from edge_agent.outbox.continuity import QUARANTINE_KEEP, prune_quarantine
from edge_agent.outbox.hold import Hold
from edge_agent.outbox.ledger import DROPPED_STREAM, Ledger
from edge_agent.outbox.maintenance import DiskReserve, Maintenance
from edge_agent.outbox.rangeset import ranges
from edge_agent.outbox.recovery import SEQ_RESERVE, Opener, Recovered, SeqSidecar, purge_stored_acks
from edge_agent.outbox.reopen import Reopener
from edge_agent.outbox.runstate import RunState, Unclean
from edge_agent.outbox.schema import COUNTERS, Topics, meta_int
from edge_agent.outbox.staging import Staging
from edge_agent.outbox.stats import OutboxStats
from edge_agent.outbox.writer import CommittedListener, DroppedListener, Timing, Writer

log = logging.getLogger("edge_agent.outbox")

CORRUPT_STREAM = "events/outbox_corrupt"
LOST_STREAM = "events/outbox_lost"  # alarm: the database or its WAL was lost, emptied, rewound or foreign
MODES = ("write_behind", "durable")


class Outbox:
    """See the package docstring. Thread-safe; one writer thread owns all writes.

    ``Outbox(...)`` only stores its parameters; :meth:`open` opens (checks, recovers) the database and
    starts the writer, and returns the outbox: ``ob = Outbox(path, dev).open()``.
    """

    def __init__(self, path: str | os.PathLike[str], device_id: str, *, max_age: float = 7 * 86400.0,
                 max_bytes: int = 256 * 1024 * 1024, commit_interval: float = 0.0, sync: str = "normal",
                 memory_buffer: int = 10000, clock: Callable[[], float] = time.time,
                 topic_prefix: str = "edge", min_free: int = 16 * 1024 * 1024,
                 reserve_bytes: int | None = None, ack_interval: float = 0.25,
                 maintenance_interval: float = 1.0, check_timeout: float = 30.0,
                 boot_clock: Callable[[], float] | None = None, boot_id: Callable[[], str] | None = None,
                 mode: str = "write_behind", flush_after: float = 0.5, hold_limit: int = 20000,
                 quarantine_keep: int = QUARANTINE_KEEP) -> None:
        if mode not in MODES:
            raise ValueError(f"outbox mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self.device_id = device_id
        self.topic_prefix = topic_prefix
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.min_free = min_free
        self.reserve_bytes = reserve_bytes if reserve_bytes is not None else \
            max(256 * 1024, min(4 * 1024 * 1024, max_bytes // 16))
        self.timing = Timing(commit_interval, max(ack_interval, commit_interval), maintenance_interval)
        self.check_timeout = check_timeout
        self.quarantine_keep = quarantine_keep
        self.sync = sync
        self.memory_buffer = memory_buffer
        self._clock = clock
        self._age = AgeClock(wall=clock, boot=boot_clock or boottime, boot_id=boot_id or read_boot_id)
        self.recovered: dict[str, Any] | None = None
        self._heartbeat: Callable[[], None] = lambda: None
        self._committed: list[CommittedListener] = []
        self._dropped: list[DroppedListener] = []
        self._topics = Topics()
        self._staging = Staging(self.path, device_id, max_age=max_age, clock=clock, age_ms=self._age.now_ms,
                                hold=Hold(flush_after, hold_limit) if mode == "write_behind" else None)
        self._ready: list[Callable[[], None]] = []
        self.unclean: Unclean | None = None  # what the last run left unaccounted (crash, power cut)
        self._run: RunState | None = None
        self._ledger = Ledger(self._staging, self._topic(DROPPED_STREAM))
        self._claims = Claims(self._topics)
        self._maintenance: Maintenance | None = None
        self._writer: Writer | None = None
        # The per-message calls go straight to their part: no extra frame on the hot path (the methods
        # below document them and are what type checkers see).
        self.count = self._staging.count  # type: ignore[method-assign]
        self.begin = self._claims.begin  # type: ignore[method-assign]
        self.release = self._claims.release  # type: ignore[method-assign]

    def _topic(self, stream: str) -> str:
        return f"{self.topic_prefix}/{self.device_id}/{stream}"

    # ------------------------------------------------------------------ open and close
    def open(self) -> Outbox:
        """Open (creating, migrating or recovering) the database and start the writer; returns self."""
        if self._writer is not None:
            raise OutboxError(f"{self.path}: outbox already opened")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        reserve = DiskReserve(self.path.with_name(self.path.name + ".reserve"), self.reserve_bytes)
        sidecar = SeqSidecar(self.path.with_name(self.path.name + ".seq"))
        db, rec = Opener(self.path, sync=self.sync, check_timeout=self.check_timeout, reserve=reserve,
                         sidecar=sidecar).open()
        prune_quarantine(self.path, self.quarantine_keep, protect=Path(rec.file) if rec is not None else None)
        run = RunState(self.path.with_name(self.path.name + ".run"))
        self.unclean = run.previous(max(meta_int(db, "last_seq"), rec.last_seq if rec else 0), sidecar.reserved)
        writer = self._make_writer(db, reserve, sidecar, rec)
        with contextlib.suppress(OSError):  # retried before the first commit that needs it
            writer.write_sidecar(writer.last_seq + SEQ_RESERVE)
        reserve.ensure()
        self._claims.attach(self.path)
        if self._staging.hold is not None:
            self._claims.hold_from(self._staging.held_rows)
        if rec is not None:
            self.recovered = rec.as_dict()
            self._report_recovery(rec)
        if self.unclean is not None and self.unclean.last >= self.unclean.first:
            with self._staging.cond:
                self._ledger.account(self.unclean.reason, rngs=[[self.unclean.first, self.unclean.last]])
        run.running()
        self._run = run
        writer.heartbeat = self._heartbeat
        writer.reopener = Reopener(self.path, self.sync, sidecar, self.quarantine_keep)
        writer.on_reopened = self._report_lost
        self._writer = writer
        writer.start()
        return self

    def _make_writer(self, db: sqlite3.Connection, reserve: DiskReserve, sidecar: SeqSidecar,
                     rec: Recovered | None) -> Writer:
        """Load the state kept in the database and build the writer around it (no thread yet)."""
        last_seq = max(meta_int(db, "last_seq"), rec.last_seq if rec else 0)
        self._age.start(db)
        if self.unclean is not None:  # seqs are never assigned twice: continue after the lost ones
            last_seq = max(last_seq, self.unclean.last)
        acked = purge_stored_acks(db)
        stored = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] - acked.rows
        self._topics.load(db)
        rid = self._topics.ids.get(self._ledger.report_topic)
        reports = 0 if rid is None else db.execute("SELECT COUNT(*) FROM messages WHERE topic = ?",
                                                   (rid,)).fetchone()[0]
        maint = Maintenance(db, self.path.parent, max_age=self.max_age, max_bytes=self.max_bytes,
                            min_free=self.min_free, reserve=reserve, report_rows=reports)
        self._staging.start(next_seq=last_seq + 1, stored=stored,
                            counters={name: meta_int(db, f"c.{name}") for name in COUNTERS},
                            next_expiry_ms=maint.min_expiry())
        self._maintenance = maint
        return Writer(db, staging=self._staging, claims=self._claims, ledger=self._ledger, maintenance=maint,
                      topics=self._topics, sidecar=sidecar, timing=self.timing, memory_buffer=self.memory_buffer,
                      clock=self._age, last_seq=last_seq, stored=stored, acked=acked,
                      committed=self._committed, dropped=self._dropped)

    def _report_recovery(self, rec: Recovered) -> None:
        """Queue the ``events/outbox_corrupt`` (or ``events/outbox_lost``) alarm and account the lost seqs
        (reason ``"corrupt"``, ``"db_lost"`` or ``"wal_lost"``)."""
        self._staging.adopt_counters(rec.counters)  # the damaged file's, as far as they could be read
        if rec.reason == "corrupt":
            self._staging.count("corrupt_recovered")
        if rec.lost:
            with self._staging.cond:
                self._ledger.account(rec.reason, rec.lost)
        self._report_lost({"file": rec.file, "error": rec.error, "salvaged": rec.salvaged, "lost": len(rec.lost),
                           "ranges": ranges(rec.lost), "reason": rec.reason})

    def _report_lost(self, info: dict[str, Any]) -> None:
        """The alarm-class event of a recovery or a lost file (the writer calls it on a vanished file)."""
        stream = CORRUPT_STREAM if info.get("reason") == "corrupt" else LOST_STREAM
        data = {k: v for k, v in info.items() if k != "reason" or stream == LOST_STREAM}
        self.put(Outgoing(topic=self._topic(stream), stream=stream, cls="alarm", data=data))

    def flush(self, timeout: float = 10.0) -> bool:
        """Commit everything put so far; return False on timeout (e.g. the disk refuses writes)."""
        if self._writer is None:
            return False
        return self._staging.flush(timeout, self._writer.alive)

    def close(self, timeout: float = 10.0) -> None:
        writer = self._writer
        if writer is None or not self._staging.close():
            return
        writer.join(timeout)
        self._claims.close()
        if not writer.release(lambda: self._stop(writer)):
            log.warning("outbox: %s: the writer did not finish within %.1f s; it completes the stop when "
                        "its commit is done, and the next start accounts for what it did not store",
                        self.path, timeout)

    def _stop(self, writer: Writer) -> None:
        """The end of close(), once the writer's loop has returned (on its thread, if close() gave up
        waiting): a clean stop records the last seq when nothing is held or waiting for a commit."""
        if self._staging.unstored() == 0 and writer.finish(self.last_assigned):
            writer.close_db()
            if self._run is not None:
                self._run.stopped()
            return
        writer.close_db()

    # ------------------------------------------------------------------ producers
    def put(self, msg: Outgoing) -> int:
        """Queue ``msg`` and return its seq. Never blocks on the network or disk. Write-behind: the
        forwarder may send it at once; durable: once its commit is done."""
        seq, held = self._staging.put(msg)
        if held:
            self._claims.data_ready()
            for fn in self._ready:
                fn()
        return seq

    def on_ready(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (quickly; from the producer's thread) whenever a held row becomes sendable."""
        self._ready.append(fn)

    def link_lost(self) -> None:
        """The connection dropped: store every held row now (write-behind; no-op when durable)."""
        self._staging.spill_all()

    def skip_to(self, seq: int, reason: str = "crash") -> list[int]:
        """Never hand out a seq <= ``seq`` again and report the skipped ones in ``events/dropped``.

        For a client that recorded seqs put just before the last process died, uncommitted (messaging
        uses seqs as message ids): without this, the next put()s would get them again."""
        with self._staging.cond:
            skipped = self._staging.skip_locked(seq)
            if skipped:
                self._ledger.account(reason, skipped)
                self._staging.cond.notify()
        return skipped

    def on_committed(self, fn: Callable[[list[int]], None]) -> None:
        """Call ``fn(seqs)`` from the writer thread after rows are durably stored."""
        self._committed.append(fn)

    def on_dropped(self, fn: Callable[[list[int], str], None]) -> None:
        """Call ``fn(seqs, reason)`` from the writer thread after rows are gone without a PUBACK.

        ``reason`` is ``"capacity"``, ``"expired"``, ``"disk_full"``, ``"corrupt"``, ``"db_lost"`` or
        ``"wal_lost"``.
        """
        self._dropped.append(fn)

    # ------------------------------------------------------------------ the forwarder
    def begin(self, limit: int, *, live_after: int | None = None, part: str = "all") -> list[Pending]:
        """Claim up to ``limit`` committed, unclaimed rows, highest class first, then by seq.

        ``part`` splits the queue for a throttled drain: ``"live"`` is every alarm/event plus any row
        with seq > ``live_after``; ``"backlog"`` is the rest (telemetry/inference up to ``live_after``).
        """
        return self._claims.begin(limit, live_after=live_after, part=part)

    def accept(self, seqs: Iterable[int]) -> None:
        """The broker acknowledged these: forget the held ones, delete the stored ones in the next commit."""
        gone = self._staging.accept(seqs)
        if gone:
            self._claims.forget(gone)

    def release(self, seqs: Iterable[int]) -> None:
        """Return claimed rows to the queue (e.g. the connection dropped before PUBACK)."""
        self._claims.release(seqs)

    def wait(self, timeout: float) -> bool:
        """Wait until committed rows may be available."""
        return self._claims.wait(timeout)

    def count(self, name: str, n: int = 1) -> None:
        self._staging.count(name, n)

    # ------------------------------------------------------------------ figures
    @property
    def heartbeat(self) -> Callable[[], None]:
        """Called by the writer at least once a second while it runs (a watchdog's liveness signal)."""
        return self._heartbeat

    @heartbeat.setter
    def heartbeat(self, fn: Callable[[], None]) -> None:
        self._heartbeat = fn
        if self._writer is not None:
            self._writer.heartbeat = fn

    @property
    def counters(self) -> dict[str, int]:
        """The live counters (enqueued, sent, acked, evicted, ...); stored with every commit."""
        return self._staging.counters

    @property
    def last_seq(self) -> int:
        """The highest committed seq."""
        return self._writer.last_seq if self._writer is not None else 0

    @property
    def last_assigned(self) -> int:
        """The highest seq handed out by put() (committed or not)."""
        return self._staging.last_assigned()

    @property
    def pending(self) -> int:
        """Messages not yet acked: stored ones plus those still waiting in memory for their commit (so
        "pending == 0" really means drained, also right after a burst of put())."""
        return self._staging.pending()

    def stats(self) -> OutboxStats:
        st = self._claims.stats(self.path, self._age.now())
        st.counters = self._staging.snapshot()[0]
        st.max_bytes = self.max_bytes
        return st

    def status(self) -> dict[str, Any]:
        """Cheap figures for the retained status message (no table scan)."""
        created = self._claims.oldest_created_ms()
        age = round(max(0.0, self._age.now() - created / 1000.0), 3) if created is not None else 0.0
        counters, memory = self._staging.snapshot()
        pending = self.pending
        disk_full = self._maintenance is not None and self._maintenance.disk_full
        return {"pending": pending, "backlog": pending, "last_seq": self.last_seq, "oldest_age_s": age,
                "memory": memory, "disk_full": disk_full, **counters}

