"""The composition root: builds the parts from a Config, starts sinks before sources, stops in reverse.

::

    sensors --> Pipeline --> Outbox (SQLite) --> Forwarder --> MqttTransport --> broker
                  '--> inference taps --^                          |
    broker --> MqttTransport --> services (commands, messaging) ---'--> Outbox (replies, receipts)

Start order: outbox, transport, forwarder, services, sensors. Stop: sensors, services, pipeline
flush, outbox flush, forwarder drain (``agent.stop_timeout``), offline status, transport, outbox.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edge_agent import __version__, systemd
from edge_agent import actuators as actuators_mod
from edge_agent import config as config_mod
from edge_agent.actuators.base import Actuator, ActuatorContext
from edge_agent.config import Config
from edge_agent.errors import ConfigError
from edge_agent.forwarder import Forwarder
from edge_agent.health import Health, stall_request
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline
from edge_agent.sampling import SensorRunner
from edge_agent.sensors import plugin_class
from edge_agent.sensors.base import Reading, Sensor, SensorContext
from edge_agent.transport.mqtt import ConnectionStatus, InMessage, MqttTransport, Will
from edge_agent.transport.topics import status_topic

log = logging.getLogger("edge_agent")

OUTBOX_FILE = "outbox.db"


class Service(Protocol):
    """An optional part of the agent (commands, inference, messaging)."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class App:
    def __init__(self, cfg: Config, *, with_sensors: bool = True) -> None:
        self.cfg = cfg
        self.started_at = time.time()
        self.with_sensors = with_sensors
        stall = cfg.agent.watchdog_stall or (systemd.watchdog_interval() or 30.0)
        # the outbox writer beats at least once a second when idle: a shorter limit would flap
        self.health = Health(stall=max(stall, 2.0))
        self.state_dir = Path(cfg.storage.dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(self.state_dir / OUTBOX_FILE, cfg.device.id, max_age=cfg.storage.max_age,
                             max_bytes=cfg.storage.max_bytes, commit_interval=cfg.storage.commit_interval,
                             sync=cfg.storage.sync, memory_buffer=cfg.storage.memory_buffer,
                             topic_prefix=cfg.mqtt.topic_prefix, min_free=cfg.storage.min_free).open()
        self.outbox.heartbeat = self.health.beat_fn("outbox")
        self.prefix = cfg.mqtt.topic_prefix
        self.pipeline = Pipeline(self.outbox, self.prefix, cfg.device.id,
                                 {s.name: s.batch for s in cfg.sensors})
        self.message_handlers: list[tuple[Callable[[str], bool], Callable[[InMessage], None]]] = []
        self.status_listeners: list[Callable[[ConnectionStatus], None]] = []
        self.connected_listeners: list[Callable[[bool], None]] = []
        self.transport = MqttTransport(
            cfg.mqtt, will=Will(status_topic(self.prefix, cfg.device.id), self._status_payload("offline")),
            on_status=self._on_status, on_message=self._on_message, on_connected=self._on_connected,
            manual_ack=True)
        # the MQTT supervisor sleeps through its reconnect backoff and a blocking connect while the broker
        # is down; that silence is expected (a down broker must not get the agent restarted)
        self.transport.heartbeat = self.health.beat_fn(
            "mqtt", grace=cfg.mqtt.reconnect_max + cfg.mqtt.connect_timeout + 10.0)
        self.forwarder = Forwarder(self.outbox, self.transport, max_rate=cfg.mqtt.max_rate,
                                   max_rate_bytes=cfg.mqtt.max_rate_bytes)
        self.transport.set_ack_handler(self.forwarder.on_ack)
        self.forwarder.heartbeat = self.health.beat_fn("forwarder")
        test_stall = stall_request(os.environ)  # test-only hook, see edge_agent.health
        if test_stall:
            self.health.stall_on_purpose(*test_stall)
        self.runners: dict[str, SensorRunner] = {}
        self.sensors: dict[str, Sensor] = {}
        self.services: list[Service] = []
        self._stopped = threading.Event()
        self._status_due = False  # the last status publish failed (e.g. window full): retry next tick
        self._status_thread: threading.Thread | None = None
        self.pin_factory: Any = None
        self.outputs: dict[str, Actuator] = {}  # opened (safe state) in start(), switched off in stop()
        self._build_services()

    # ------------------------------------------------------------------ services
    def _build_services(self) -> None:
        """Optional parts; each registers its message handlers and pipeline taps itself."""
        if self.cfg.models:
            from edge_agent.inference.service import InferenceService

            self.services.append(InferenceService.from_app(self))
        if self.cfg.messaging.enabled:
            from edge_agent.messaging.service import MessagingService

            self.services.append(MessagingService(self))
        if self.cfg.commands.enabled:
            # Last, so the services whose commands it dispatches are started before commands arrive.
            from edge_agent.commands.service import CommandService

            self.services.append(CommandService(self))

    def service(self, name: str) -> Any:
        return next((s for s in self.services if s.name == name), None)

    def add_message_handler(self, match: Callable[[str], bool], fn: Callable[[InMessage], None]) -> None:
        self.message_handlers.append((match, fn))

    # ------------------------------------------------------------------ transport callbacks
    def _on_message(self, msg: InMessage) -> None:
        """Route an incoming message; PUBACK only after the handler returned (it has stored what it must).

        A handler that raises leaves the message unacknowledged, so it is redelivered rather than lost.
        A handler that wants to acknowledge later calls ``msg.ack()`` itself; acking twice is harmless.
        """
        for match, fn in self.message_handlers:
            if match(msg.topic):
                try:
                    fn(msg)
                except Exception:
                    # not acknowledged: the broker redelivers it after the next reconnect
                    log.exception("handler for %s failed; message left unacknowledged", msg.topic)
                    return
                msg.ack()
                return
        log.warning("no handler for message on %s; acknowledged and dropped", msg.topic)
        msg.ack()

    def _on_status(self, st: ConnectionStatus) -> None:
        level = logging.WARNING if st.state in ("offline", "auth_failed") else logging.INFO
        log.log(level, "mqtt %s: %s", st.state, st.reason)
        for fn in self.status_listeners:
            try:
                fn(st)
            except Exception:
                log.exception("status listener failed")

    def _on_connected(self, session_present: bool) -> None:
        self.forwarder.on_connected(session_present)
        self.outbox.count("reconnects", 1 if self.transport.reconnects else 0)
        self.publish_status()
        for fn in self.connected_listeners:
            try:
                fn(session_present)
            except Exception:
                log.exception("connected listener failed")

    # ------------------------------------------------------------------ status
    def status_dict(self, state: str = "online") -> dict[str, Any]:
        st = {"state": state, "dev": self.cfg.device.id, "ts": round(time.time(), 3), "version": __version__,
              "pid": os.getpid(), "started": round(self.started_at, 3), "groups": list(self.cfg.device.groups)}
        if state == "online":
            st["outbox"] = self.outbox.status()  # backlog, oldest age, all counters
            st["reconnects"] = self.transport.reconnects
        return st

    def _status_payload(self, state: str) -> bytes:
        if state == "offline":
            return json.dumps({"state": "offline", "dev": self.cfg.device.id,
                               "groups": list(self.cfg.device.groups)}).encode()
        return json.dumps(self.status_dict(state), separators=(",", ":")).encode()

    def publish_status(self) -> bool:
        """Publish the retained online status; False (retried by the status loop) if it could not go out."""
        try:
            self.transport.publish(status_topic(self.prefix, self.cfg.device.id), self._status_payload("online"),
                                   qos=1, retain=True, token=None)
        except Exception as e:
            log.debug("status not published: %s", e)
            self._status_due = True
            return False
        self._status_due = False
        return True

    def _status_loop(self) -> None:
        """Watchdog pings (only while every loop ticks), STATUS= lines, status.json, retained status."""
        interval = systemd.watchdog_interval()
        next_status = time.monotonic() + self.cfg.agent.status_interval
        tick = min(interval, 1.0) if interval else 1.0
        status_file = systemd.runtime_file("status.json")
        was_stalled: list[str] = []
        while not self._stopped.wait(tick):
            stalled = self.health.stalled()
            if stalled != was_stalled:
                if stalled:
                    log.error("watchdog: loop(s) stalled: %s; not pinging systemd", ", ".join(stalled),
                              extra={"STALLED": ",".join(stalled)})
                else:
                    log.warning("watchdog: all loops ticking again")
                was_stalled = stalled
            if interval and not stalled:
                systemd.watchdog()
            state = self.transport.status.state
            systemd.status(f"{state}; backlog {self.outbox.pending}; last_seq {self.outbox.last_seq}"
                           + (f"; STALLED: {', '.join(stalled)}" if stalled else ""))
            if status_file is not None:
                self._write_status_file(status_file, state, stalled)
            if time.monotonic() >= next_status or self._status_due:
                next_status = time.monotonic() + self.cfg.agent.status_interval
                if self.transport.connected:
                    self.publish_status()

    def _write_status_file(self, path: Path, state: str, stalled: list[str]) -> None:
        """$RUNTIME_DIRECTORY/status.json (tmpfs under systemd): what the deploy health gate reads."""
        doc = {"state": state, "dev": self.cfg.device.id, "ts": round(time.time(), 3), "pid": os.getpid(),
               "version": __version__, "pending": self.outbox.pending, "last_seq": self.outbox.last_seq,
               "stalled": stalled}
        try:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            tmp.replace(path)
        except OSError as e:
            log.debug("cannot write %s: %s", path, e)

    # ------------------------------------------------------------------ sensors
    def _make_sensor(self, sc: Any) -> Sensor:
        cls = plugin_class(sc.type)
        ctx = SensorContext(emit=self._push_emitter(sc), log=logging.getLogger(f"edge_agent.sensor.{sc.name}"),
                            pin_factory=self._get_pin_factory)
        return cls(sc.name, sc.options, ctx)

    def _get_pin_factory(self) -> Any:
        if self.pin_factory is None and self.cfg.agent.pin_factory:
            from edge_agent import pins

            self.pin_factory = pins.make_factory(self.cfg.agent.pin_factory)
        return self.pin_factory

    def _push_emitter(self, sc: Any) -> Callable[..., None]:
        def emit(data: dict[str, Any], cls: str | None = None, stream: str | None = None,
                 ts: float | None = None) -> None:
            self.pipeline.submit(Reading(sc.name, ts if ts is not None else time.time(), data,
                                         cls or sc.cls, stream))
        return emit

    def _sensor_error(self, name: str, err: Exception, failures: int) -> None:
        if failures == 1 or failures % 10 == 0:
            log.warning("sensor %s: read failed (%d in a row): %s", name, failures, err)
            try:
                self.pipeline.event("sensor_error", {"sensor": name, "error": f"{type(err).__name__}: {err}",
                                                     "failures": failures})
            except Exception:
                log.exception("cannot record sensor error")

    def _start_sensors(self) -> None:
        for sc in self.cfg.sensors:
            sensor = self._make_sensor(sc)
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
            runner = SensorRunner(sensor, sc.interval, sc.count, sc.cls, self.pipeline.submit,
                                  self._sensor_error)
            self.runners[sc.name] = runner
            self.health.add_check(f"sensor:{sc.name}", runner.stalled)
            runner.start()

    def _start_outputs(self) -> None:
        """Open every actuator in its safe (off) state; one that fails is reported and left out."""
        for oc in self.cfg.outputs:
            cls = actuators_mod.plugin_class(oc.type)
            act = cls(oc.name, oc.options, ActuatorContext(log=logging.getLogger(f"edge_agent.output.{oc.name}"),
                                                           pin_factory=self._get_pin_factory))
            try:
                act.open()
            except Exception as e:
                log.error("output %s (%s) cannot start: %s", oc.name, oc.type, e)
                try:
                    self.pipeline.event("output_error", {"output": oc.name, "error": f"{type(e).__name__}: {e}"})
                except Exception:
                    log.exception("cannot record output error")
                continue
            self.outputs[oc.name] = act

    def _close_outputs(self) -> None:
        for act in self.outputs.values():
            try:
                act.close()
            except Exception:
                log.exception("closing output %s", act.name)

    def set_interval(self, sensor: str, interval: float) -> None:
        runner = self.runners.get(sensor)
        if runner is None:
            raise KeyError(sensor)
        runner.set_interval(interval)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start everything; returns once the outbox is open (the broker may still be down)."""
        log.info("edge-agent %s starting: device %s, broker %s:%d, state %s", __version__, self.cfg.device.id,
                 self.cfg.mqtt.host, self.cfg.mqtt.port, self.state_dir)
        self._start_outputs()  # first: actuators reach their safe state as early as possible
        self.transport.start()
        self.forwarder.start()
        for svc in self.services:
            svc.start()
        if self.with_sensors:
            self._start_sensors()
        self._status_thread = threading.Thread(target=self._status_loop, name="status", daemon=True)
        self._status_thread.start()
        systemd.ready(f"started; backlog {self.outbox.pending}")

    def wait_sensors_done(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for r in self.runners.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not r.done.wait(left):
                return False
        return True

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.release()
        systemd.stopping()
        log.info("stopping: sources first")
        for r in self.runners.values():
            r.stop()
        for s in self.sensors.values():
            try:
                s.close()
            except Exception:
                log.exception("closing sensor %s", s.name)
        for svc in reversed(self.services):
            try:
                svc.stop()
            except Exception:
                log.exception("stopping %s", svc.name)
        self._close_outputs()  # after the command service: no set() can race the switch-off
        self.pipeline.flush()
        self.outbox.flush()
        if self.cfg.agent.stop_timeout > 0 and self.transport.connected and self.outbox.pending:
            drained = self.forwarder.drain(self.cfg.agent.stop_timeout)
            log.info("stop: backlog %s (%d pending)", "sent" if drained else "kept for next start",
                     self.outbox.pending)
        self.forwarder.stop()
        off = Will(status_topic(self.prefix, self.cfg.device.id), self._status_payload("offline"))
        self.transport.stop(timeout=3.0, offline=off)
        self.outbox.close()
        if self.pin_factory is not None:
            try:
                self.pin_factory.close()
            except Exception:
                log.debug("pin factory close failed", exc_info=True)
        log.info("stopped")

    def reload(self) -> bool:
        """SIGHUP: re-read the config file. A bad file is refused and the running config kept."""
        systemd.reloading()
        try:
            new = config_mod.load(self.cfg.source)
        except ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e)
            systemd.ready("reload refused: bad config")
            return False
        for sc in new.sensors:
            old = self.cfg.sensor(sc.name)
            if old is not None and old.interval != sc.interval and sc.name in self.runners:
                self.runners[sc.name].set_interval(sc.interval)
                log.info("reload: sensor %s interval %s -> %s", sc.name, old.interval, sc.interval)
        logging.getLogger().setLevel(new.logging.level.upper())
        changed = [k for k in ("device", "mqtt", "storage", "commands", "messaging", "models", "outputs")
                   if getattr(new, k) != getattr(self.cfg, k)]
        if changed or [s.name for s in new.sensors] != [s.name for s in self.cfg.sensors]:
            log.warning("reload: changes to %s take effect at the next restart",
                        ", ".join(changed) or "the sensor list")
        self.cfg = new
        systemd.ready("reloaded")
        return True
