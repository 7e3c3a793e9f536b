"""Reconnect backoff: exponential with full jitter, ``uniform(0, min(max, min_delay * 2**n))``."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff."""
    r = rng or random
    return r.uniform(0, min(hi, lo * (2 ** min(attempt, 30))))
