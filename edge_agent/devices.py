"""The hardware side of the agent: sensors and outputs built from the config, sharing one pin factory.

Outputs open first at start, each in its safe (off) state, and close (off again) at stop. An output that
cannot open fails the start with an error naming it: an agent that cannot drive a configured relay must
not run as if it could (systemd restarts it, and the log says which output and why).
A sensor that cannot open is reported (``events/sensor_error``) and left out; the others run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from edge_agent import actuators as actuators_mod
from edge_agent.actuators.base import Actuator, ActuatorContext
from edge_agent.config import Config, OutputConfig, SensorConfig
from edge_agent.errors import StartError
from edge_agent.health import Health
from edge_agent.pipeline import Pipeline
from edge_agent.sampling import SensorRunner, describe
from edge_agent.sensors import plugin_class
from edge_agent.sensors.base import Reading, Sensor, SensorContext

log = logging.getLogger("edge_agent")


class Devices:
    def __init__(self, cfg: Config, health: Health) -> None:
        self.cfg = cfg
        self.health = health
        self.runners: dict[str, SensorRunner] = {}  # polled sensors
        self.sensors: dict[str, Sensor] = {}  # every open sensor (polled and push)
        self.outputs: dict[str, Actuator] = {}  # open (safe state) between open_outputs() and close_outputs()
        self._pins: Any = None
        self._pipeline: Pipeline | None = None

    def pin_factory(self) -> Any:
        """The shared GPIO pin factory named by ``agent.pin_factory`` (made on first use), or None for
        gpiozero's default."""
        if self._pins is None and self.cfg.agent.pin_factory:
            from edge_agent import pins

            self._pins = pins.make_factory(self.cfg.agent.pin_factory)
        return self._pins

    # ------------------------------------------------------------------ outputs
    def open_outputs(self) -> None:
        """Open every output in its safe state. One that fails closes those already open and raises
        :class:`StartError` naming it."""
        for oc in self.cfg.outputs:
            act = self._make_output(oc)
            try:
                act.open()
            except Exception as e:
                self.close_outputs()
                raise StartError(f"output {oc.name!r} ({oc.type}) cannot start: {type(e).__name__}: {e}") from e
            self.outputs[oc.name] = act

    def _make_output(self, oc: OutputConfig) -> Actuator:
        cls = actuators_mod.plugin_class(oc.type)
        ctx = ActuatorContext(log=logging.getLogger(f"edge_agent.output.{oc.name}"), pin_factory=self.pin_factory)
        return cls(oc.name, oc.options, ctx)

    def close_outputs(self) -> None:
        outputs, self.outputs = self.outputs, {}
        for act in outputs.values():
            try:
                act.close()
            except Exception:
                log.exception("closing output %s", act.name)

    # ------------------------------------------------------------------ sensors
    def start_sensors(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        for sc in self.cfg.sensors:
            sensor = self._make_sensor(sc, pipeline)
            try:
                sensor.open()
            except Exception as e:
                log.error("sensor %s (%s) cannot start: %s", sc.name, sc.type, e)
                self._sensor_error(sc.name, e, 1)
                continue
            self.sensors[sc.name] = sensor
            if sensor.kind == "push":
                sensor.start()
                continue
            runner = SensorRunner(sensor, sc.interval, sc.count, sc.cls, pipeline.submit, self._sensor_error)
            self.runners[sc.name] = runner
            self.health.add_check(f"sensor:{sc.name}", runner.stalled)
            runner.start()

    def _make_sensor(self, sc: SensorConfig, pipeline: Pipeline) -> Sensor:
        def emit(data: dict[str, Any], cls: str | None = None, stream: str | None = None,
                 ts: float | None = None) -> None:
            pipeline.submit(Reading(sc.name, ts if ts is not None else time.time(), data, cls or sc.cls, stream))

        ctx = SensorContext(emit=emit, log=logging.getLogger(f"edge_agent.sensor.{sc.name}"),
                            pin_factory=self.pin_factory)
        return plugin_class(sc.type)(sc.name, sc.options, ctx)

    def _sensor_error(self, name: str, err: Exception, failures: int) -> None:
        if failures != 1 and failures % 10 != 0:
            return
        log.warning("sensor %s: read failed (%d in a row): %s", name, failures, err)
        if self._pipeline is None:
            return
        try:
            self._pipeline.event("sensor_error", {"sensor": name, "error": f"{type(err).__name__}: {err}",
                                                  "failures": failures})
        except Exception:
            log.exception("cannot record sensor error")

    def stop_sensors(self) -> None:
        for r in self.runners.values():
            r.stop()
        for s in self.sensors.values():
            try:
                s.close()
            except Exception:
                log.exception("closing sensor %s", s.name)

    def set_interval(self, sensor: str, interval: float) -> None:
        """KeyError if ``sensor`` is not a running polled sensor."""
        self.runners[sensor].set_interval(interval)

    def wait_sensors_done(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for r in self.runners.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not r.done.wait(left):
                return False
        return True

    def describe(self) -> dict[str, dict[str, Any]]:
        return {name: describe(r) for name, r in self.runners.items()}

    def reload(self, new: Config) -> None:
        """Apply what a reload can change without a restart: sensor intervals."""
        for sc in new.sensors:
            old = self.cfg.sensor(sc.name)
            if old is not None and old.interval != sc.interval and sc.name in self.runners:
                self.runners[sc.name].set_interval(sc.interval)
                log.info("reload: sensor %s interval %s -> %s", sc.name, old.interval, sc.interval)
        self.cfg = new

    def close(self) -> None:
        """Release the pin factory (after the sensors and outputs are closed)."""
        if self._pins is not None:
            try:
                self._pins.close()
            except Exception:
                log.debug("pin factory close failed", exc_info=True)
