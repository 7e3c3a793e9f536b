from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from gpiozero import LED, Button

from edge_agent import pins
from edge_agent.errors import EdgeAgentError, PinError


def test_mock_factory_drives_pwm(factory: Any) -> None:
    from gpiozero import PWMLED

    led = PWMLED(18, pin_factory=factory)
    led.value = 0.25
    assert factory.pin(18).state == pytest.approx(0.25)


def test_unknown_factory_lists_choices() -> None:
    with pytest.raises(PinError, match=r"unknown pin factory 'gpiod'.*lgpio, rpigpio, pigpio, native, mock"):
        pins.make_factory("gpiod")


def test_no_gpiochip_is_named(tmp_path: Path) -> None:
    with pytest.raises(PinError) as ei:
        pins.make_factory("lgpio", dev_dir=tmp_path)
    msg = str(ei.value)
    assert f"no {tmp_path}/gpiochip*" in msg and "mock" in msg
    assert isinstance(ei.value, EdgeAgentError) and isinstance(ei.value, RuntimeError)


def test_permission_denied_names_the_gpio_group(tmp_path: Path) -> None:
    (tmp_path / "gpiochip0").write_text("")
    (tmp_path / "gpiochip4").write_text("")
    with pytest.raises(PinError, match=r"permission denied on .*gpiochip0.*'gpio' group.*usermod -aG gpio"):
        pins.make_factory("native", dev_dir=tmp_path, access=lambda p, mode: False)


def test_missing_backend_package_says_how_to_install(tmp_path: Path) -> None:
    (tmp_path / "gpiochip0").write_text("")
    try:
        import lgpio  # noqa: F401
        pytest.skip("lgpio is installed here")
    except ImportError:
        pass
    with pytest.raises(PinError, match=r"pin factory 'lgpio' is not installed.*pip install lgpio"):
        pins.make_factory("lgpio", dev_dir=tmp_path, access=lambda p, mode: True)


def test_busy_pin_in_this_agent(factory: Any) -> None:
    first = pins.open_device(LED, 17, pin_factory=factory, what="output a", pin=17)
    with pytest.raises(PinError, match="output b: pin GPIO17 is already used by another sensor or output"):
        pins.open_device(Button, 17, pin_factory=factory, what="output b", pin=17)
    first.close()
    pins.open_device(Button, 17, pin_factory=factory, what="output b", pin=17).close()  # free again


def test_busy_pin_held_by_another_process() -> None:
    err = pins.translate(OSError(16, "GPIO busy"), what="sensor door", pin=4)
    assert "sensor door: pin GPIO4 is busy: another process holds it" in str(err)


def test_missing_pin(factory: Any) -> None:
    with pytest.raises(PinError, match="no pin GPIO60 on this board"):
        pins.open_device(LED, 60, pin_factory=factory, what="output x", pin=60)


def test_permission_error_from_a_device() -> None:
    err = pins.translate(PermissionError(13, "Permission denied", "/dev/gpiochip0"), what="sensor s", pin=5)
    assert "permission denied" in str(err) and "'gpio' group" in str(err)


def test_access_problem_none_when_usable(tmp_path: Path) -> None:
    (tmp_path / "gpiochip0").write_text("")
    assert pins.gpio_access_problem(tmp_path, access=os.access) is None


def test_resolve_accepts_factory_callable_or_none(factory: Any) -> None:
    assert pins.resolve(None) is None
    assert pins.resolve(factory) is factory
    assert pins.resolve(lambda: factory) is factory


def test_env_pin_factory_used_when_config_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """agent.pin_factory empty: gpiozero's choice from $GPIOZERO_PIN_FACTORY; a missing backend is named."""
    import logging

    import gpiozero

    from edge_agent.sensors.base import SensorContext
    from edge_agent.sensors.gpio_digital import GpioDigitalOptions, GpioDigitalSensor

    ctx = SensorContext(emit=lambda *a, **k: None, log=logging.getLogger("t"))  # pin_factory None
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)
    s = GpioDigitalSensor("d", GpioDigitalOptions(pin=17), ctx)
    s.open()  # conftest sets GPIOZERO_PIN_FACTORY=mock
    assert type(gpiozero.Device.pin_factory).__name__ == "MockFactory"
    s.close()
    try:
        import lgpio  # noqa: F401
        return
    except ImportError:
        pass
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "lgpio")
    with pytest.raises(PinError, match=r"sensor d: the GPIO backend cannot be loaded \(No module named 'lgpio'\)"):
        GpioDigitalSensor("d", GpioDigitalOptions(pin=17), ctx).open()
