"""The running agent as its services see it: :class:`AppHost` (a :class:`~edge_agent.host.Host`) and
:class:`AppControl` (an :class:`~edge_agent.host.AgentControl`).

:class:`AppHost` only delegates, each call to one public method of the outbox, the transport, the
forwarder, the pipeline or the router; it holds no state of its own. The composition root
(:mod:`edge_agent.app`) builds one and hands it to every service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import Config
from edge_agent.forwarder import Forwarder
from edge_agent.host import (
    Ack,
    AgentControl,
    ConnectionStatus,
    Handler,
    Outgoing,
    Tap,
)
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline
from edge_agent.router import Router
from edge_agent.status import StatusReporter
from edge_agent.transport.mqtt import MqttTransport

if TYPE_CHECKING:
    from edge_agent.app import App

ConnectionListener = Callable[[ConnectionStatus], None]


class AppHost:
    def __init__(self, *, config: Callable[[], Config], state_dir: Path, control: AgentControl, outbox: Outbox,
                 pipeline: Pipeline, transport: MqttTransport, forwarder: Forwarder, router: Router,
                 on_connection: Callable[[ConnectionListener], None],
                 services: Callable[[str], Any | None], status: StatusReporter) -> None:
        self._config = config
        self._state_dir = state_dir
        self._control = control
        self._outbox = outbox
        self._pipeline = pipeline
        self._transport = transport
        self._forwarder = forwarder
        self._router = router
        self._on_connection = on_connection
        self._status = status
        self._services = services

    @property
    def config(self) -> Config:
        return self._config()

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def control(self) -> AgentControl:
        return self._control

    # outbox
    def put(self, msg: Outgoing) -> int:
        return self._outbox.put(msg)

    def flush(self, timeout: float = 10.0) -> bool:
        return self._outbox.flush(timeout)

    def last_seq(self) -> int:
        return self._outbox.last_seq

    def skip_seqs(self, upto: int, reason: str) -> list[int]:
        return self._outbox.skip_to(upto, reason)

    def unclean(self) -> tuple[int, int] | None:
        u = self._outbox.unclean
        return (u.first, u.last) if u is not None and u.last >= u.first else None

    def on_committed(self, fn: Callable[[list[int]], None]) -> None:
        self._outbox.on_committed(fn)

    def on_dropped(self, fn: Callable[[list[int], str], None]) -> None:
        self._outbox.on_dropped(fn)

    # transport
    def subscribe(self, topic_filter: str, match: Callable[[str], bool], handler: Handler, qos: int = 1) -> None:
        self._router.add(topic_filter, match, handler)  # routed before the SUBACK can bring anything
        self._transport.subscribe(topic_filter, qos=qos)

    def unsubscribe(self, topic_filter: str) -> None:
        self._transport.unsubscribe(topic_filter)
        self._router.remove(topic_filter)

    def on_ack(self, fn: Callable[[int, Ack], None]) -> None:
        self._forwarder.add_ack_listener(fn)

    def on_connection(self, fn: ConnectionListener) -> None:
        self._on_connection(fn)

    def publish_state(self, topic: str, payload: bytes) -> None:
        self._status.set_retained(topic, payload)

    def connection(self) -> ConnectionStatus:
        return self._transport.status

    # readings
    def add_tap(self, fn: Tap) -> None:
        self._pipeline.add_tap(fn)

    def remove_tap(self, fn: Tap) -> None:
        self._pipeline.remove_tap(fn)

    def service(self, name: str) -> Any | None:
        return self._services(name)


class AppControl:
    """What command handlers may ask of the agent as a whole."""

    def __init__(self, app: App) -> None:
        self._app = app

    def status(self) -> dict[str, Any]:
        """The retained status (with the outbox counters) plus uptime, connection, backlog and sensors."""
        app = self._app
        st = app.status_dict("online")
        conn = app.connection_status()
        st["uptime_s"] = round(time.time() - st["started"], 1)
        st["connection"] = {"state": conn.state, "reason": conn.reason, "reconnects": st["reconnects"]}
        try:
            st["backlog"] = app.outbox.stats().as_dict()
        except Exception as e:
            st["backlog"] = {"error": str(e)}
        st["sensors"] = app.devices.describe()
        return st

    def reload(self) -> bool:
        return self._app.reload()

    def set_interval(self, sensor: str, interval: float) -> None:
        self._app.set_interval(sensor, interval)

    def output(self, name: str) -> Any | None:
        return self._app.outputs.get(name)

    def output_names(self) -> list[str]:
        return sorted(self._app.outputs)

    def shutdown(self, drain_timeout: float) -> None:
        """Send the backlog (up to ``drain_timeout`` seconds), then stop the agent. Blocks."""
        self._app.drain(drain_timeout)
        self._app.stop()
