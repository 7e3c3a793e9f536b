"""Write-behind: the rows ``put()`` handed to the forwarder straight from memory, not (yet) stored.

A held row is visible to ``begin()`` at once. It leaves the hold in one of two ways:

* its PUBACK comes first: it is gone, and it never touched the disk;
* it is *spilled*: the writer stores it, because its PUBACK has not come within ``flush_after``
  seconds, the link went down, more than ``limit`` rows are held, the outbox is flushed or closed, or
  a row with a higher seq is being stored (so every stored seq has all lower un-acked seqs stored
  with or before it). A spilled row stays visible here until its commit is done.

All of it is guarded by the staging condition (:attr:`Staging.cond`): callers hold it.
"""

from __future__ import annotations

import bisect
from collections import deque

from edge_agent.message import MESSAGE_CLASSES
from edge_agent.outbox.schema import Row


class Hold:
    def __init__(self, flush_after: float, limit: int) -> None:
        self.flush_after = flush_after
        self.limit = limit
        self.by_prio: list[dict[int, Row]] = [{} for _ in MESSAGE_CLASSES]  # prio -> {seq: row}, seq order
        # prio -> every seq added, ascending (gone ones removed lazily): rows() bisects it instead of
        # listing the whole dict per begin() (that made a full hold cost O(held) per forwarder fetch)
        self.keys: list[list[int]] = [[] for _ in MESSAGE_CLASSES]
        self.prio: dict[int, int] = {}  # every held seq -> its prio
        self.order: deque[tuple[float, int]] = deque()  # (put time, seq) of unspilled rows, seq order
        self.spilled: set[int] = set()  # handed to the writer, still visible until committed

    def add(self, row: Row, now: float) -> None:
        seq, p = row[0], row[1]
        self.by_prio[p][seq] = row
        self.prio[seq] = p
        keys = self.keys[p]
        if keys and keys[-1] > seq:  # not expected (seqs grow), but keep the list sorted
            bisect.insort(keys, seq)
        else:
            keys.append(seq)
        self.order.append((now, seq))

    def unspilled(self) -> int:
        return len(self.prio) - len(self.spilled)

    def ack(self, seq: int) -> bool:
        """The PUBACK came: True when the row was held and not spilled (then it is gone, never stored)."""
        p = self.prio.get(seq)
        if p is None or seq in self.spilled:
            return False
        del self.prio[seq]
        del self.by_prio[p][seq]
        return True

    def _live(self, seq: int) -> bool:
        return seq in self.prio and seq not in self.spilled

    def next_due(self) -> float | None:
        """When the oldest unspilled row is due (monotonic), or None."""
        order = self.order
        while order and not self._live(order[0][1]):
            order.popleft()
        return order[0][0] + self.flush_after if order else None

    def take_due(self, now: float, *, everything: bool = False, below: int = 0) -> list[Row]:
        """Spill (oldest first) every held row once the oldest is due at ``now`` (or with ``everything``,
        or beyond ``limit``), else those with a seq below ``below``. They stay visible until
        :meth:`committed`."""
        out: list[Row] = []
        order = self.order
        everything = everything or self.unspilled() > self.limit  # one large commit, not many small ones
        due = self.next_due()
        if due is not None and now >= due:
            everything = True  # the oldest is due: store all held rows in one commit (one commit per
            # flush_after while the link is down, not one per row as each becomes due)
        while order:
            t, seq = order[0]
            if not self._live(seq):
                order.popleft()
                continue
            if not (everything or seq < below or now - t >= self.flush_after):
                break
            order.popleft()
            out.append(self.by_prio[self.prio[seq]][seq])
            self.spilled.add(seq)
        return out

    def committed(self, seqs: list[int]) -> None:
        """These rows are stored (or dropped from memory): no longer held."""
        for seq in seqs:
            p = self.prio.pop(seq, None)
            if p is not None:
                self.by_prio[p].pop(seq, None)
                self.spilled.discard(seq)

    def rows(self, p: int, after: int, upto: int | None, limit: int | None = None) -> list[Row]:
        """Held rows of prio ``p`` with ``after < seq <= upto``, in seq order, at most ``limit``."""
        d = self.by_prio[p]
        keys = self.keys[p]
        if not d:
            keys.clear()
            return []
        if len(keys) > 2 * len(d) + 64:  # drop the seqs that are gone (amortised: rarely)
            keys[:] = [k for k in keys if k in d]
        out: list[Row] = []
        for i in range(bisect.bisect_right(keys, after), len(keys)):
            k = keys[i]
            if upto is not None and k > upto:
                break
            row = d.get(k)
            if row is not None:
                out.append(row)
                if limit is not None and len(out) >= limit:
                    break
        return out
