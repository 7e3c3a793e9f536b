"""Where each of our outgoing messages is: outbox seq -> message id, and every status transition.

::

    put (under the lock, so no outbox callback can miss the seq)  --> "pending"
    host.on_committed(seqs)                      --> queued     (a file: once every chunk is stored)
    host.on_ack(seq, Accepted)                   --> sent       (a file: once every chunk is)
    host.on_ack(seq, Refused(code))              --> failed     (the broker refused it)
    host.on_ack(seq, LinkLost)                   --> unchanged  (released; the outbox sends it again)
    host.on_dropped(seqs, "expired" | reason)    --> expired | failed
    receipts from the recipient (service)        --> delivered | read

A status is reported once per step of the normal path, in order, even when evidence arrives out of order
(a receipt can overtake the PUBACK). Receipts we send are tracked too: once the outbox has committed one,
the history records it, so a crash before that commit makes the next start send it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from edge_agent.errors import EdgeAgentError
from edge_agent.host import Accepted, Ack, Host, LinkLost, Outgoing, Refused
from edge_agent.messaging.history import FINAL, History, HistoryError, Message
from edge_agent.messaging.recovery import RECEIPT_BATCH, Reconcile
from edge_agent.messaging.snapshots import NORMAL_PATH, SNAPSHOTS_KEPT, Snapshots
from edge_agent.transport.topics import receipts_topic

log = logging.getLogger("edge_agent.messaging")
T = TypeVar("T", str, Message)

_DONE = ("sent", "delivered", "read", *FINAL)  # the broker has it, or it is over: no seq left to watch
RECEIPT_LEVEL = {"delivered": 1, "read": 2}
ACK_CHUNK = 256  # PUBACKs recorded per history transaction at most
STORE_DELAY = 0.02  # seconds history rows wait (at most) for others to join their transaction ...
STORE_ROWS = 500  # ... unless this many wait
__all__ = ["ACK_CHUNK", "NORMAL_PATH", "RECEIPT_BATCH", "RECEIPT_LEVEL", "SNAPSHOTS_KEPT", "Tracker"]


class Tracker(Snapshots, Reconcile):
    """Owns the seq bookkeeping of one messaging service; ``emit(mid)`` reports a status change (as stored),
    ``report(message)`` one whose snapshot is at hand.

    Its thread also stores the history rows :meth:`History.add_later` queued (before the PUBACKs it
    records, and without holding the tracker's lock, so send() never waits for that transaction)."""

    def __init__(self, host: Host, history: History, *, prefix: str, emit: Callable[[str], None],
                 seal: Callable[[str], dict[str, Any]], report: Callable[[Message], None] | None = None) -> None:
        self._host = host
        self._seal = seal  # topic -> the envelope extra that signs it (authn.Authenticator.extra)
        self._history = history
        self._prefix = prefix
        self._emit = emit
        self._report = report or (lambda m: emit(m.id))
        self._lock = threading.RLock()
        self._tracked: dict[int, str] = {}
        self._seqs: dict[str, set[int]] = {}  # mid -> its tracked seqs (the reverse of _tracked)
        # messages of one seq put by put_message() whose status has not moved since: their "pending" snapshot
        # (PUBACKs are recorded in bulk from it); any other status change takes a message out
        self._simple: dict[str, Message] = {}
        self._flush_due = False  # history rows wait to be stored (History.add_later)
        self._flush_at = 0.0  # when the rows queued since _flush_due was set are stored at the latest
        self._polling = False  # the thread looks for rows every STORE_DELAY (until _busy_until) ...
        self._busy_until = 0.0  # ... for a second after it last stored some
        self._room = threading.Condition(threading.Lock())
        self._early_acks: dict[int, Ack] = {}  # PUBACKs of seqs put_message() had not recorded yet
        self._early_commits: set[int] = set()  # outbox commits of such seqs
        self._receipt_seqs: dict[int, tuple[list[str], int]] = {}  # seq of a receipt -> (mids, level)
        self._filling: set[str] = set()  # files whose chunks are still being put: no status moves yet
        self._acks: list[tuple[int, Ack]] = []  # PUBACKs waiting for the ack thread (one transaction each batch)
        self._acks_cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._busy = False  # the ack thread is recording a batch
        self._putting = 0  # puts under way: their PUBACK may come before the seq is recorded (write-behind)

    # ------------------------------------------------------------------ the ack thread
    def start(self) -> None:
        """Record PUBACKs on a thread of their own, many per history transaction (not on the network
        thread, one transaction per status step). Before start() they are recorded at once."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run_acks, name="messaging-acks", daemon=True)
            self._thread.start()
            self._history.store_later(True)  # send() journals its row; this thread stores it

    def stop(self, timeout: float = 5.0) -> None:
        """Record what is queued, then stop the ack thread."""
        t = self._thread
        if t is None:
            return
        with self._acks_cond:
            self._stopping = True
            self._acks_cond.notify()
        if t is not threading.current_thread():
            t.join(timeout)
        self._thread = None
        try:
            self._history.store_later(False)
        except HistoryError as e:
            log.warning("history rows left in the journal for the next start: %s", e)

    def wake(self, soon: bool = False) -> None:
        """History rows were queued to be stored (History.add_later): the thread stores them within
        :data:`STORE_DELAY` (more join that transaction; every read stores them first anyway), or at once
        when ``soon`` (statuses waiting to be reported)."""
        with self._acks_cond:
            at = time.monotonic() + (0.0 if soon else STORE_DELAY)
            if not self._flush_due or at < self._flush_at:
                self._flush_due = True
                self._flush_at = at
                if soon or not self._polling:  # a polling thread finds it within STORE_DELAY anyway
                    self._acks_cond.notify()
        if self._thread is None:
            self._store_waiting()

    def _run_acks(self) -> None:
        while True:
            with self._acks_cond:
                while not (self._acks or self._stopping):
                    if not self._flush_due:
                        # rows came lately: look again in STORE_DELAY rather than be woken by each send()
                        self._polling = time.monotonic() < self._busy_until
                        self._acks_cond.wait(STORE_DELAY if self._polling else None)
                        continue
                    left = self._flush_at - time.monotonic()
                    if left <= 0 or self._history.waiting >= STORE_ROWS:
                        break
                    self._acks_cond.wait(left)
                if self._stopping and not (self._acks or self._flush_due):
                    return
            self._record_acks()
            if self._flush_due and (self._stopping or time.monotonic() >= self._flush_at
                                    or self._history.waiting >= STORE_ROWS):
                self._flush_due = False
                self._busy_until = time.monotonic() + 1.0
                self._store_waiting()

    def _store_waiting(self) -> None:
        """Store the queued history rows: one transaction, without the tracker's lock."""
        if self._history.waiting:
            try:
                with self._history.batch():
                    pass
            except HistoryError as e:
                log.warning("history rows not stored yet (kept in the journal): %s", e)

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until the PUBACKs received so far are recorded in the history; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._acks or self._busy or self._flush_due or self._history.waiting:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def _record_acks(self) -> None:
        with self._acks_cond:
            batch, self._acks = self._acks, []
            self._busy = bool(batch)
        if not batch:
            return
        try:
            self._record(batch)
        finally:
            self._busy = False

    def _record(self, batch: list[tuple[int, Ack]]) -> None:
        for i in range(0, len(batch), ACK_CHUNK):  # put() gets the lock between chunks
            part = batch[i:i + ACK_CHUNK]
            with self._lock:
                try:
                    rest = self._sent_in_bulk(self._early(part))
                    if rest:
                        with self._history.batch():
                            for seq, ack in rest:
                                self._ack_one(seq, ack)
                except HistoryError as e:
                    log.debug("%d ack(s) not recorded: %s", len(part), e)

    # ------------------------------------------------------------------ putting
    def put(self, build: Callable[[float], Outgoing], record: Callable[[int, float], str], *,
            announce: bool = True) -> str:
        """Put ``build(ts)`` into the outbox and let ``record(seq, ts)`` store it in the history (returning
        the id of the message it belongs to), all under the lock; report "pending" if ``announce``."""
        with self._lock:
            mid = self._put(build, record)
            if announce:
                self._emit(mid)  # under the lock: "pending" is reported before any later status
            return mid

    def _put(self, build: Callable[[float], Outgoing], record: Callable[[int, float], T]) -> T:
        ts = time.time()
        self._putting += 1  # until the seq is recorded (see on_ack)
        try:
            seq = self._host.put(build(ts))
            r = record(seq, ts)
            self._track(seq, r if isinstance(r, str) else r.id)  # type: ignore[attr-defined]
        finally:
            self._putting -= 1
        return r

    def _track(self, seq: int, mid: str) -> None:
        self._tracked[seq] = mid
        self._seqs.setdefault(mid, set()).add(seq)

    def _untrack(self, seq: int) -> None:
        mid = self._tracked.pop(seq, None)
        seqs = self._seqs.get(mid) if mid is not None else None
        if seqs is not None:
            seqs.discard(seq)
            if not seqs:
                del self._seqs[mid]  # type: ignore[arg-type]
                self._simple.pop(mid, None)  # type: ignore[arg-type]

    def begin_fill(self, mid: str) -> None:
        """A file's chunks are being put: its status waits for :meth:`end_fill`."""
        with self._lock:
            self._filling.add(mid)

    def end_fill(self, mid: str, *, failure: str | None = None) -> None:
        """All chunks are put (the status catches up now), or putting them failed with ``failure``.

        Every chunk may already be stored and acknowledged by now (a fast broker, a slow putter): their
        states wait in the history for this call (see :meth:`_accepted`), which moves the status."""
        with self._lock:
            self._filling.discard(mid)
            if failure is not None:
                self.advance(mid, "failed", failure)
                return
            self._follow_outseqs(mid, self._history.min_outseq_state(mid))

    def send_receipt(self, to: str, mids: list[str], status: str, **more: Any) -> None:
        """Put a receipt for ``mids`` (received from ``to``); errors are logged, never raised."""
        level = RECEIPT_LEVEL.get(status)
        topic = receipts_topic(self._prefix, to)
        msg = Outgoing(topic=topic, stream="receipts", data={"status": status, "ids": mids, **more}, cls="event",
                       extra=self._seal(topic) or None)
        with self._lock:  # so the commit callback cannot run before the seq is recorded
            self._putting += 1  # until the seq is recorded (see on_ack)
            try:
                seq = self._host.put(msg)
                if level is not None:
                    self._receipt_seqs[seq] = (list(mids), level)
            except (EdgeAgentError, ValueError) as e:
                log.warning("receipt %s for %d message(s) to %s not queued: %s", status, len(mids), to, e)
                return
            finally:
                self._putting -= 1

    # ------------------------------------------------------------------ status
    def advance(self, mid: str, target: str, reason: str = "") -> bool:
        """Move ``mid`` to ``target``, recording (and reporting) every intermediate step of the normal
        path; True if it moved at all."""
        with self._lock:
            if mid in self._filling:
                return False
            self._simple.pop(mid, None)  # its status moves here: no longer the snapshot's
            m = self._history.get(mid)
            if m is None or not m.outgoing:
                return False
            steps = [target]
            if target in NORMAL_PATH and m.status in NORMAL_PATH:
                now, end = NORMAL_PATH.index(m.status), NORMAL_PATH.index(target)
                steps = list(NORMAL_PATH[now + 1:end + 1])
            moved = False
            for s in steps:
                if self._history.set_status(mid, s, reason if s == target else ""):
                    self._emit(mid)
                    moved = True
            if target in _DONE:
                self.forget(mid)
            return moved

    def forget(self, mid: str) -> None:
        """Stop watching the seqs of ``mid`` (it is over, e.g. expired)."""
        with self._lock:
            for seq in list(self._seqs.get(mid, ())):
                self._untrack(seq)

    # ------------------------------------------------------------------ host callbacks
    def on_committed(self, seqs: list[int]) -> None:
        with self._lock:
            if self._putting:  # a seq put_message() has not recorded yet: looked at once it has
                self._early_commits.update(s for s in seqs if s not in self._tracked)
            if not self._receipt_seqs and not any(s in self._tracked for s in seqs):
                return
            try:
                rest = self._queued_in_bulk([s for s in seqs if s in self._tracked])
                if rest or self._receipt_seqs:
                    with self._history.batch():  # one transaction for the whole commit's worth
                        self._committed(seqs, rest)
            except HistoryError as e:
                log.debug("commit of %d message(s) not recorded: %s", len(seqs), e)

    def _committed(self, seqs: list[int], hits: list[int]) -> None:
        self._receipts_committed(seqs)
        if not hits:
            return
        states = self._history.mark_outseqs(hits, 1)
        for mid, st in states.items():
            if st is not None and st >= 1:
                self.advance(mid, "queued")

    def _receipts_committed(self, seqs: list[int]) -> None:
        for s in seqs if self._receipt_seqs else ():
            rc = self._receipt_seqs.pop(s, None)
            if rc is not None:
                try:
                    self._history.set_receipt_stored(*rc)
                except HistoryError as e:
                    log.debug("receipt commit not recorded: %s", e)

    def on_ack(self, seq: int, ack: Ack) -> None:
        if isinstance(ack, LinkLost) or (seq not in self._tracked and seq not in self._receipt_seqs
                                         and not self._putting):
            # released to be sent again, or not ours (telemetry: no lock on the PUBACK hot path; a put
            # under way may not have recorded its seq yet: then it is looked at under the lock)
            return
        with self._acks_cond:
            self._acks.append((seq, ack))
            if len(self._acks) == 1:
                self._acks_cond.notify()
        if self._thread is None:
            self._record_acks()

    def _ack_one(self, seq: int, ack: Ack) -> None:
        if seq in self._receipt_seqs and isinstance(ack, Accepted):
            self._receipts_committed([seq])  # the broker has it: no longer owed (it may never be stored)
        mid = self._tracked.get(seq)
        if mid is None:
            return
        try:
            match ack:
                case Accepted():
                    self._accepted(seq, mid)
                case Refused():
                    self.advance(mid, "failed", f"the broker refused the message ({ack})")
        except HistoryError as e:
            log.debug("ack for %s not recorded: %s", mid, e)

    def _accepted(self, seq: int, mid: str) -> None:
        states = self._history.mark_outseqs([seq], 2)
        self._untrack(seq)
        self._follow_outseqs(mid, states.get(mid))

    def _follow_outseqs(self, mid: str, st: int | None) -> None:
        """Move ``mid`` to what the lowest state of its seqs says (None: none tracked): 2 sent (then its
        seqs are forgotten), 1 queued (a file with chunks still on their way, every one stored)."""
        if st is None:
            return
        if st >= 2:
            if mid in self._filling:  # every chunk put so far is acknowledged, more may follow: the
                return                # states stay for end_fill(), which moves the status
            self.advance(mid, "sent")
            self._history.forget_mid(mid)
        elif st >= 1:
            self.advance(mid, "queued")

    def on_dropped(self, seqs: Iterable[int], reason: str) -> None:
        with self._lock:
            for seq in seqs:
                mid = self._tracked.get(seq)
                if mid is None:
                    continue
                try:
                    if reason == "expired":
                        self.advance(mid, "expired", "the outbox dropped it: time-to-live ran out")
                    else:
                        self.advance(mid, "failed", f"the outbox dropped it: {reason}")
                except HistoryError as e:
                    log.debug("drop of %s not recorded: %s", mid, e)
