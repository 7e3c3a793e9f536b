"""Actuator plugins (outputs driven by the ``output.set`` command) and their registry.

Same shape as sensors: one module per plugin with an ``Options`` dataclass and a ``SAMPLE`` block; the
interface is :class:`edge_agent.actuators.base.Actuator` (``set(value, duration)``, ``state()``, ``close()``).
"""

from __future__ import annotations

import importlib
from typing import Any

PLUGINS: dict[str, str] = {
    "gpio.output": "edge_agent.actuators.gpio_output:GpioOutput",
}


def plugin_names() -> list[str]:
    return sorted(PLUGINS)


def plugin_class(type_name: str) -> Any:
    target = PLUGINS.get(type_name)
    if target is None:
        return None
    mod, _, cls = target.partition(":")
    return getattr(importlib.import_module(mod), cls)


def options_for(type_name: str) -> type | None:
    cls = plugin_class(type_name)
    return None if cls is None else cls.Options
