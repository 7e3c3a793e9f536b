from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from edge_agent import pins
from edge_agent.sensors.base import SensorContext


class Emitted:
    """Collects what a push sensor emits through its context."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def __call__(self, data: dict[str, Any], cls: str | None = None, stream: str | None = None,
                 ts: float | None = None) -> None:
        self.items.append({"data": data, "cls": cls, "stream": stream})

    def events(self) -> list[str]:
        return [i["data"]["event"] for i in self.items]


@pytest.fixture
def factory() -> Iterator[Any]:
    """A private MockFactory with PWM-capable pins (what agent.pin_factory = "mock" builds)."""
    f = pins.make_factory("mock")
    yield f
    f.reset()


@pytest.fixture
def emitted() -> Emitted:
    return Emitted()


@pytest.fixture
def ctx(factory: Any, emitted: Emitted) -> SensorContext:
    return SensorContext(emit=emitted, log=logging.getLogger("test.sensor"), pin_factory=lambda: factory)
