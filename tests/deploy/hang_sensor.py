"""A sensor plugin for the watchdog test only: its read() hangs forever after ``after`` reads.

Registered into ``edge_agent.sensors.PLUGINS`` by the test's launcher, so the real sampler thread
really stalls (no hook in the agent is involved).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from edge_agent.sensors.base import Sensor


@dataclass(frozen=True)
class HangOptions:
    after: int = field(default=5, metadata={"doc": "Reads before read() hangs forever.", "ge": 0})


class HangSensor(Sensor):
    Options = HangOptions
    SAMPLE = ""

    def open(self) -> None:
        self._n = 0

    def read(self) -> dict[str, Any]:
        self._n += 1
        if self._n > self.options.after:
            threading.Event().wait()  # a driver stuck in a syscall, as far as the sampler can tell
        return {"value": float(self._n)}
