"""Smoke test on a real Raspberry Pi. Skipped unless ``EDGE_AGENT_HARDWARE=1``.

Pins and devices come from the environment, so the same file serves any wiring (see
hardware/README.md, "Smoke test")::

    EDGE_AGENT_HARDWARE=1                 enable this file
    EDGE_AGENT_HW_PIN_FACTORY=lgpio       pin factory (default lgpio)
    EDGE_AGENT_HW_LOOP_OUT=23             a jumper wire from this output pin ...
    EDGE_AGENT_HW_LOOP_IN=24              ... to this input pin (edge events without any part)
    EDGE_AGENT_HW_LED=18                  an LED (+330 Ω) to blink (watch it)
    EDGE_AGENT_HW_DS18B20=any             a DS18B20 on 1-Wire (device id, or 'any')
    EDGE_AGENT_HW_BME280=1:0x76           a BME280: bus:address
    EDGE_AGENT_HW_ADC=mcp3008:0           an MCP3008/MCP3208 channel on SPI0 CE0

Run: ``EDGE_AGENT_HARDWARE=1 EDGE_AGENT_HW_LOOP_OUT=23 EDGE_AGENT_HW_LOOP_IN=24 pytest -m hardware
tests/hardware``. Each check whose variable is unset is skipped with the variable's name.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [
    pytest.mark.hardware,
    pytest.mark.skipif(os.environ.get("EDGE_AGENT_HARDWARE") != "1",
                       reason="real Raspberry Pi only: set EDGE_AGENT_HARDWARE=1 and the EDGE_AGENT_HW_* pins"),
]


def need(var: str) -> str:
    v = os.environ.get(var, "")
    if not v:
        pytest.skip(f"{var} not set")
    return v


@pytest.fixture(scope="module")
def factory() -> Iterator[Any]:
    from edge_agent import pins

    f = pins.make_factory(os.environ.get("EDGE_AGENT_HW_PIN_FACTORY", "lgpio"))
    yield f
    f.close()


def _ctx(factory: Any, sink: list[dict[str, Any]]) -> Any:
    from edge_agent.sensors.base import SensorContext

    return SensorContext(emit=lambda data, **kw: sink.append(data), log=logging.getLogger("hw"),
                         pin_factory=factory)


def test_loopback_edges_are_events(factory: Any) -> None:
    from edge_agent.actuators.base import ActuatorContext
    from edge_agent.actuators.gpio_output import GpioOutput, GpioOutputOptions
    from edge_agent.sensors.gpio_digital import GpioDigitalOptions, GpioDigitalSensor

    out_pin, in_pin = int(need("EDGE_AGENT_HW_LOOP_OUT")), int(need("EDGE_AGENT_HW_LOOP_IN"))
    events: list[dict[str, Any]] = []
    sensor = GpioDigitalSensor("loop", GpioDigitalOptions(pin=in_pin, device="input", pull="down",
                                                          bounce_time=0.0), _ctx(factory, events))
    out = GpioOutput("drv", GpioOutputOptions(pin=out_pin), ActuatorContext(logging.getLogger("hw"), factory))
    out.open()
    sensor.open()
    sensor.start()
    try:
        for _ in range(3):
            out.set(True)
            time.sleep(0.05)
            out.set(False)
            time.sleep(0.05)
        deadline = time.monotonic() + 2
        while len(events) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e["event"] for e in events] == ["active", "inactive"] * 3, (
            f"no edges on GPIO{in_pin}: is the jumper from GPIO{out_pin} in place?")
    finally:
        sensor.close()
        out.close()


def test_led_blinks_and_auto_offs(factory: Any) -> None:
    from edge_agent.actuators.base import ActuatorContext
    from edge_agent.actuators.gpio_output import GpioOutput, GpioOutputOptions

    led = GpioOutput("led", GpioOutputOptions(pin=int(need("EDGE_AGENT_HW_LED")), device="led"),
                     ActuatorContext(logging.getLogger("hw"), factory))
    led.open()
    try:
        assert led.set(True, duration=0.5)["on"]
        time.sleep(1.0)
        assert led.state()["on"] is False
    finally:
        led.close()


def test_ds18b20_reads_a_plausible_temperature() -> None:
    from edge_agent.sensors.onewire_ds18b20 import Ds18b20Options, Ds18b20Sensor

    dev = need("EDGE_AGENT_HW_DS18B20")
    s = Ds18b20Sensor("t", Ds18b20Options(device="" if dev == "any" else dev), _ctx(None, []))
    s.open()
    assert -10 < s.read()["value"] < 60


def test_bme280_reads_plausible_values() -> None:
    from edge_agent.sensors.i2c_bme280 import Bme280Options, Bme280Sensor

    bus, addr = need("EDGE_AGENT_HW_BME280").split(":")
    s = Bme280Sensor("c", Bme280Options(bus=int(bus), address=int(addr, 16)), _ctx(None, []))
    s.open()
    r = s.read()
    assert -10 < r["temperature"] < 60 and 800 < r["pressure"] < 1100
    if "humidity" in r:
        assert 0 <= r["humidity"] <= 100
    s.close()


def test_adc_channel_reads() -> None:
    from edge_agent.sensors.gpio_analog import GpioAnalogOptions, GpioAnalogSensor

    chip, ch = need("EDGE_AGENT_HW_ADC").split(":")
    s = GpioAnalogSensor("a", GpioAnalogOptions(chip=chip, channel=int(ch)), _ctx(None, []))
    s.open()
    r = s.read()
    assert 0 <= r["voltage"] <= 3.3
    s.close()


def test_system_on_the_pi() -> None:
    from edge_agent.sensors.system import SystemOptions, SystemSensor

    s = SystemSensor("sys", SystemOptions(), _ctx(None, []))
    s.open()
    r = s.read()
    assert "cpu_temp" in r, "no /sys/class/thermal/thermal_zone0/temp on this Pi?"
    assert 0 < r["cpu_temp"] < 100
