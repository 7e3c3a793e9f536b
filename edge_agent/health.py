"""Heartbeats of the agent's loops, for the systemd watchdog.

Every long-running loop (outbox writer, forwarder, MQTT supervisor, samplers) calls its beat function.
:meth:`Health.healthy` is true only while every registered loop has beaten within ``stall`` seconds
(plus the loop's own ``grace``: the MQTT supervisor legitimately sleeps through its reconnect backoff
while the broker is down, and a down broker must not get the agent restarted). The watchdog pinger
sends ``WATCHDOG=1`` only then, so a stalled loop leads systemd to restart us.

Test hook (test-only, never set it in production): ``EDGE_AGENT_TEST_STALL=<loop>[:<seconds>]`` makes
that loop really hang inside its beat call ``seconds`` after start (default 0), so the acceptance
tests can prove that a stalled loop stops the pings. :func:`stall_request` parses it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from edge_agent.errors import ConfigError

log = logging.getLogger("edge_agent.health")

STALL_ENV = "EDGE_AGENT_TEST_STALL"


def stall_request(env: Mapping[str, str]) -> tuple[str, float] | None:
    """``(loop, after_seconds)`` from ``EDGE_AGENT_TEST_STALL``, or None when unset."""
    raw = env.get(STALL_ENV, "").strip()
    if not raw:
        return None
    name, _, after = raw.partition(":")
    try:
        delay = float(after) if after else 0.0
    except ValueError:
        raise ConfigError(STALL_ENV, [f"expected <loop>[:<seconds>], got {raw!r}"]) from None
    if not name or delay < 0:
        raise ConfigError(STALL_ENV, [f"expected <loop>[:<seconds>], got {raw!r}"])
    return name, delay


class Health:
    def __init__(self, stall: float = 30.0) -> None:
        self.stall = stall
        self._beats: dict[str, float] = {}
        self._grace: dict[str, float] = {}
        self._checks: dict[str, Callable[[float], bool]] = {}
        self._lock = threading.Lock()
        self._stall_name = ""
        self._stall_at = 0.0
        self._released = threading.Event()

    def beat_fn(self, name: str, grace: float = 0.0) -> Callable[[], None]:
        """The beat function for loop ``name``; it may stay silent ``stall + grace`` seconds."""
        self._beats[name] = time.monotonic()
        self._grace[name] = grace

        def beat() -> None:
            now = time.monotonic()
            if name == self._stall_name and now >= self._stall_at:
                self._hang(name)
            self._beats[name] = now

        return beat

    def stall_on_purpose(self, name: str, after: float = 0.0) -> None:
        """Test hook: loop ``name`` hangs in its next beat after ``after`` seconds (until :meth:`release`)."""
        if name not in self._beats:
            raise ConfigError(STALL_ENV, [f"no loop named {name!r} (known: {', '.join(sorted(self._beats))})"])
        self._stall_at = time.monotonic() + after
        self._stall_name = name
        log.warning("TEST HOOK %s: loop %s will hang in %.1f s", STALL_ENV, name, after)

    def release(self) -> None:
        """Let a loop hung by :meth:`stall_on_purpose` go (on stop)."""
        self._stall_name = ""
        self._released.set()

    def _hang(self, name: str) -> None:
        log.warning("TEST HOOK %s: loop %s hangs now", STALL_ENV, name)
        self._released.wait()

    def add_check(self, name: str, stalled: Callable[[float], bool]) -> None:
        """``stalled(limit)`` returns True when that component is stuck."""
        self._checks[name] = stalled

    def stalled(self) -> list[str]:
        now = time.monotonic()
        out = [n for n, t in list(self._beats.items()) if now - t > self.stall + self._grace.get(n, 0.0)]
        out += [n for n, fn in list(self._checks.items()) if fn(self.stall)]
        return out

    def healthy(self) -> bool:
        return not self.stalled()
