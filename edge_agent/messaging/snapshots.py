"""The fast path of the tracker for plain messages (one outbox seq each, put by ``send()``/``publish()``).

``put_message`` first waits (briefly, online only) while :data:`SEND_WINDOW` messages wait for their PUBACK,
so a sender in a tight loop cannot run ahead of the broker and starve the threads that talk to it; then it
puts the envelope into the outbox *outside* the tracker's lock (signing and encoding are
most of send()'s time; the acks thread must not wait behind them), then, under the lock, stores the row
(History.add_later), starts tracking the seq and reports "pending" from the row as stored. A PUBACK or an
outbox commit of that seq that comes before this (the forwarder may publish at once) is kept aside
(``_early_acks``/``_early_commits``) and applied right after, in order.

While its status has not moved otherwise, the message's "pending" snapshot is kept (``_simple``): its commit
("queued") and PUBACK ("sent") are stored with the next history transaction, for a whole batch at once,
reading nothing, and reported from the snapshot once that is committed (so a crash never takes back a
status the app was told). Anything else that moves its status (``advance``) drops the snapshot,
and the message takes the per-message path from then on. Part of :class:`~.tracking.Tracker`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from edge_agent.host import Accepted, Ack, Host, Outgoing
from edge_agent.messaging.history import History, Message

NORMAL_PATH = ("pending", "queued", "sent", "delivered", "read")
SNAPSHOTS_KEPT = 20000  # pending snapshots kept for the bulk path (beyond: the per-message path)
SEND_WINDOW = 2000  # online, with this many messages put and not yet acknowledged, put_message waits ...
WINDOW_WAIT = 0.05  # ... at most this long for PUBACKs (never offline: there the outbox keeps them)


class Snapshots:
    """The plain-message half of the tracker (mixed into :class:`~.tracking.Tracker`)."""

    _host: Host
    _history: History
    _lock: threading.RLock
    _report: Callable[[Message], None]
    _tracked: dict[int, str]
    _receipt_seqs: dict[int, tuple[list[str], int]]
    _simple: dict[str, Message]
    _early_acks: dict[int, Ack]
    _early_commits: set[int]
    _putting: int
    _room: threading.Condition  # notified when PUBACKs were recorded

    def _track(self, seq: int, mid: str) -> None: ...
    def _untrack(self, seq: int) -> None: ...
    def _ack_one(self, seq: int, ack: Ack) -> None: ...
    def _committed(self, seqs: list[int], hits: list[int]) -> None: ...
    def wake(self, soon: bool = False) -> None: ...

    def put_message(self, build: Callable[[float], Outgoing], record: Callable[[int, float], Message]) -> Message:
        """Put ``build(ts)`` into the outbox, then ``record(seq, ts)`` it in the history (returning it as stored,
        nothing read back) and report "pending" from a copy (see the module docstring)."""
        if len(self._simple) >= SEND_WINDOW and self._host.connection().state == "online":
            with self._room:  # the broker is behind: give its PUBACKs a moment (the other threads the GIL)
                self._room.wait(WINDOW_WAIT)
        ts = time.time()
        with self._lock:
            self._putting += 1  # until the seq is tracked: a PUBACK or commit before that is kept aside
        try:
            seq = self._host.put(build(ts))
        except BaseException:
            with self._lock:
                self._putting -= 1
            raise
        with self._lock:
            try:
                m = record(seq, ts)
                self._track(seq, m.id)
            finally:
                self._putting -= 1
            if len(self._simple) < SNAPSHOTS_KEPT:
                self._simple[m.id] = m
            self._report(replace(m, receipts={}))
            self._catch_up(seq)
            return m

    def _catch_up(self, seq: int) -> None:
        """Apply what came for ``seq`` before it was tracked (under the lock); forget what was kept aside
        once no put is under way (it was not ours: telemetry)."""
        if seq in self._early_commits:
            self._early_commits.discard(seq)
            rest = self._queued_in_bulk([seq])
            if rest:
                with self._history.batch():
                    self._committed([], rest)
        ack = self._early_acks.pop(seq, None)
        if ack is not None:
            for s, a in self._sent_in_bulk([(seq, ack)]):
                with self._history.batch():
                    self._ack_one(s, a)
        if not self._putting:
            self._early_acks.clear()
            self._early_commits.clear()

    def _early(self, part: list[tuple[int, Ack]]) -> list[tuple[int, Ack]]:
        """The acks of ``part`` but those of seqs a put under way has not tracked yet (kept aside)."""
        if not self._putting:
            return part
        out = []
        for seq, ack in part:
            if seq in self._tracked or seq in self._receipt_seqs:
                out.append((seq, ack))
            else:
                self._early_acks[seq] = ack
        return out

    def _sent_in_bulk(self, part: list[tuple[int, Ack]]) -> list[tuple[int, Ack]]:
        """The PUBACKs of messages whose pending snapshot is at hand (put by put_message, no status change
        since): their steps to "sent" are reported from that snapshot and stored with the next history
        transaction (``set_sent``: one statement for the lot; every read comes after it), without reading
        anything now. Return the other acks."""
        rest: list[tuple[int, Ack]] = []
        moved: list[str] = []
        steps: list[Message] = []
        now = time.time()
        for seq, ack in part:
            mid = self._tracked.get(seq)
            m = self._simple.pop(mid, None) if mid is not None and isinstance(ack, Accepted) else None
            if m is None or seq in self._receipt_seqs:
                if m is not None:
                    self._simple[m.id] = m
                rest.append((seq, ack))
                continue
            moved.append(m.id)
            self._untrack(seq)
            steps += [replace(m, status=st, updated=now)
                      for st in NORMAL_PATH[NORMAL_PATH.index(m.status) + 1:NORMAL_PATH.index("sent") + 1]]
        if moved:
            with self._room:
                self._room.notify_all()
        if moved:  # reported once stored: a status the app saw is never taken back by a crash
            self._history.set_sent(moved, now, then=lambda: [self._report(m) for m in steps])
            self.wake(soon=True)
        return rest

    def _queued_in_bulk(self, hits: list[int]) -> list[int]:
        """The committed seqs of messages whose snapshot is at hand (see _sent_in_bulk): "queued" reported
        from it and stored with the next history transaction; return the other seqs."""
        rest: list[int] = []
        done: list[int] = []
        steps: list[Message] = []
        now = time.time()
        for seq in hits:
            m = self._simple.get(self._tracked[seq])
            if m is None:
                rest.append(seq)
            elif m.status == "pending":
                done.append(seq)
                self._simple[m.id] = m = replace(m, status="queued", updated=now)
                steps.append(replace(m))
        if done:
            self._history.set_queued(done, [self._tracked[s] for s in done], now,
                                     then=lambda: [self._report(m) for m in steps])
            self.wake(soon=True)
        return rest
