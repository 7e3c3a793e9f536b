"""The actuator interface: what the ``output.set`` command drives.

An actuator is built from an ``[[outputs]]`` table (its ``Options`` dataclass validated by
:mod:`edge_agent.config`), opened at agent start in its **safe state** (off), and closed (off again)
at stop. The command handler calls :meth:`Actuator.set` and publishes the returned state.

``set(value, duration)``: ``value`` is a bool or a number in 0..1 (a duty cycle for PWM outputs);
``duration`` > 0 switches the output back off after that many seconds (a relay that must never stay
on if the operator's "off" is lost). A new ``set`` cancels a pending auto-off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from edge_agent.errors import EdgeAgentError


class ActuatorError(EdgeAgentError, ValueError):
    """A set() request the actuator cannot honour (bad value, closed output)."""


@dataclass
class ActuatorContext:
    log: logging.Logger
    pin_factory: Any = None  # a factory, a callable returning one, or None (gpiozero default)


@dataclass(frozen=True)
class NoOptions:
    pass


class Actuator:
    Options: ClassVar[type] = NoOptions
    SAMPLE: ClassVar[str] = ""

    def __init__(self, name: str, options: Any, ctx: ActuatorContext) -> None:
        self.name = name
        self.options = options if options is not None else self.Options()
        self.ctx = ctx

    def open(self) -> None:
        """Acquire the hardware and put it in its safe (off) state."""

    def set(self, value: float | bool, duration: float | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Switch off and release the hardware."""

    def factory(self) -> Any:
        from edge_agent.pins import resolve

        return resolve(self.ctx.pin_factory)


Clock = Callable[[], float]
