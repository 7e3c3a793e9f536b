"""The sensor interface.

Two kinds of sensor:

* **polled** (``kind = "poll"``): the sampler calls :meth:`Sensor.read` every ``interval`` seconds on a
  drift-free schedule; ``read`` returns the reading's data, e.g. ``{"value": 21.5}``.
* **push** (``kind = "push"``): the sensor calls ``ctx.emit(data)`` itself from :meth:`Sensor.start`
  (e.g. a GPIO edge interrupt); no polling thread.

Plugins never buffer, retry or publish: the framework owns that. A ``read`` that raises is reported as
an event (``events/sensor_error``) and retried with backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Reading:
    sensor: str
    ts: float
    data: dict[str, Any]
    cls: str = "telemetry"
    stream: str | None = None  # None = "telemetry/<sensor>"


@dataclass
class SensorContext:
    """What a plugin may use: an emit function for push sensors, a logger, a clock, the pin factory."""

    emit: Callable[..., None]
    log: logging.Logger
    clock: Callable[[], float] = time.time
    pin_factory: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NoOptions:
    pass


class Sensor:
    Options: ClassVar[type] = NoOptions
    kind: ClassVar[str] = "poll"
    SAMPLE: ClassVar[str] = ""

    def __init__(self, name: str, options: Any, ctx: SensorContext) -> None:
        self.name = name
        self.options = options if options is not None else self.Options()
        self.ctx = ctx

    def open(self) -> None:
        """Acquire the hardware. Raise a clear error (PinError, SensorError) if it is missing."""

    def read(self) -> dict[str, Any]:
        raise NotImplementedError

    def start(self) -> None:
        """Push sensors: begin emitting via ``self.ctx.emit(data, cls=..., stream=...)``."""

    def close(self) -> None:
        """Release the hardware."""
