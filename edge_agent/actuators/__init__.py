"""Actuator plugins (outputs driven by the ``output.set`` command) and their registry.

Same shape as sensors: one module per plugin with an ``Options`` dataclass and a ``SAMPLE`` block; the
interface is :class:`edge_agent.actuators.base.Actuator` (``set(value, duration)``, ``state()``, ``close()``).
"""

from __future__ import annotations

from edge_agent.plugins import Registry

PLUGINS: dict[str, str] = {
    "gpio.output": "edge_agent.actuators.gpio_output:GpioOutput",
}


_registry = Registry(PLUGINS)
plugin_names = _registry.names
plugin_class = _registry.plugin_class
options_for = _registry.options_for
