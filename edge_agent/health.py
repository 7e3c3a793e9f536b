"""Heartbeats of the agent's loops, for the systemd watchdog.

Every long-running loop (outbox writer, forwarder, MQTT supervisor, samplers) calls its beat function.
:meth:`Health.healthy` is true only while every registered loop has beaten within ``stall`` seconds;
the watchdog pinger sends ``WATCHDOG=1`` only then, so a stalled loop leads systemd to restart us.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Health:
    def __init__(self, stall: float = 30.0) -> None:
        self.stall = stall
        self._beats: dict[str, float] = {}
        self._checks: dict[str, Callable[[float], bool]] = {}
        self._lock = threading.Lock()

    def beat_fn(self, name: str) -> Callable[[], None]:
        self._beats[name] = time.monotonic()

        def beat() -> None:
            self._beats[name] = time.monotonic()

        return beat

    def add_check(self, name: str, stalled: Callable[[float], bool]) -> None:
        """``stalled(limit)`` returns True when that component is stuck."""
        self._checks[name] = stalled

    def stalled(self) -> list[str]:
        now = time.monotonic()
        out = [n for n, t in list(self._beats.items()) if now - t > self.stall]
        out += [n for n, fn in list(self._checks.items()) if fn(self.stall)]
        return out

    def healthy(self) -> bool:
        return not self.stalled()
