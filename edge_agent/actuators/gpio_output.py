"""``gpio.output``: an LED, relay, buzzer or PWM output on one GPIO pin, driven by ``output.set``.

Safe state: the pin is driven to *off* as soon as the agent opens it and again when it stops; with
``active_high = false`` (most relay boards: the relay pulls in when the input is LOW) "off" means a
high level, so the relay does not click on at start. Between power-up and agent start the pin is an
input with the SoC's default pull (GPIO0-8 pull up, GPIO9-27 pull down): put active-low loads on a
pulled-up pin (GPIO5, GPIO6) and active-high loads on a pulled-down one, so the load stays off while
the Pi boots (see hardware/gpio-output.md).

``set(value, duration)`` takes a bool, or 0..1 for ``device = "pwm"`` (duty cycle at ``frequency``
Hz); other devices accept only 0/1/true/false. ``duration`` switches back off after that many
seconds; ``max_duration`` caps it (and with ``max_duration`` > 0 every "on" gets an auto-off, even
without a duration, so a lost "off" command cannot leave a heater on forever).

Returned state: ``{"name": "pump", "value": 1.0, "on": true, "until": 1764316860.2}`` (``until`` is
the wall-clock auto-off time, or null).

Wiring (see hardware/gpio-output.md)::

    LED:    GPIO18 (pin 12) -- 330 Ω -- LED anode, cathode -- GND (pin 14)
    relay:  module IN -- GPIO5 (pin 29); VCC -- 5V (pin 4); GND -- GND (pin 30)
    buzzer: GPIO24 (pin 18) -- 1 kΩ -- NPN base; buzzer between 5V and the collector; emitter -- GND
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edge_agent.actuators.base import Actuator, ActuatorError
from edge_agent.pins import open_device

SAMPLE = """\
[[outputs]]
name = "pump"
type = "gpio.output"
device = "relay"        # led, relay, buzzer, pwm or digital
pin = 5                 # BCM number (GPIO5 = header pin 29; pulled up while the Pi boots)
active_high = false     # most relay boards switch on with a LOW input
# frequency = 100.0     # pwm only: Hz
# max_duration = 0.0    # seconds; > 0: every 'on' switches off after at most this long
"""

DEVICES = ("led", "relay", "buzzer", "pwm", "digital")


@dataclass(frozen=True)
class GpioOutputOptions:
    pin: int = field(metadata={"doc": "BCM GPIO number.", "ge": 0, "le": 53})
    device: str = field(default="digital", metadata={"doc": "led, relay, buzzer, pwm or digital.",
                                                     "choices": DEVICES})
    active_high: bool = field(default=True, metadata={"doc": "true: on = HIGH; false: on = LOW (relay boards)."})
    frequency: float = field(default=100.0, metadata={"doc": "PWM frequency in Hz (pwm only).", "gt": 0,
                                                      "le": 100000})
    max_duration: float = field(default=0.0, metadata={"doc": "Longest time on in seconds (0 = no limit).",
                                                       "ge": 0})


class GpioOutput(Actuator):
    Options = GpioOutputOptions
    SAMPLE = SAMPLE

    def __init__(self, name: str, options: Any, ctx: Any) -> None:
        super().__init__(name, options, ctx)
        self._dev: Any = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._until: float | None = None
        self._gen = 0

    def open(self) -> None:
        import gpiozero

        o = self.options
        kw: dict[str, Any] = {"active_high": o.active_high, "initial_value": False,
                              "pin_factory": self.factory()}
        what = f"output {self.name}"
        if o.device == "pwm":
            self._dev = open_device(gpiozero.PWMOutputDevice, o.pin, frequency=o.frequency,
                                    what=what, pin=o.pin, **kw)
        else:
            cls = {"led": gpiozero.LED, "buzzer": gpiozero.Buzzer}.get(o.device, gpiozero.DigitalOutputDevice)
            self._dev = open_device(cls, o.pin, what=what, pin=o.pin, **kw)

    def _coerce(self, value: float | bool) -> float:
        if isinstance(value, bool):
            return 1.0 if value else 0.0
        if not isinstance(value, int | float):
            raise ActuatorError(f"output {self.name}: value must be a bool or a number, got {value!r}")
        v = float(value)
        if not 0.0 <= v <= 1.0:
            raise ActuatorError(f"output {self.name}: value must be between 0 and 1, got {value!r}")
        if self.options.device != "pwm" and v not in (0.0, 1.0):
            raise ActuatorError(f"output {self.name}: a {self.options.device} is on or off (0/1, true/false); "
                                f"fractions need device = 'pwm', got {value!r}")
        return v

    def set(self, value: float | bool, duration: float | None = None) -> dict[str, Any]:
        v = self._coerce(value)
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int | float)
                                     or not duration > 0):
            raise ActuatorError(f"output {self.name}: duration must be a number of seconds > 0, got {duration!r}")
        cap = self.options.max_duration
        if v > 0 and cap > 0:
            duration = min(duration, cap) if duration else cap
        with self._lock:
            if self._dev is None:
                raise ActuatorError(f"output {self.name}: closed")
            self._cancel_timer()
            self._dev.value = v
            self._until = None
            if v > 0 and duration:
                self._gen += 1
                gen = self._gen
                self._until = time.time() + duration
                t = threading.Timer(duration, self._auto_off, args=(gen,))
                t.daemon = True
                t.name = f"auto-off-{self.name}"
                self._timer = t
                t.start()
            return self._state()

    def _auto_off(self, gen: int) -> None:
        with self._lock:
            if gen != self._gen or self._dev is None:  # superseded by a later set()
                return
            self._dev.value = 0
            self._until = None
            self._timer = None
        self.ctx.log.info("output %s: auto-off", self.name)

    def _cancel_timer(self) -> None:
        self._gen += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _state(self) -> dict[str, Any]:
        value = float(self._dev.value) if self._dev is not None else 0.0
        return {"name": self.name, "value": round(value, 4), "on": value > 0,
                "until": round(self._until, 3) if self._until else None}

    def state(self) -> dict[str, Any]:
        with self._lock:
            return self._state()

    def close(self) -> None:
        with self._lock:
            self._cancel_timer()
            if self._dev is not None:
                try:
                    self._dev.value = 0
                finally:
                    self._dev.close()
                    self._dev = None
            self._until = None
