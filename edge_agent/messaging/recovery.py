"""At start: the messaging service's outgoing seqs reconciled with the outbox after a stop or a crash.

A seq recorded in the history but never committed by the outbox was lost with the process: its message
ends ``failed`` (reported to on_message_status) and the outbox skips that seq for good (an id is never
reused); with write-behind, a seq in the outbox's crash range may have reached the broker or not, and ends
``failed`` too; committed ones are ``queued``; a file interrupted while its chunks were being put ends
``failed``; receipts lost with the process are sent again. Part of :class:`~.tracking.Tracker`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from edge_agent.host import Host
from edge_agent.messaging.history import History

log = logging.getLogger("edge_agent.messaging")

RECEIPT_BATCH = 500


class Reconcile:
    """The start-up half of the tracker (mixed into :class:`~.tracking.Tracker`)."""

    _host: Host
    _history: History
    _lock: threading.RLock
    _emit: Callable[[str], None]

    def _track(self, seq: int, mid: str) -> None: ...
    def forget(self, mid: str) -> None: ...
    def send_receipt(self, to: str, mids: list[str], status: str, **more: Any) -> None: ...

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
                self._fail(mid, "lost: the agent stopped before the broker acknowledged it (it may have been "
                                "delivered)")
                continue
            if seq > last:
                lost.setdefault(mid, []).append(seq)
                continue
            self._track(seq, mid)
            if state == 0:
                h.mark_outseqs([seq], 1)
        if not lost:
            return
        skipped = self._host.skip_seqs(max(max(v) for v in lost.values()), "crash")
        log.warning("%d message(s) lost before the outbox stored them (the agent stopped); marked failed, "
                    "%d seq(s) skipped so their ids are never reused", len(lost), len(skipped))
        for mid in lost:
            self._fail(mid, "lost: the agent stopped before the outbox stored it; send it again")

    def _fail(self, mid: str, reason: str) -> None:
        """End ``mid`` failed with ``reason``, stop watching its seqs (a file's other chunks) and report it."""
        self._history.set_status(mid, "failed", reason)
        self._history.forget_mid(mid)
        self.forget(mid)
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
                    self._fail(mid, "interrupted while being queued: send it again")
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
