"""Sensor plugins and their registry.

A plugin is one module with a :class:`~edge_agent.sensors.base.Sensor` subclass, its ``Options``
dataclass (validated by :mod:`edge_agent.config` like every other key), a docstring with wiring notes
and a ``SAMPLE`` config block. Register it in :data:`PLUGINS` (type name -> "module:Class").
"""

from __future__ import annotations

from edge_agent.plugins import Registry

PLUGINS: dict[str, str] = {
    "simulated": "edge_agent.sensors.simulated:SimulatedSensor",
    "replay": "edge_agent.sensors.replay:ReplaySensor",
    "system": "edge_agent.sensors.system:SystemSensor",
    "gpio.digital": "edge_agent.sensors.gpio_digital:GpioDigitalSensor",
    "gpio.analog": "edge_agent.sensors.gpio_analog:GpioAnalogSensor",
    "onewire.ds18b20": "edge_agent.sensors.onewire_ds18b20:Ds18b20Sensor",
    "i2c.bme280": "edge_agent.sensors.i2c_bme280:Bme280Sensor",
}


_registry = Registry(PLUGINS)
plugin_names = _registry.names
plugin_class = _registry.plugin_class
options_for = _registry.options_for
