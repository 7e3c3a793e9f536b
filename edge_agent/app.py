"""The composition root: builds the parts from a Config, starts sinks before sources, stops in reverse.

::

    sensors --> Pipeline --> Outbox (SQLite) --> Forwarder --> MqttTransport --> broker
                  '--> inference taps --^                          |
    broker --> MqttTransport --> Router --> services (commands, messaging) --> Outbox (replies, receipts)

Three steps, each explicit:

* ``App(cfg)`` only records the config: no file is touched and no thread started.
* :meth:`App.open` opens the state (state dir, outbox, the services' stores) and builds the transport,
  forwarder, pipeline and services, each service getting the agent as a :class:`~edge_agent.host.Host`
  (:class:`~edge_agent.apphost.AppHost`). Nothing connects yet. :meth:`App.start` calls it.
* :meth:`App.start`: outputs (safe state), open, transport, forwarder, services, sensors, status.
  :meth:`App.stop`: sensors, services, outputs, pipeline flush, outbox flush, forwarder drain
  (``agent.stop_timeout``), offline status, transport, outbox.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent import config as config_mod
from edge_agent import systemd
from edge_agent.actuators.base import Actuator
from edge_agent.apphost import AppControl, AppHost, ConnectionListener
from edge_agent.config import Config
from edge_agent.devices import Devices
from edge_agent.errors import ConfigError
from edge_agent.forwarder import Forwarder
from edge_agent.health import Health, stall_request
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline
from edge_agent.router import Router
from edge_agent.sampling import SensorRunner
from edge_agent.sensors.base import Sensor
from edge_agent.status import StatusReporter, offline_will
from edge_agent.transport.mqtt import ConnectionStatus, MqttTransport
from edge_agent.version import __version__

log = logging.getLogger("edge_agent")

OUTBOX_FILE = "outbox.db"


class Service(Protocol):
    """An optional part of the agent (commands, inference, messaging)."""

    name: str
    #: stopped after the backlog is sent (messaging: the PUBACKs of the drain still update statuses)
    #: instead of with the other services, before the outputs switch off
    stops_after_drain: bool

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class _Parts:
    """What :meth:`App.open` builds."""

    outbox: Outbox
    pipeline: Pipeline
    transport: MqttTransport
    forwarder: Forwarder
    status: StatusReporter
    host: AppHost


class App:
    def __init__(self, cfg: Config, *, with_sensors: bool = True) -> None:
        self.cfg = cfg
        self.with_sensors = with_sensors
        self.state_dir = Path(cfg.storage.dir)
        stall = cfg.agent.watchdog_stall or (systemd.watchdog_interval() or 30.0)
        # the outbox writer beats at least once a second when idle: a shorter limit would flap
        self.health = Health(stall=max(stall, 2.0))
        self.router = Router()
        self.devices = Devices(cfg, self.health)
        self.control = AppControl(self)
        self.services: list[Service] = []
        self._connection_listeners: list[ConnectionListener] = []
        self._parts: _Parts | None = None
        self._started = False
        self._stopped = False
        self._stop_lock = threading.Lock()

    # ------------------------------------------------------------------ build
    def open(self) -> None:
        """Open the state and build every part; nothing connects yet. Idempotent."""
        if self._parts is not None:
            return
        cfg = self.cfg
        prefix = cfg.mqtt.topic_prefix
        self.state_dir.mkdir(parents=True, exist_ok=True)
        outbox = Outbox(self.state_dir / OUTBOX_FILE, cfg.device.id, max_age=cfg.storage.max_age,
                        max_bytes=cfg.storage.max_bytes, commit_interval=cfg.storage.commit_interval,
                        sync=cfg.storage.sync, memory_buffer=cfg.storage.memory_buffer,
                        topic_prefix=prefix, min_free=cfg.storage.min_free, mode=cfg.storage.mode,
                        flush_after=cfg.storage.flush_after, hold_limit=cfg.storage.hold_limit,
                        quarantine_keep=cfg.storage.quarantine_keep).open()
        outbox.heartbeat = self.health.beat_fn("outbox")
        pipeline = Pipeline(outbox, prefix, cfg.device.id, {s.name: s.batch for s in cfg.sensors})
        transport = MqttTransport(cfg.mqtt, will=offline_will(cfg), on_status=self._on_status,
                                  on_message=self.router.route, on_connected=self._on_connected, manual_ack=True)
        # the MQTT supervisor sleeps through its reconnect backoff and a blocking connect while the broker
        # is down; that silence is expected (a down broker must not get the agent restarted)
        transport.heartbeat = self.health.beat_fn("mqtt", grace=cfg.mqtt.reconnect_max + cfg.mqtt.connect_timeout
                                                  + 10.0)
        forwarder = Forwarder(outbox, transport, max_rate=cfg.mqtt.max_rate, max_rate_bytes=cfg.mqtt.max_rate_bytes)
        transport.set_ack_handler(forwarder.on_ack)
        forwarder.heartbeat = self.health.beat_fn("forwarder")
        test_stall = stall_request(os.environ)  # test-only hook, see edge_agent.health
        if test_stall:
            self.health.stall_on_purpose(*test_stall)
        status = StatusReporter(lambda: self.cfg, outbox, transport, self.health, self.router.counters)
        host = AppHost(config=lambda: self.cfg, state_dir=self.state_dir, control=self.control, outbox=outbox,
                       pipeline=pipeline, transport=transport, forwarder=forwarder, router=self.router,
                       on_connection=self.on_connection, services=self.service, status=status)
        self._parts = _Parts(outbox, pipeline, transport, forwarder, status, host)
        try:
            self._build_services(host)
        except BaseException:  # e.g. a store that cannot be opened: close what is open, leave no thread
            self._close_state()
            self._parts = None
            self.services = []
            raise

    def _build_services(self, host: AppHost) -> None:
        """Optional parts. Each subscribes its topics and taps through the host when it is built, so
        the subscriptions go out with the first CONNECT."""
        command_sets: list[Callable[[Any], None]] = []  # register_commands(registry) of other services
        if self.cfg.models:
            from edge_agent.inference.service import InferenceService

            inference = InferenceService.from_host(host)
            self.services.append(inference)
            command_sets.append(inference.register_commands)
        if self.cfg.messaging.enabled:
            from edge_agent.messaging.service import MessagingService

            messaging = MessagingService(host)
            messaging.open()  # history and transfers open now: an Agent may send before it starts
            self.services.append(messaging)
        if self.cfg.commands.enabled:
            # Last, so the services whose commands it dispatches are started before commands arrive.
            from edge_agent.commands.service import CommandService

            commands = CommandService(host)
            commands.open()
            for register in command_sets:
                commands.add_commands(register)
            self.services.append(commands)

    @property
    def _built(self) -> _Parts:
        if self._parts is None:
            raise RuntimeError("the agent is not open yet: call App.open() or App.start() first")
        return self._parts

    @property
    def outbox(self) -> Outbox:
        return self._built.outbox

    @property
    def pipeline(self) -> Pipeline:
        return self._built.pipeline

    @property
    def transport(self) -> MqttTransport:
        return self._built.transport

    @property
    def forwarder(self) -> Forwarder:
        return self._built.forwarder

    @property
    def host(self) -> AppHost:
        return self._built.host

    @property
    def runners(self) -> dict[str, SensorRunner]:
        return self.devices.runners

    @property
    def sensors(self) -> dict[str, Sensor]:
        return self.devices.sensors

    @property
    def outputs(self) -> dict[str, Actuator]:
        return self.devices.outputs

    def service(self, name: str) -> Any:
        return next((s for s in self.services if s.name == name), None)

    def on_connection(self, fn: ConnectionListener) -> None:
        """``fn(status)`` on every connection state change (network thread: must be quick)."""
        self._connection_listeners.append(fn)

    # ------------------------------------------------------------------ transport callbacks
    def _on_status(self, st: ConnectionStatus) -> None:
        level = logging.WARNING if st.state in ("offline", "auth_failed") else logging.INFO
        log.log(level, "mqtt %s: %s", st.state, st.reason)
        for fn in list(self._connection_listeners):
            try:
                fn(st)
            except Exception:
                log.exception("connection listener failed")

    def _on_connected(self, session_present: bool) -> None:
        p = self._built
        p.forwarder.on_connected(session_present)
        p.outbox.count("reconnects", 1 if p.transport.reconnects else 0)
        p.status.publish()

    # ------------------------------------------------------------------ queries
    def status_dict(self, state: str = "online") -> dict[str, Any]:
        return self._built.status.status_dict(state)

    def publish_status(self) -> bool:
        return self._built.status.publish()

    def connection_status(self) -> ConnectionStatus:
        return self.transport.status

    def wait_online(self, timeout: float) -> bool:
        return self.transport.wait_online(timeout)

    def wait_sensors_done(self, timeout: float | None = None) -> bool:
        return self.devices.wait_sensors_done(timeout)

    def drain(self, timeout: float) -> bool:
        """Store what is buffered and send the backlog, up to ``timeout`` seconds; True if all was sent."""
        p = self._built
        p.pipeline.flush()
        p.outbox.flush()
        return p.transport.connected and p.forwarder.drain(timeout)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start everything; returns once the outbox is open (the broker may still be down).

        Raises :class:`~edge_agent.errors.StartError` naming an output that cannot be opened."""
        if self._started or self._stopped:
            raise RuntimeError("App.start() twice, or after stop()")
        log.info("edge-agent %s starting: device %s, broker %s:%d, state %s", __version__, self.cfg.device.id,
                 self.cfg.mqtt.host, self.cfg.mqtt.port, self.state_dir)
        self.devices.open_outputs()  # first: actuators reach their safe state as early as possible
        try:
            self.open()
        except BaseException:
            self.devices.close_outputs()
            raise
        self._started = True
        p = self._built
        for svc in self.services:  # before the link: the persistent session's queued messages need their handlers
            svc.start()
        p.transport.start()
        p.forwarder.start()
        if self.with_sensors:
            self.devices.start_sensors(p.pipeline)
        p.status.start()
        systemd.ready(f"started; backlog {p.outbox.pending}")

    def stop(self) -> None:
        """Stop in reverse order, sending the backlog for up to ``agent.stop_timeout`` s. Idempotent; also
        closes an agent that was opened but never started."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        if not self._started:
            self._close_state()
            self.devices.close()
            return
        p = self._built
        self.health.release()
        systemd.stopping()
        log.info("stopping: sources first")
        p.status.stop()
        self.devices.stop_sensors()
        self._stop_services(after_drain=False)
        self.devices.close_outputs()  # after the command service: no set() can race the switch-off
        p.pipeline.flush()
        p.outbox.flush()
        if self.cfg.agent.stop_timeout > 0 and p.transport.connected and p.outbox.pending:
            drained = p.forwarder.drain(self.cfg.agent.stop_timeout)
            log.info("stop: backlog %s (%d pending)", "sent" if drained else "kept for next start", p.outbox.pending)
        p.forwarder.stop()
        p.transport.stop(timeout=3.0, offline=offline_will(self.cfg))
        self._stop_services(after_drain=True)
        p.outbox.close()
        self.devices.close()
        log.info("stopped")

    def _close_state(self) -> None:
        """Close what open() opened (an agent that never started)."""
        if self._parts is not None:
            self._stop_services()
            self._parts.outbox.close()

    def _stop_services(self, after_drain: bool | None = None) -> None:
        """Stop the services in reverse order: all of them, or those whose ``stops_after_drain`` is
        ``after_drain``."""
        for svc in reversed(self.services):
            if after_drain is not None and svc.stops_after_drain != after_drain:
                continue
            try:
                svc.stop()
            except Exception:
                log.exception("stopping %s", svc.name)

    # ------------------------------------------------------------------ control
    def set_interval(self, sensor: str, interval: float) -> None:
        """KeyError if ``sensor`` is not a running polled sensor."""
        self.devices.set_interval(sensor, interval)

    def reload(self) -> bool:
        """SIGHUP: re-read the config file. A bad file is refused and the running config kept."""
        systemd.reloading()
        try:
            new = config_mod.load(self.cfg.source)
        except ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e)
            systemd.ready("reload refused: bad config")
            return False
        self.devices.reload(new)
        logging.getLogger().setLevel(new.logging.level.upper())
        changed = [k for k in ("device", "mqtt", "storage", "commands", "messaging", "models", "outputs")
                   if getattr(new, k) != getattr(self.cfg, k)]
        if changed or [s.name for s in new.sensors] != [s.name for s in self.cfg.sensors]:
            log.warning("reload: changes to %s take effect at the next restart",
                        ", ".join(changed) or "the sensor list")
        self.cfg = new
        systemd.ready("reloaded")
        return True
