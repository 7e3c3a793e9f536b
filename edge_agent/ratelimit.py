"""A token bucket: the forwarder's backlog throttle (``mqtt.max_rate``/``max_rate_bytes``), reused by
other parts that must bound a rate."""

from __future__ import annotations

import time


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` (default: one second's worth, at least 1) saved up.
    A rate <= 0 means no limit. Not thread-safe: one user at a time."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.t = time.monotonic()

    def take(self, n: float = 1.0) -> float:
        """Take n tokens; return seconds to wait before the take is allowed (0 if now)."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
        self.t = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def available(self) -> float:
        """Tokens available now (after refill), without taking any."""
        if self.rate <= 0:
            return float("inf")
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
        self.t = now
        return self.tokens
