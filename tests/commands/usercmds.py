"""User commands for the tests, loaded through ``[commands] modules`` (the documented plugin route)."""

from __future__ import annotations

import os
import time
from typing import Any

from edge_agent.commands import Arg, command

COUNTS: dict[str, int] = {}


@command("test.count", {"key": Arg("str", required=True, max_len=64)})
def count(ctx: Any, key: str) -> dict[str, Any]:
    COUNTS[key] = COUNTS.get(key, 0) + 1
    return {"key": key, "n": COUNTS[key]}


@command("test.slow", {"seconds": Arg("float", required=True, ge=0, le=600), "marker": Arg("str", default="")})
def slow(ctx: Any, seconds: float, marker: str = "") -> dict[str, Any]:
    """Appends a line to ``marker`` when it starts (one line = one execution), then sleeps."""
    ctx.accepted({"sleeping": seconds})
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()} {ctx.id}\n")
            f.flush()
            os.fsync(f.fileno())
    time.sleep(seconds)
    return {"slept": seconds}
