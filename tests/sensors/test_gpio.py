"""gpio.digital, gpio.analog and gpio.output against gpiozero's MockFactory (pins driven high/low)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from edge_agent import config
from edge_agent.actuators.base import ActuatorContext, ActuatorError
from edge_agent.actuators.gpio_output import GpioOutput, GpioOutputOptions
from edge_agent.errors import ConfigError, PinError
from edge_agent.sensors.base import SensorContext
from edge_agent.sensors.gpio_analog import GpioAnalogOptions, GpioAnalogSensor
from edge_agent.sensors.gpio_digital import GpioDigitalOptions, GpioDigitalSensor
from tests.helpers import wait_for
from tests.sensors.conftest import Emitted
from tests.sensors.fakes import MockMCP3x08

# ---------------------------------------------------------------------------- gpio.digital


def _digital(ctx: SensorContext, **kw: Any) -> GpioDigitalSensor:
    s = GpioDigitalSensor("door", GpioDigitalOptions(**kw), ctx)
    s.open()
    s.start()
    return s


def test_button_press_and_release_are_events(ctx: SensorContext, emitted: Emitted, factory: Any) -> None:
    s = _digital(ctx, pin=17, device="button", bounce_time=0)
    pin = factory.pin(17)
    assert pin.pull == "up"  # button default: internal pull-up, pressed = low
    pin.drive_low()
    pin.drive_high()
    assert emitted.events() == ["pressed", "released"]
    assert [i["data"]["state"] for i in emitted.items] == [1, 0]
    assert {i["stream"] for i in emitted.items} == {"events/door"}
    assert {i["cls"] for i in emitted.items} == {"event"}
    s.close()


@pytest.mark.parametrize(("device", "on", "off", "pull"), [
    ("motion", "motion", "no_motion", "down"), ("reed", "closed", "open", "up"),
    ("input", "active", "inactive", "down")])
def test_event_names_and_default_pull(ctx: SensorContext, emitted: Emitted, factory: Any, device: str, on: str,
                                      off: str, pull: str) -> None:
    s = _digital(ctx, pin=4, device=device, bounce_time=0)
    pin = factory.pin(4)
    assert pin.pull == pull
    active, idle = (pin.drive_high, pin.drive_low) if pull == "down" else (pin.drive_low, pin.drive_high)
    active()
    idle()
    assert emitted.events() == [on, off]
    s.close()


def test_debounce_gives_one_event_per_real_change(ctx: SensorContext, emitted: Emitted, factory: Any) -> None:
    s = _digital(ctx, pin=17, device="button", bounce_time=0.2)
    pin = factory.pin(17)
    pin.drive_low()  # press, then contact bounce
    for _ in range(5):
        pin.drive_high()
        pin.drive_low()
    assert emitted.events() == ["pressed"]
    time.sleep(0.3)
    assert emitted.events() == ["pressed"]  # settled pressed: nothing more
    pin.drive_high()  # release, bouncing, finally released inside the window
    pin.drive_low()
    pin.drive_high()
    assert emitted.events() == ["pressed", "released"]
    pin.drive_low()   # a bounce within the window that ends pressed: the trailing check publishes it
    wait_for(lambda: emitted.events() == ["pressed", "released", "pressed"], timeout=3,
             msg="trailing state after the bounce window")
    s.close()


def test_held_event(ctx: SensorContext, emitted: Emitted, factory: Any) -> None:
    s = _digital(ctx, pin=27, device="button", bounce_time=0, hold_time=0.1)
    factory.pin(27).drive_low()
    wait_for(lambda: "held" in emitted.events(), timeout=3)
    s.close()


def test_periodic_state_makes_it_polled(ctx: SensorContext, factory: Any) -> None:
    s = GpioDigitalSensor("pir", GpioDigitalOptions(pin=22, device="motion", periodic=True), ctx)
    assert s.kind == "poll"
    s.open()
    assert s.read() == {"state": 0}
    factory.pin(22).drive_high()
    assert s.read() == {"state": 1}
    s.close()


def test_pull_none_uses_active_high(ctx: SensorContext, emitted: Emitted, factory: Any) -> None:
    s = _digital(ctx, pin=5, device="input", pull="none", active_high=False, bounce_time=0)
    pin = factory.pin(5)
    assert s.read() == {"state": 1}  # a floating mock pin reads low: active, with active_high = false
    pin.drive_high()
    pin.drive_low()
    assert emitted.events() == ["inactive", "active"]
    s.close()


def test_hold_time_only_for_buttons() -> None:
    with pytest.raises(ConfigError, match=r"sensors\[0\]\.hold_time: only for device = 'button', not 'reed'"):
        config.loads('[[sensors]]\nname="d"\ntype="gpio.digital"\npin=17\ndevice="reed"\nhold_time=1.0\n')


def test_pin_used_twice_is_a_pin_error(ctx: SensorContext) -> None:
    a = _digital(ctx, pin=17)
    with pytest.raises(PinError, match="sensor door: pin GPIO17 is already used"):
        GpioDigitalSensor("door", GpioDigitalOptions(pin=17), ctx).open()
    a.close()


# ---------------------------------------------------------------------------- gpio.analog

def test_mcp3008_reading_scaled_to_celsius(ctx: SensorContext, factory: Any) -> None:
    adc = MockMCP3x08(factory, bits=10)
    s = GpioAnalogSensor("tmp36", GpioAnalogOptions(chip="mcp3008", channel=2, scale=100.0, offset=-50.0), ctx)
    s.open()
    adc.channels[2] = 0.75  # TMP36: 750 mV = 25 °C
    r = s.read()
    assert r["raw"] == adc.code(0.75) == 233
    assert r["voltage"] == pytest.approx(233 / 1023 * 3.3, abs=1e-4)
    assert r["value"] == pytest.approx(-50 + 100 * 233 / 1023 * 3.3, abs=1e-3)
    assert abs(r["value"] - 25.0) < 0.2
    adc.channels[2] = 3.3
    assert s.read()["raw"] == 1023
    s.close()


def test_mcp3208_twelve_bits_and_averaging(ctx: SensorContext, factory: Any) -> None:
    adc = MockMCP3x08(factory, bits=12)
    s = GpioAnalogSensor("p", GpioAnalogOptions(chip="mcp3208", channel=7, samples=4, vref=3.3), ctx)
    s.open()
    adc.channels[7] = 1.65
    r = s.read()
    assert adc.conversions == 4
    assert r["raw"] == 2048 and r["voltage"] == pytest.approx(1.6504, abs=1e-4)
    s.close()


def test_differential_channel(ctx: SensorContext, factory: Any) -> None:
    adc = MockMCP3x08(factory, bits=10)
    s = GpioAnalogSensor("d", GpioAnalogOptions(channel=0, differential=True), ctx)
    s.open()
    adc.channels[0], adc.channels[1] = 2.0, 0.5
    assert s.read()["raw"] == adc.code(1.5)
    s.close()


def test_analog_options_validated() -> None:
    with pytest.raises(ConfigError) as ei:
        config.loads('[[sensors]]\nname="a"\ntype="gpio.analog"\nchip="mcp3004"\nchannel=9\n')
    text = str(ei.value)
    assert "sensors[0].chip: must be one of 'mcp3008', 'mcp3208'" in text
    assert "sensors[0].channel: must be <= 7, got 9" in text


# ---------------------------------------------------------------------------- gpio.output

def _output(factory: Any, **kw: Any) -> GpioOutput:
    act = GpioOutput("pump", GpioOutputOptions(**kw),
                     ActuatorContext(log=logging.getLogger("test.out"), pin_factory=lambda: factory))
    act.open()
    return act


def test_relay_active_low_starts_off_electrically_high(factory: Any) -> None:
    act = _output(factory, pin=23, device="relay", active_high=False)
    pin = factory.pin(23)
    assert pin.function == "output" and pin.state == 1  # off = HIGH on an active-low relay board
    st = act.set(True)
    assert st == {"name": "pump", "value": 1.0, "on": True, "until": None}
    assert pin.state == 0
    act.close()
    assert pin.state == 1 or pin.function == "input"  # left off (gpiozero returns it to input on close)


def test_led_on_off_and_state(factory: Any) -> None:
    act = _output(factory, pin=18, device="led")
    pin = factory.pin(18)
    assert pin.state == 0
    act.set(1)
    assert pin.state == 1 and act.state()["on"] is True
    act.set(False)
    assert pin.state == 0 and act.state() == {"name": "pump", "value": 0.0, "on": False, "until": None}
    act.close()


def test_auto_off_after_duration(factory: Any) -> None:
    act = _output(factory, pin=24, device="buzzer")
    pin = factory.pin(24)
    t0 = time.time()
    st = act.set(True, duration=0.3)
    assert st["until"] == pytest.approx(t0 + 0.3, abs=0.1)
    assert pin.state == 1
    wait_for(lambda: pin.state == 0, timeout=3, msg="auto-off")
    assert time.time() - t0 >= 0.29
    assert act.state()["until"] is None
    act.close()


def test_new_set_cancels_pending_auto_off(factory: Any) -> None:
    act = _output(factory, pin=24)
    act.set(True, duration=0.2)
    act.set(True)  # no duration: stays on
    time.sleep(0.4)
    assert factory.pin(24).state == 1
    act.close()


def test_max_duration_caps_every_on(factory: Any) -> None:
    act = _output(factory, pin=25, max_duration=0.2)
    st = act.set(1)
    assert st["until"] is not None
    wait_for(lambda: factory.pin(25).state == 0, timeout=3)
    act.close()


def test_pwm_duty_cycle(factory: Any) -> None:
    act = _output(factory, pin=12, device="pwm", frequency=500.0)
    st = act.set(0.4)
    assert st["value"] == pytest.approx(0.4) and factory.pin(12).state == pytest.approx(0.4)
    act.close()


@pytest.mark.parametrize(("value", "duration", "msg"), [
    (0.5, None, "fractions need device = 'pwm'"), (2, None, "between 0 and 1"), ("on", None, "bool or a number"),
    (True, -1, "duration must be a number of seconds > 0")])
def test_bad_set_values(factory: Any, value: Any, duration: Any, msg: str) -> None:
    act = _output(factory, pin=16)
    with pytest.raises(ActuatorError, match=msg):
        act.set(value, duration)
    assert factory.pin(16).state == 0
    act.close()
    with pytest.raises(ActuatorError, match="closed"):
        act.set(True)


def test_initial_state_event(ctx: SensorContext, emitted: Emitted, factory: Any) -> None:
    s = GpioDigitalSensor("door", GpioDigitalOptions(pin=22, device="reed", initial=True, bounce_time=0), ctx)
    s.open()
    factory.pin(22).drive_low()  # door closed (reed to GND) when the agent starts (after the pull-up is set)
    assert emitted.items == []
    s.start()
    assert emitted.items == [{"data": {"event": "closed", "state": 1, "initial": True}, "cls": "event",
                              "stream": "events/door"}]
    s.close()
