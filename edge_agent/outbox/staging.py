"""The memory side of the outbox: ``put()`` assigns the seq and queues the row here, ``accept()`` queues
the ack; the writer thread takes both in groups (group commit) and stores them in one transaction.

One condition variable (:attr:`Staging.cond`) guards all of it: the batch, the acks, the seq counter,
the counters, the flush/close handshake with the writer and the next expiry time. Methods named
``*_locked`` expect the caller to hold it (the writer and the ledger call them inside one critical
section); every other method takes it itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from edge_agent import codec
from edge_agent.errors import OutboxClosed
from edge_agent.message import MESSAGE_CLASSES, Outgoing, class_rank
from edge_agent.outbox.hold import Hold
from edge_agent.outbox.schema import COUNTERS, Row

MAX_BATCH = 2000  # rows per transaction at most; a full batch wakes the writer at once


class Staging:
    """Rows put but not yet stored, acks not yet recorded, and the counters. Thread-safe."""

    def __init__(self, path: Path, device_id: str, *, max_age: float, clock: Callable[[], float],
                 age_ms: Callable[[], int], hold: Hold | None = None) -> None:
        self.device_id = device_id
        self.hold = hold  # write-behind (None: every row is stored before it is visible)
        self._reserved = 0  # the seq sidecar's reservation: only seqs up to it may be held (sent unstored)
        self._renew_at = 0  # past this seq the writer moves the reservation on
        self._spill_all = False  # the link went down: spill everything held
        self._holding = True  # False while the disk refuses writes: every row goes to the batch
        self.max_age_ms = int(max_age * 1000)
        self._clock = clock  # the wall clock: the envelope's ts
        self._age_ms = age_ms  # the age clock (see .ageclock): created and expires
        self.cond = threading.Condition(threading.Lock())
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._batch: list[Row] = []
        self._acks: list[int] = []
        self._committing = 0  # rows of the batch the writer is committing right now
        self._stored = 0  # rows stored and not acked, as of the last commit
        self._next_seq = 1
        self._next_expiry_ms: int | None = None
        self._closed = True
        self._path = path
        self._closed_why = f"{path}: outbox is not open (call open() first)"
        self._flush_req = 0
        self._flush_done = 0

    def start(self, *, next_seq: int, stored: int, counters: dict[str, int], next_expiry_ms: int | None) -> None:
        """Open for put(): seqs continue at ``next_seq``."""
        with self.cond:
            self._next_seq = next_seq
            self._stored = stored
            self.counters.update(counters)
            self._next_expiry_ms = next_expiry_ms
            self._closed = False

    # ------------------------------------------------------------------ producers and the forwarder
    def make_row(self, msg: Outgoing, seq: int, now: float) -> Row:
        """The row of ``msg``; caller holds cond (``created`` is taken with the seq: never decreasing in
        seq order). A TTL counts from the moment the message is queued, on the age clock."""
        ts = msg.ts if msg.ts is not None else now
        created = self._age_ms()
        expires = created + int(msg.ttl * 1000) if msg.ttl else None
        props = codec.encode(msg.props) if msg.props else None
        prio = class_rank(msg.cls) if msg.cls in MESSAGE_CLASSES else 0
        if msg.raw is not None:
            payload = msg.raw
        else:
            extra = dict(msg.extra) if msg.extra else {}
            if msg.cls != "telemetry":
                extra.setdefault("cls", msg.cls)
            payload = codec.encode_envelope(self.device_id, seq, ts, msg.stream, msg.data, **extra)
        return (seq, prio, msg.topic, payload, created, expires, msg.qos, int(msg.retain), props)

    def put(self, msg: Outgoing) -> tuple[int, bool]:
        """Queue ``msg``: (its seq, whether it is held, i.e. visible to the forwarder at once)."""
        now = self._clock()
        with self.cond:
            if self._closed:
                raise OutboxClosed(self._closed_why)
            seq = self._next_seq
            self._next_seq += 1
            row = self.make_row(msg, seq, now)
            exp = row[5] if row[5] is not None else row[4] + self.max_age_ms
            if self._next_expiry_ms is None or exp < self._next_expiry_ms:
                self._next_expiry_ms = exp
            hold = self.hold
            if hold is not None and self._holding and seq <= self._reserved:
                hold.add(row, time.monotonic())
                self.counters["enqueued"] += 1
                if seq > self._renew_at or len(hold.prio) > hold.limit:
                    self.cond.notify()
                return seq, True
            self._batch.append(row)
            if len(self._batch) == 1 or len(self._batch) >= MAX_BATCH or seq > self._renew_at:
                self.cond.notify()
        return seq, False

    def accept(self, seqs: Iterable[int]) -> list[int]:
        """Record PUBACKs; the seqs that were held and are now gone without ever being stored."""
        gone: list[int] = []
        with self.cond:
            hold = self.hold
            wake = not self._acks and not self._batch
            for s in seqs:
                if hold is not None and hold.ack(s):
                    gone.append(s)
                else:
                    self._acks.append(s)
            if gone:
                self.counters["acked"] += len(gone)
            if wake and self._acks:
                self.cond.notify()
        return gone

    # ------------------------------------------------------------------ write-behind
    def held_rows(self, p: int, after: int, upto: int | None, limit: int | None = None) -> list[Row]:
        with self.cond:
            return [] if self.hold is None else self.hold.rows(p, after, upto, limit)

    def set_reserved(self, reserved: int, renew_margin: int) -> None:
        with self.cond:
            self._reserved = reserved
            self._renew_at = reserved - renew_margin

    def renew_due(self) -> int:
        """The highest seq assigned when the reservation must move on (0 when it need not)."""
        with self.cond:
            last = self._next_seq - 1
            return last if last > self._renew_at else 0

    def spill_all(self) -> None:
        """The link went down: store everything held now (its PUBACKs will not come)."""
        with self.cond:
            if self.hold is not None and self.hold.unspilled():
                self._spill_all = True
                self.cond.notify()

    def _spill_locked(self, everything: bool) -> None:
        hold = self.hold
        if hold is None:
            return
        rows = hold.take_due(time.monotonic(), everything=everything or self._spill_all)
        self._spill_all = False
        if rows:
            self._batch.extend(rows)

    def _hold_due_locked(self, now: float) -> bool:
        hold = self.hold
        if hold is None:
            return False
        due = hold.next_due()
        return self._spill_all or (due is not None and now >= due) or hold.unspilled() > hold.limit
    def count(self, name: str, n: int = 1) -> None:
        with self.cond:
            self.counters[name] = self.counters.get(name, 0) + n

    def adopt_counters(self, values: dict[str, int]) -> None:
        """Take over the known counters among ``values`` (e.g. read from a quarantined database)."""
        with self.cond:
            self.counters.update({k: v for k, v in values.items() if k in self.counters})

    def last_assigned(self) -> int:
        with self.cond:
            return self._next_seq - 1

    def pending(self) -> int:
        """Rows not yet acked: stored ones plus those still waiting in memory for their commit."""
        with self.cond:  # a batch moves _batch -> _committing -> _stored: never counted as zero
            held = self.hold.unspilled() if self.hold is not None else 0
            return self._stored + len(self._batch) + self._committing + held

    def unstored(self) -> int:
        """Rows put and neither stored nor acked (held or waiting for their commit)."""
        with self.cond:
            held = len(self.hold.prio) if self.hold is not None else 0
            return len(self._batch) + held

    def snapshot(self) -> tuple[dict[str, int], int]:
        """A copy of the counters, and how many rows wait in memory (held or waiting for a commit)."""
        with self.cond:
            held = self.hold.unspilled() if self.hold is not None else 0
            return dict(self.counters), len(self._batch) + held

    def skip_locked(self, upto: int) -> list[int]:
        """Never hand out a seq <= ``upto`` again (caller holds cond); the seqs skipped."""
        skipped = list(range(self._next_seq, upto + 1))
        if skipped:
            self._next_seq = upto + 1
        return skipped

    # ------------------------------------------------------------------ the ledger's report rows
    def append_locked(self, msg: Outgoing) -> int:
        """Queue ``msg`` with a new seq (caller holds cond); its seq."""
        seq = self._next_seq
        self._next_seq += 1
        self._batch.append(self.make_row(msg, seq, self._clock()))
        return seq

    def replace_locked(self, seq: int, msg: Outgoing) -> bool:
        """Re-encode the queued row ``seq`` as ``msg`` (caller holds cond); False if it left the batch."""
        idx = next((i for i, r in enumerate(self._batch) if r[0] == seq), None)
        if idx is None:
            return False
        self._batch[idx] = self.make_row(msg, seq, self._clock())
        return True

    # ------------------------------------------------------------------ expiry schedule
    def take_expiry(self, now_ms: int) -> tuple[bool, bool]:
        """(expiry due now, next expiry unknown): both mean maintenance must compute the next one."""
        with self.cond:
            nxt = self._next_expiry_ms
            if nxt is not None and now_ms >= nxt:
                self._next_expiry_ms = None
                return True, True
            return False, nxt is None

    def reschedule_expiry(self, ms: int | None) -> None:
        """The next expiry maintenance computed from the stored rows; puts since then may be earlier."""
        with self.cond:
            cur = self._next_expiry_ms
            self._next_expiry_ms = ms if cur is None else (cur if ms is None else min(cur, ms))

    # ------------------------------------------------------------------ the writer
    def next_cycle(self, *, next_maint: float, urgent: bool, heartbeat: Callable[[], None],
                   commit_interval: float, ack_interval: float) -> tuple[bool, int]:
        """Block until there is work (rows, acks, held rows due, a reservation to move on, a flush, close,
        maintenance due at ``next_maint``, or ``urgent``), then let more join (group commit, unless
        ``commit_interval`` is 0: then it commits at once and what arrives meanwhile joins the next).
        Returns (closing, flush request to satisfy)."""
        with self.cond:
            while True:
                now = time.monotonic()
                if (self._batch or self._acks or self._closed or self._flush_req > self._flush_done
                        or now >= next_maint or urgent or self._next_seq - 1 > self._renew_at
                        or self._hold_due_locked(now)):
                    break
                self.cond.wait(self._wait_locked(now, next_maint))
                self.cond.release()  # a beat never holds the lock (a stuck beat must not block put())
                try:
                    heartbeat()
                finally:
                    self.cond.acquire()
            self._spill_locked(self._closed or self._flush_req > self._flush_done)
            self._linger_locked(commit_interval, ack_interval)
            return self._closed, self._flush_req

    def _wait_locked(self, now: float, next_maint: float) -> float:
        left = next_maint - now
        hold = self.hold
        if hold is not None:  # a put into the hold does not wake the writer: look again soon
            due = hold.next_due()
            left = min(left, hold.flush_after / 2 if due is None else due - now)
        return max(0.002, min(1.0, left))

    def lowest_prio(self) -> int:
        """The lowest class waiting in memory for its commit (the highest when none)."""
        with self.cond:
            return min((r[1] for r in self._batch), default=len(MESSAGE_CLASSES) - 1)

    def set_holding(self, on: bool) -> None:
        """Hold rows again (write-behind) once the disk has room again; see :meth:`restore_locked`."""
        with self.cond:
            self._holding = on

    def defer_renew(self, n: int = 100) -> None:
        """Moving the reservation failed: try again after ``n`` more seqs (or the next commit)."""
        with self.cond:
            self._renew_at = max(self._renew_at, self._next_seq - 1 + n)

    def _linger_locked(self, commit_interval: float, ack_interval: float) -> None:
        """Group commit: wait for more readings and acks, bounded by ``commit_interval`` (acks alone wait
        ``ack_interval``: a late ack costs at most a duplicate after a crash)."""
        acks_only = not self._batch
        deadline = time.monotonic() + (ack_interval if acks_only else commit_interval)
        while not self._closed and self._flush_req <= self._flush_done and len(self._batch) < MAX_BATCH:
            if acks_only and self._batch:
                acks_only = False
                deadline = min(deadline, time.monotonic() + commit_interval)
            left = deadline - time.monotonic()
            if left <= 0 or not (self._batch or self._acks):
                break
            self.cond.wait(left)

    def take_locked(self) -> tuple[list[Row], list[int], int]:
        """Hand the batch and the acks to the writer; the rows still count as pending meanwhile. Also
        (the number of rows in it that were not held: new to the counters)."""
        batch, self._batch = self._batch, []
        acks, self._acks = self._acks, []
        fresh = len(batch)
        hold = self.hold
        if hold is not None:
            if batch:  # every held row below a stored seq is stored with it (crash accounting)
                batch.extend(hold.take_due(time.monotonic(), below=max(r[0] for r in batch)))
            if hold.spilled and acks:  # acked while waiting for their commit: never stored
                ackset = set(acks)
                both = {r[0] for r in batch if r[0] in ackset}
                if both:
                    batch = [r for r in batch if r[0] not in both]
                    acks = [s for s in acks if s not in both]
                    hold.committed(list(both))
                    self.counters["acked"] += len(both)
            fresh = sum(1 for r in batch if r[0] not in hold.spilled)
        self._committing = len(batch)
        return batch, acks, fresh

    def counters_after_locked(self, deltas: dict[str, int]) -> list[tuple[str, int]]:
        """The counters as the commit adding ``deltas`` will store them (meta rows)."""
        after = dict(self.counters)
        for k, v in deltas.items():
            after[k] += v
        return [(f"c.{k}", v) for k, v in after.items()]

    def committed_locked(self, stored: int, deltas: dict[str, int], seqs: list[int]) -> None:
        self._committing = 0
        if self.hold is not None:
            self.hold.committed(seqs)
        self._stored = stored
        for k, v in deltas.items():
            self.counters[k] += v

    def restore_locked(self, batch: list[Row], acks: list[int]) -> None:
        """A commit failed: its rows and acks go back in front, to be retried."""
        self._committing = 0
        self.counters["store_errors"] += 1
        self._batch[:0] = batch
        self._acks[:0] = acks
        if self.hold is not None:  # the disk refuses writes: everything is bounded like the batch, as if
            self._holding = False  # durable, until a commit succeeds again
            self._batch.extend(self.hold.take_due(time.monotonic(), everything=True))

    def trim_locked(self, limit: int, keep: set[int]) -> list[int]:
        """Beyond ``limit`` rows in memory, drop the lowest class, oldest first (never ``keep``); the
        dropped seqs."""
        overflow = len(self._batch) - limit
        if overflow <= 0:
            return []
        order = sorted((r[1], r[0]) for r in self._batch if r[0] not in keep)
        gone = {seq for _, seq in order[:overflow]}
        self._batch = [r for r in self._batch if r[0] not in gone]
        if self.hold is not None:
            self.hold.committed(sorted(gone))
        self.counters["dropped_memory"] += len(gone)
        return sorted(gone)

    def cycle_done(self, ok: bool, closing: bool, flush_target: int) -> bool:
        """After a cycle: satisfy flushes, wake waiters; True when the writer should stop."""
        with self.cond:
            if ok or closing:
                self._flush_done = max(self._flush_done, flush_target)
            self.cond.notify_all()
            return closing and (not (self._batch or self._acks) or not ok)

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: float, writer_alive: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            self._flush_req += 1
            target = self._flush_req
            self.cond.notify_all()
            while self._flush_done < target:
                left = deadline - time.monotonic()
                if left <= 0 or not writer_alive():
                    return False
                self.cond.wait(left)
        return True

    def close(self) -> bool:
        """No more put(); the writer stores what is left and stops. False if it was not open."""
        with self.cond:
            if self._closed:
                return False
            self._closed = True
            self._closed_why = f"{self._path}: outbox is closed"
            self.cond.notify_all()
        return True
