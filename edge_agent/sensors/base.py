"""The sensor interface.

Two kinds of sensor:

* **polled** (``kind = "poll"``): the sampler calls :meth:`Sensor.read` every ``interval`` seconds on a
  drift-free schedule; ``read`` returns the reading's data, e.g. ``{"value": 21.5}``.
* **push** (``kind = "push"``): the sensor calls ``ctx.emit(data)`` itself from :meth:`Sensor.start`
  (e.g. a GPIO edge interrupt); no polling thread.

Plugins never buffer, retry or publish: the framework owns that. A ``read`` that raises is reported as
an event (``events/sensor_error``) and retried with backoff.

Two optional abilities for polled sensors whose data carries its own time (``replay``):

* ``read`` may return :class:`Stamped` (data plus the reading's own timestamp) instead of a dict;
* :meth:`Sensor.pace` may return the seconds until the next reading (instead of ``interval``); the
  sampler still schedules on absolute monotonic deadlines, so pacing errors do not accumulate.

A sensor whose data has run out raises :class:`Exhausted`: its sampler ends like ``count`` was reached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge_agent.errors import EdgeAgentError


@dataclass(frozen=True, slots=True)
class Reading:
    sensor: str
    ts: float
    data: dict[str, Any]
    cls: str = "telemetry"
    stream: str | None = None  # None = "telemetry/<sensor>"


@dataclass(frozen=True, slots=True)
class Stamped:
    """A reading's data with its own timestamp (e.g. the time column of a replayed file)."""

    data: dict[str, Any]
    ts: float


class Exhausted(EdgeAgentError, EOFError):
    """A finite source (a replayed file without ``loop``) has no more readings."""


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

    def read(self) -> dict[str, Any] | Stamped:
        raise NotImplementedError

    def pace(self) -> float | None:
        """Seconds from this reading to the next one, or None to use the configured ``interval``."""
        return None

    def start(self) -> None:
        """Called once after :meth:`open` for both kinds (polled: from the sampler thread, before the first
        read). Push sensors begin emitting here via ``self.ctx.emit(data, cls=..., stream=...)``."""

    def factory(self) -> Any:
        """The configured gpiozero pin factory, or None for gpiozero's default ($GPIOZERO_PIN_FACTORY)."""
        from edge_agent.pins import resolve

        return resolve(self.ctx.pin_factory)

    def close(self) -> None:
        """Release the hardware."""
