"""The publishes awaiting their PUBACK on the current connection, and the window that bounds them.

Not thread-safe on purpose: the transport calls every method under its own lock (one lock per publish
and per ack). No paho here.
"""

from __future__ import annotations

import time
from typing import Any

from edge_agent.errors import WindowFull


class Inflight:
    def __init__(self) -> None:
        self.reserved = 0  # QoS>0 publishes handed to paho and not yet acked: never above the window
        self.peak = 0  # the most ever awaiting PUBACK at once
        self._mids: dict[int, tuple[Any, float]] = {}  # mid -> (token, sent at)
        self._early: dict[int, int] = {}  # mid -> reason code of a PUBACK that beat publish() returning

    def reset(self) -> list[Any]:
        """A new connection: forget everything; the tokens that were awaiting their PUBACK."""
        lost = [tok for tok, _ in self._mids.values()]
        self._mids.clear()
        self._early.clear()
        self.reserved = 0
        return lost

    def reserve(self, window: int) -> None:
        """Take a slot of the window for a publish about to be handed to paho; WindowFull if none."""
        if self.reserved >= window:
            raise WindowFull(f"{self.reserved} messages already awaiting PUBACK")
        self.reserved += 1
        if self.reserved > self.peak:
            self.peak = self.reserved

    def unreserve(self) -> None:
        """paho refused the publish: give its slot back."""
        if self.reserved > 0:
            self.reserved -= 1

    def sent(self, mid: int, token: Any) -> int | None:
        """paho's publish() returned ``mid``: await its PUBACK. If the PUBACK already came (paho calls
        on_publish before publish() returns), its reason code, and the slot is free again."""
        code = self._early.pop(mid, None)
        if code is None:
            self._mids[mid] = (token, time.monotonic())
        else:
            self.reserved = max(0, self.reserved - 1)
        return code

    def acked(self, mid: int, code: int) -> tuple[Any, float] | None:
        """The PUBACK for ``mid``: (token, sent at), or None when publish() has not returned yet (the
        code is parked for :meth:`sent`)."""
        entry = self._mids.pop(mid, None)
        if entry is None:
            self._early[mid] = code
            return None
        self.reserved = max(0, self.reserved - 1)
        return entry

    def oldest(self) -> float | None:
        """When the oldest publish still awaiting its PUBACK was sent (monotonic), or None."""
        return min((t for _, t in self._mids.values()), default=None)
