"""``gpio.digital``: a button, PIR motion sensor, reed switch or any digital input, interrupt-driven.

Every change of the input is published as an event on ``events/<name>`` (class ``event``)::

    {"event": "pressed", "state": 1}      # button: pressed / released (/ held with hold_time)
    {"event": "motion", "state": 1}       # motion: motion / no_motion
    {"event": "closed", "state": 1}       # reed:   closed / open
    {"event": "active", "state": 1}       # input:  active / inactive

No thread polls the pin: gpiozero calls back on the edge (lgpio: a kernel line event), so an idle
input costs nothing. ``motion`` deliberately uses a plain ``DigitalInputDevice`` rather than gpiozero's
``MotionSensor``, which samples the pin from a background thread; a PIR module drives a clean digital
output, so no averaging is needed.

Debounce: ``bounce_time`` is passed to gpiozero (lgpio debounces in the kernel), and the plugin also
applies it in software so every backend behaves the same: after a published edge, edges within
``bounce_time`` are held back, and when that window closes the pin is read once more; if it settled
on the other level, that state is published then. A bouncing contact therefore gives exactly one
event per real change, and the last published state always matches the pin.

With ``initial = true`` the state found at start is published once as an event marked
``"initial": true`` (a door that is already open when the agent starts). With ``periodic = true`` the
sensor is also polled every ``interval`` seconds and publishes
``{"state": 0|1}`` on ``telemetry/<name>`` (keep ``batch = 1`` for this sensor: a batch would mix
events and states).

Wiring (BCM numbering; see hardware/gpio-digital.md)::

    button / reed switch              PIR (HC-SR501, 3.3 V output)
    GPIO17 (pin 11) -- switch --+     5V  (pin 2)     -- VCC
    GND    (pin 9)  ------------+     GPIO27 (pin 13) -- OUT
                                      GND (pin 14)    -- GND

Buttons and reed switches use the Pi's internal pull-up (``pull = "up"``): pressed/closed reads low.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edge_agent.pins import open_device
from edge_agent.sensors.base import Sensor

SAMPLE = """\
[[sensors]]
name = "door"
type = "gpio.digital"
device = "reed"        # button, motion, reed or input
pin = 17               # BCM number (GPIO17 = header pin 11)
pull = "auto"          # auto (button/reed: up, motion/input: down), up, down, none
# active_high = true   # only with pull = "none": is a high level 'active'?
bounce_time = 0.05     # seconds; edges closer than this are one change
# hold_time = 0.0      # button only: publish 'held' after this many seconds (0 = never)
# periodic = false     # also publish {state} every `interval` seconds on telemetry/door
# initial = false      # publish the state found at start as an event ("initial": true)
"""

EVENT_NAMES: dict[str, tuple[str, str]] = {
    "button": ("pressed", "released"),
    "motion": ("motion", "no_motion"),
    "reed": ("closed", "open"),
    "input": ("active", "inactive"),
}
DEFAULT_PULL = {"button": "up", "reed": "up", "motion": "down", "input": "down"}


@dataclass(frozen=True)
class GpioDigitalOptions:
    pin: int = field(metadata={"doc": "BCM GPIO number (not the header pin number).", "ge": 0, "le": 53})
    device: str = field(default="input", metadata={"doc": "button, motion, reed or input (sets event names "
                                                          "and the default pull).",
                                                   "choices": tuple(EVENT_NAMES)})
    pull: str = field(default="auto", metadata={"doc": "Internal resistor: auto, up (active low), down "
                                                       "(active high), none (external; see active_high).",
                                                "choices": ("auto", "up", "down", "none")})
    active_high: bool = field(default=True, metadata={"doc": "With pull = 'none': a high level is active."})
    bounce_time: float = field(default=0.05, metadata={"doc": "Debounce window in seconds (0 = none).",
                                                       "ge": 0, "le": 10})
    hold_time: float = field(default=0.0, metadata={"doc": "Button: 'held' event after this many seconds "
                                                           "(0 = never).", "ge": 0})
    periodic: bool = field(default=False, metadata={"doc": "Also publish {state} every interval seconds."})
    initial: bool = field(default=False, metadata={"doc": "Publish the state found at start as an event "
                                                         "(with \"initial\": true), e.g. for a door contact."})

    @staticmethod
    def validate(o: GpioDigitalOptions) -> list[tuple[str, str]]:
        errs = []
        if o.hold_time and o.device != "button":
            errs.append(("hold_time", f"only for device = 'button', not {o.device!r}"))
        return errs


class GpioDigitalSensor(Sensor):
    Options = GpioDigitalOptions
    SAMPLE = SAMPLE

    def __init__(self, name: str, options: Any, ctx: Any) -> None:
        super().__init__(name, options, ctx)
        self.kind = "poll" if self.options.periodic else "push"  # type: ignore[misc]
        self._dev: Any = None
        self._lock = threading.Lock()
        self._published: int | None = None
        self._last_edge = 0.0
        self._trailing: threading.Timer | None = None
        self._closed = False

    def open(self) -> None:
        from gpiozero import Button, DigitalInputDevice

        o = self.options
        pull = DEFAULT_PULL[o.device] if o.pull == "auto" else o.pull
        pull_up = {"up": True, "down": False, "none": None}[pull]
        kwargs: dict[str, Any] = {"pull_up": pull_up, "bounce_time": o.bounce_time or None,
                                  "pin_factory": self.factory()}
        if pull_up is None:
            kwargs["active_state"] = o.active_high
        if o.device == "button":
            kwargs["hold_time"] = o.hold_time or 1.0
            self._dev = open_device(Button, o.pin, what=f"sensor {self.name}", pin=o.pin, **kwargs)
        else:
            self._dev = open_device(DigitalInputDevice, o.pin, what=f"sensor {self.name}", pin=o.pin, **kwargs)

    def start(self) -> None:
        dev = self._dev
        with self._lock:
            self._published = state = int(dev.value)
        if self.options.initial:
            on, off = EVENT_NAMES[self.options.device]
            self.ctx.emit({"event": on if state else off, "state": state, "initial": True}, cls="event",
                          stream=f"events/{self.name}")
        dev.when_activated = lambda *_: self._edge()
        dev.when_deactivated = lambda *_: self._edge()
        if self.options.device == "button" and self.options.hold_time:
            dev.when_held = lambda *_: self._emit_event("held", 1)

    def _edge(self) -> None:
        """A pin change (called on gpiozero's event thread)."""
        bounce = self.options.bounce_time
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return
            if bounce and now - self._last_edge < bounce:
                if self._trailing is None:  # re-check once the window closes
                    t = threading.Timer(self._last_edge + bounce - now, self._settle)
                    t.daemon = True
                    self._trailing = t
                    t.start()
                return
            state = int(self._dev.value)
            if state == self._published:
                return
            self._published = state
            self._last_edge = now
        self._emit_state(state)

    def _settle(self) -> None:
        with self._lock:
            self._trailing = None
            if self._closed:
                return
            state = int(self._dev.value)
            if state == self._published:
                return
            self._published = state
            self._last_edge = time.monotonic()
        self._emit_state(state)

    def _emit_state(self, state: int) -> None:
        on, off = EVENT_NAMES[self.options.device]
        self._emit_event(on if state else off, state)

    def _emit_event(self, event: str, state: int) -> None:
        self.ctx.emit({"event": event, "state": state}, cls="event", stream=f"events/{self.name}")

    def read(self) -> dict[str, Any]:
        return {"state": int(self._dev.value)}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._trailing is not None:
                self._trailing.cancel()
        if self._dev is not None:
            self._dev.close()
            self._dev = None
