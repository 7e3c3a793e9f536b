"""The drop ledger: every row that leaves without a PUBACK is accounted in an ``events/dropped`` message.

Rows leave the database without a PUBACK only by eviction (``storage.max_bytes``, free disk), expiry,
disk full (dropped from memory) or corruption; each time the outbox itself queues an ``events/dropped``
message whose ``data`` is ``{"ranges": [[first, last], ...], "count": n, "reason": ...}``, *in the same
transaction* as the deletion, so a crash can never leave an unaccounted hole.

One report per reason is kept open in the memory batch and re-encoded as more seqs join it, so a long
disk-full episode costs one message, not one per failed commit. All state here is guarded by the
staging condition (:attr:`Staging.cond`): every method expects the caller to hold it.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_agent.message import Outgoing
from edge_agent.outbox.rangeset import merge_ranges, ranges
from edge_agent.outbox.staging import Staging

DROPPED_STREAM = "events/dropped"
REPORT_TTL = 100 * 365 * 86400.0
FOLDED = "_folded"  # victims key: stored reports replaced by a new report covering their ranges
Victims = dict[str, list[int]]  # reason -> seqs deleted in the next commit


class Ledger:
    def __init__(self, staging: Staging, report_topic: str) -> None:
        self.staging = staging
        self.report_topic = report_topic
        self._open: dict[str, tuple[int, list[list[int]]]] = {}  # reason -> (uncommitted report seq, ranges)
        self._folds: dict[str, tuple[list[int], list[list[int]]]] = {}  # stored reports to fold into new ones
        self._mem_dropped: list[int] = []  # dropped from memory (disk full), not yet reported
        self._chosen: Victims = {}  # chosen by maintenance, not yet reported
        self._retry: Victims = {}  # reported in a batch whose commit failed

    def account(self, reason: str, seqs: Iterable[int] = (), rngs: Iterable[Iterable[int]] = ()) -> None:
        """Record ``seqs``/``rngs`` as dropped for ``reason`` in the open (uncommitted) report row."""
        new = merge_ranges([*ranges(seqs), *rngs])
        if not new:
            return
        prev = self._open.get(reason)
        if prev is not None:
            merged = merge_ranges([*prev[1], *new])
            if self.staging.replace_locked(prev[0], self._report(reason, merged)):
                self._open[reason] = (prev[0], merged)
                return
        self._open[reason] = (self.staging.append_locked(self._report(reason, new)), new)

    def _report(self, reason: str, rngs: list[list[int]]) -> Outgoing:
        data = {"ranges": rngs, "count": sum(b - a + 1 for a, b in rngs), "reason": reason}
        # reports never expire (an explicit far expiry also keeps them out of the default-TTL scan)
        return Outgoing(topic=self.report_topic, stream=DROPPED_STREAM, data=data, cls="event", ttl=REPORT_TTL)

    # ------------------------------------------------------------------ maintenance's choices
    def chosen(self) -> set[int]:
        """Rows already chosen to leave (a failed commit retries them): not to be chosen twice."""
        return {s for group in (self._chosen, self._retry) for seqs in group.values() for s in seqs}

    def folding(self) -> set[int]:
        return {s for seqs, _ in self._folds.values() for s in seqs}

    def choose(self, reason: str, seqs: list[int]) -> None:
        if seqs:
            self._chosen.setdefault(reason, []).extend(seqs)

    def fold(self, folds: dict[str, tuple[list[int], list[list[int]]]]) -> None:
        for reason, (seqs, rngs) in folds.items():
            mine = self._folds.setdefault(reason, ([], []))
            mine[0].extend(seqs)
            mine[1].extend(rngs)

    # ------------------------------------------------------------------ the writer's cycle
    def take_victims(self) -> Victims:
        """The rows the next commit deletes. New victims get their report now (it joins the batch, so it
        is stored in the same transaction as their deletion); victims of a failed commit were reported
        already (their report is back in the batch)."""
        victims: Victims = {r: list(s) for r, s in self._retry.items() if s}
        for reason, seqs in self._chosen.items():
            if seqs:
                self.account(reason, seqs)
                victims.setdefault(reason, []).extend(seqs)
        self._chosen, self._retry = {}, {}
        for reason, (seqs, rngs) in self._folds.items():
            # stored reports that were never sent, replaced by one report covering them and their ranges
            self.account(reason, seqs, rngs)
            victims.setdefault(FOLDED, []).extend(seqs)
        self._folds = {}
        if self._mem_dropped:
            self.account("disk_full", self._mem_dropped)
            self._mem_dropped = []
        return victims

    def retry(self, victims: Victims) -> None:
        """The commit deleting ``victims`` failed: they go again with the next one."""
        for reason, seqs in victims.items():
            self._retry.setdefault(reason, []).extend(seqs)

    def open_reports(self) -> set[int]:
        """Seqs of the uncommitted report rows (never dropped from memory)."""
        return {s for s, _ in self._open.values()}

    def dropped_from_memory(self, seqs: list[int]) -> None:
        self._mem_dropped.extend(seqs)

    def committed(self, seqs: set[int]) -> None:
        """These rows are stored: a report among them is closed (the next drop opens a new one)."""
        for reason in [k for k, (s, _) in self._open.items() if s in seqs]:
            del self._open[reason]
