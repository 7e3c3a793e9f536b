"""Pin factory selection and the translation of GPIO failures into clear :class:`PinError` messages.

gpiozero picks a pin backend from ``GPIOZERO_PIN_FACTORY`` or by trial (lgpio, rpigpio, pigpio,
native) and, when everything fails, says only "Unable to load any default pin factory!". On a Pi the
real causes are few and each has a one-line fix, so this module names them:

* no ``/dev/gpiochip*`` at all: not a Pi, or the GPIO driver is not loaded (a container without the
  device passed through, a systemd unit with ``PrivateDevices=yes``);
* ``/dev/gpiochip*`` present but not readable/writable: the user is not in the ``gpio`` group;
* the backend's Python package is missing (``lgpio``, ``RPi.GPIO``, ``pigpio``);
* a pin is busy (used twice in this agent, or held by another process) or does not exist.

``agent.pin_factory`` in the config selects a backend by name (:func:`make_factory`); empty means
gpiozero's own choice. ``mock`` is gpiozero's :class:`~gpiozero.pins.mock.MockFactory` with PWM-capable
pins, for development on any machine.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.errors import PinError

FACTORIES: dict[str, tuple[str, str, str]] = {
    # name: (module, class, how to install the backend)
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory",
              "pip install lgpio (or: apt install python3-lgpio), or pip install 'edge-agent[pi]'"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory", "pip install RPi.GPIO (not on a Pi 5)"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory", "pip install pigpio, and run the pigpiod daemon"),
    "native": ("gpiozero.pins.native", "NativeFactory", "nothing (part of gpiozero)"),
}
NAMES = ("lgpio", "rpigpio", "pigpio", "native", "mock")
GPIO_GROUP = "gpio"

T = TypeVar("T")


def _join_hint(user: str | None = None) -> str:
    who = user or "<the agent's user>"
    return (f"add the user to the '{GPIO_GROUP}' group (sudo usermod -aG {GPIO_GROUP} {who}; log in again or "
            f"restart the service), or see hardware/permissions.md for a udev rule")


def gpio_access_problem(dev_dir: str | os.PathLike[str] = "/dev",
                        access: Callable[[str, int], bool] = os.access) -> str | None:
    """Why the GPIO character devices cannot be used, or None if at least one can be opened read/write."""
    chips = sorted(glob.glob(os.path.join(os.fspath(dev_dir), "gpiochip*")))
    if not chips:
        return (f"no {Path(dev_dir) / 'gpiochip*'} device: this is not a Raspberry Pi, the GPIO driver is not "
                f"loaded, or the device is not passed through (container: --device /dev/gpiochip0; systemd: "
                f"no PrivateDevices=yes, DeviceAllow=char-gpiochip rw). For development set "
                f"agent.pin_factory = \"mock\"")
    if not any(access(c, os.R_OK | os.W_OK) for c in chips):
        return f"permission denied on {', '.join(chips)}: {_join_hint()}"
    return None


def make_factory(name: str, dev_dir: str | os.PathLike[str] = "/dev",
                 access: Callable[[str, int], bool] = os.access) -> Any:
    """Build the gpiozero pin factory called ``name``; raise :class:`PinError` saying how to fix a failure."""
    if name == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        # PWM-capable mock pins so PWMLED/PWMOutputDevice work in development as on a Pi
        return MockFactory(pin_class=MockPWMPin)
    if name not in FACTORIES:
        raise PinError(f"unknown pin factory {name!r}: use one of {', '.join(NAMES)}")
    module, cls_name, install = FACTORIES[name]
    if name != "pigpio":  # pigpio talks to a daemon, possibly on another host
        problem = gpio_access_problem(dev_dir, access)
        if problem:
            raise PinError(f"pin factory {name!r}: {problem}")
    try:
        import importlib

        cls = getattr(importlib.import_module(module), cls_name)
        return cls()
    except ImportError as e:
        raise PinError(f"pin factory {name!r} is not installed ({e}): {install}") from None
    except Exception as e:
        raise translate(e, what=f"pin factory {name!r}") from None


def translate(err: BaseException, what: str = "", pin: int | str | None = None) -> PinError:
    """Turn a gpiozero/lgpio/OS failure into a PinError that says what to do."""
    if isinstance(err, PinError):
        return err
    from gpiozero import exc as gz

    label = what or (f"GPIO{pin}" if pin is not None else "GPIO")
    msg = str(err) or type(err).__name__
    low = msg.lower()
    if isinstance(err, gz.GPIOPinInUse):
        return PinError(f"{label}: pin GPIO{pin} is already used by another sensor or output in this agent "
                        f"({msg}); give each device its own pin")
    if "busy" in low or (isinstance(err, OSError) and err.errno == errno.EBUSY):
        return PinError(f"{label}: pin GPIO{pin} is busy: another process holds it (find it with `gpioinfo`; "
                        f"stop that program or pick another pin)")
    if isinstance(err, gz.PinInvalidPin | gz.GPIOPinMissing) or "not a valid pin" in low:
        return PinError(f"{label}: no pin GPIO{pin} on this board ({msg}); pins are BCM numbers 0-27 on the "
                        f"40-pin header (see hardware/README.md)")
    if isinstance(err, PermissionError) or "permission" in low or (isinstance(err, OSError) and
                                                                  err.errno in (errno.EACCES, errno.EPERM)):
        return PinError(f"{label}: permission denied ({msg}): {_join_hint()}")
    if isinstance(err, ImportError) and not isinstance(err, gz.BadPinFactory):
        # $GPIOZERO_PIN_FACTORY names a backend whose package is missing
        problem = gpio_access_problem()
        hint = problem or ("install the backend (lgpio: " + FACTORIES["lgpio"][2] + ") or choose another with "
                           "agent.pin_factory / GPIOZERO_PIN_FACTORY")
        return PinError(f"{label}: the GPIO backend cannot be loaded ({msg}): {hint}")
    if isinstance(err, gz.BadPinFactory) or "gpiochip" in low or "pin factory" in low:
        problem = gpio_access_problem()
        hint = problem or "set agent.pin_factory (lgpio on Pi OS bookworm) or GPIOZERO_PIN_FACTORY"
        return PinError(f"{label}: no usable GPIO backend ({msg}): {hint}")
    if isinstance(err, gz.PinPWMUnsupported):
        return PinError(f"{label}: pin GPIO{pin} cannot do PWM with this pin factory ({msg})")
    return PinError(f"{label}: {type(err).__name__}: {msg}")


def open_device(ctor: Callable[..., T], *args: Any, what: str = "", pin: int | str | None = None,
                **kwargs: Any) -> T:
    """Construct a gpiozero device, translating any failure with :func:`translate`."""
    try:
        return ctor(*args, **kwargs)
    except PinError:
        raise
    except Exception as e:
        raise translate(e, what=what, pin=pin) from None


def resolve(factory: Any) -> Any:
    """A context's ``pin_factory`` may be a factory, a callable returning one, or None (gpiozero default)."""
    if factory is None:
        return None
    if callable(factory) and not hasattr(factory, "pin"):
        return factory()
    return factory
