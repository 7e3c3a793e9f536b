"""TEMPORARY (issue 13): today's :class:`edge_agent.app.App` seen as an :class:`edge_agent.host.Host`.

Only so the messaging service, which now takes a Host, runs in the real agent until the real AppHost
(app.py / apphost.py) lands; drop this module and its three uses in app.py then. It translates, and
decides nothing: acks become typed (the forwarder's ``rc == -1`` is LinkLost), and an inbound handler's
Disposition decides the PUBACK (App itself acks whatever its handler returns from).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.host import (
    ACCEPTED,
    LINK_LOST,
    Accepted,
    Ack,
    ConnectionStatus,
    Disposition,
    Handler,
    InMessage,
    Outgoing,
    Refused,
)

if TYPE_CHECKING:
    from edge_agent.app import App
    from edge_agent.config import Config
    from edge_agent.host import AgentControl

log = logging.getLogger("edge_agent")


def typed_ack(ok: bool, rc: int) -> Ack:
    if ok:
        return ACCEPTED if rc == 0 else Accepted(rc)
    return LINK_LOST if rc == -1 else Refused(rc)


class LegacyAppHost:
    def __init__(self, app: App) -> None:
        self._app = app

    @property
    def config(self) -> Config:
        return self._app.cfg

    @property
    def state_dir(self) -> Path:
        return self._app.state_dir

    @property
    def control(self) -> AgentControl:
        raise NotImplementedError("the legacy App host offers no AgentControl")

    def put(self, msg: Outgoing) -> int:
        return self._app.outbox.put(msg)

    def flush(self, timeout: float = 10.0) -> bool:
        return self._app.outbox.flush(timeout)

    def last_seq(self) -> int:
        return self._app.outbox.last_seq

    def on_committed(self, fn: Callable[[list[int]], None]) -> None:
        self._app.outbox.on_committed(fn)

    def on_dropped(self, fn: Callable[[list[int], str], None]) -> None:
        self._app.outbox.on_dropped(fn)

    def subscribe(self, topic_filter: str, match: Callable[[str], bool], handler: Handler, qos: int = 1) -> None:
        def route(msg: InMessage) -> None:
            inner = dataclasses.replace(msg)  # carries the acker; App's own ack after we return is a no-op
            msg.acker = None
            try:
                d = handler(inner)
            except Exception:
                log.exception("handler for %s failed; acknowledged (a poison message must not hold the window)",
                              msg.topic)
                d = Disposition.ACK
            if d is Disposition.ACK:
                inner.ack()

        self._app.add_message_handler(match, route)
        self._app.transport.subscribe(topic_filter, qos=qos)

    def on_ack(self, fn: Callable[[int, Ack], None]) -> None:
        self._app.forwarder.ack_listeners.append(lambda seq, ok, rc: fn(seq, typed_ack(ok, rc)))

    def on_connection(self, fn: Callable[[ConnectionStatus], None]) -> None:
        self._app.status_listeners.append(fn)

    def connection(self) -> ConnectionStatus:
        return self._app.transport.status

    def service(self, name: str) -> Any | None:
        return self._app.service(name)
