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
from typing import Any

from edge_agent.errors import EdgeAgentError
from edge_agent.host import Accepted, Ack, Host, LinkLost, Outgoing, Refused
from edge_agent.messaging.history import FINAL, History, HistoryError
from edge_agent.transport.topics import receipts_topic

log = logging.getLogger("edge_agent.messaging")

NORMAL_PATH = ("pending", "queued", "sent", "delivered", "read")
_DONE = ("sent", "delivered", "read", *FINAL)  # the broker has it, or it is over: no seq left to watch
RECEIPT_LEVEL = {"delivered": 1, "read": 2}
RECEIPT_BATCH = 500
ACK_CHUNK = 64  # PUBACKs recorded per history transaction at most


class Tracker:
    """Owns the seq bookkeeping of one messaging service; ``emit(mid)`` reports a status change."""

    def __init__(self, host: Host, history: History, *, prefix: str, emit: Callable[[str], None],
                 seal: Callable[[str], dict[str, Any]]) -> None:
        self._host = host
        self._seal = seal  # topic -> the envelope extra that signs it (authn.Authenticator.extra)
        self._history = history
        self._prefix = prefix
        self._emit = emit
        self._lock = threading.RLock()
        self._tracked: dict[int, str] = {}
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

    def _run_acks(self) -> None:
        while True:
            with self._acks_cond:
                while not self._acks and not self._stopping:
                    self._acks_cond.wait()
                if not self._acks:
                    return
            self._record_acks()

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until the PUBACKs received so far are recorded in the history; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._acks or self._busy:
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
                    with self._history.batch():
                        for seq, ack in part:
                            self._ack_one(seq, ack)
                except HistoryError as e:
                    log.debug("%d ack(s) not recorded: %s", len(part), e)

    # ------------------------------------------------------------------ putting
    def put(self, build: Callable[[float], Outgoing], record: Callable[[int, float], str], *,
            announce: bool = True) -> str:
        """Put ``build(ts)`` into the outbox and let ``record(seq, ts)`` store it in the history (returning
        the id of the message it belongs to), all under the lock; report "pending" if ``announce``."""
        with self._lock:
            ts = time.time()
            self._putting += 1  # until the seq is recorded (see on_ack)
            try:
                seq = self._host.put(build(ts))
                mid = record(seq, ts)
                self._tracked[seq] = mid
            finally:
                self._putting -= 1
            if announce:
                self._emit(mid)  # under the lock: "pending" is reported before any later status
            return mid

    def begin_fill(self, mid: str) -> None:
        """A file's chunks are being put: its status waits for :meth:`end_fill`."""
        with self._lock:
            self._filling.add(mid)

    def end_fill(self, mid: str, *, failure: str | None = None) -> None:
        """All chunks are put (the status catches up now), or putting them failed with ``failure``."""
        with self._lock:
            self._filling.discard(mid)
        if failure is not None:
            self.advance(mid, "failed", failure)
            return
        state = self._history.min_outseq_state(mid)
        if state is not None and state >= 1:
            self.advance(mid, "sent" if state >= 2 else "queued")

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
            for seq in [s for s, x in self._tracked.items() if x == mid]:
                del self._tracked[seq]

    # ------------------------------------------------------------------ host callbacks
    def on_committed(self, seqs: list[int]) -> None:
        with self._lock:
            if not self._receipt_seqs and not any(s in self._tracked for s in seqs):
                return
            try:
                with self._history.batch():  # one transaction for the whole commit's worth
                    self._committed(seqs)
            except HistoryError as e:
                log.debug("commit of %d message(s) not recorded: %s", len(seqs), e)

    def _committed(self, seqs: list[int]) -> None:
        self._receipts_committed(seqs)
        hits = [s for s in seqs if s in self._tracked]
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
                case Refused(code=code):
                    self.advance(mid, "failed", f"the broker refused the message (reason code 0x{code:02x})")
        except HistoryError as e:
            log.debug("ack for %s not recorded: %s", mid, e)

    def _accepted(self, seq: int, mid: str) -> None:
        states = self._history.mark_outseqs([seq], 2)
        self._tracked.pop(seq, None)
        st = states.get(mid)
        if st is not None and st >= 2:
            self.advance(mid, "sent")
            self._history.forget_mid(mid)
        elif st is not None and st >= 1:  # a file with chunks still on their way, every one stored
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

    # ------------------------------------------------------------------ start
    def reconcile(self) -> None:
        """At start: a seq we recorded but the outbox never committed was lost with the process, so its
        message failed (reported to on_message_status) and the outbox skips that seq for good (an id is
        never reused); committed ones are queued; receipts lost with the process (the history commit is
        synchronous, the outbox's group commit is not) are sent again (the sender ignores what it already
        knows)."""
        with self._lock:
            self._reconcile_seqs(self._host.last_seq(), self._host.unclean())
            self._reconcile_open()
        self._resend_owed_receipts()

    def _reconcile_seqs(self, last: int, unclean: tuple[int, int] | None) -> None:
        h = self._history
        lost: dict[str, list[int]] = {}
        ended: set[str] = set()
        for seq, (mid, state) in sorted(h.tracked_seqs().items()):
            if mid in ended:
                continue
            if unclean is not None and unclean[0] <= seq <= unclean[1] and state < 2:
                ended.add(mid)
                # write-behind: it may have reached the broker or not; the outbox no longer has it
                log.warning("message %s was lost or not confirmed when the agent stopped; marked failed", mid)
                h.set_status(mid, "failed", "lost: the agent stopped before the broker acknowledged it "
                                            "(it may have been delivered)")
                h.forget_mid(mid)
                self.forget(mid)  # a file's other chunks
                self._emit(mid)
                continue
            if seq > last:
                lost.setdefault(mid, []).append(seq)
                continue
            self._tracked[seq] = mid
            if state == 0:
                h.mark_outseqs([seq], 1)
        if not lost:
            return
        skipped = self._host.skip_seqs(max(max(v) for v in lost.values()), "crash")
        log.warning("%d message(s) lost before the outbox stored them (the agent stopped); marked failed, "
                    "%d seq(s) skipped so their ids are never reused", len(lost), len(skipped))
        for mid in lost:
            h.set_status(mid, "failed", "lost: the agent stopped before the outbox stored it; send it again")
            h.forget_mid(mid)
            self.forget(mid)  # a file's chunks that were stored
            self._emit(mid)

    def _reconcile_open(self) -> None:
        h = self._history
        for mid, status, _seq in h.open_outgoing():
            m = h.get(mid)
            if m is not None and m.kind == "file" and isinstance(m.data, dict):
                have = h.outseq_count(mid)
                if have < int(m.data.get("chunks", 0)):
                    log.warning("file %s was interrupted while being queued (%d of %s chunks); marked failed",
                                mid, have, m.data.get("chunks"))
                    h.set_status(mid, "failed", "interrupted while being queued: send it again")
                    h.forget_mid(mid)
                    self.forget(mid)
                    self._emit(mid)
                    continue
            if status == "pending" and (h.min_outseq_state(mid) or 0) >= 1:
                h.set_status(mid, "queued")

    def _resend_owed_receipts(self) -> None:
        owed: dict[tuple[str, str], list[str]] = {}
        for mid, sender, status in self._history.receipts_owed():
            owed.setdefault((sender, status), []).append(mid)
        for (sender, status), mids in owed.items():
            log.info("re-sending %d %s receipt(s) to %s lost at the last stop", len(mids), status, sender)
            for i in range(0, len(mids), RECEIPT_BATCH):
                self.send_receipt(sender, mids[i:i + RECEIPT_BATCH], status)
