"""The Host: everything a service (commands, messaging, inference) may touch of the agent.

Services never import ``app`` and never reach into another object's fields; the composition root
(:mod:`edge_agent.app`) hands each service an object that satisfies :class:`Host`. Tests hand them a
small fake (``tests/fakes.py``).

Inbound messages: a service registers a handler with :meth:`Host.subscribe`; the router calls it on the
network thread and acts on the :class:`Disposition` it returns. A handler that raises is treated as a
refusal: the message is acknowledged (a poison message must never hold the receive window), the error is
logged with a rate limit and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.message import Outgoing
from edge_agent.transport.topics import stream_topic
from edge_agent.transport.types import (
    ACCEPTED,
    LINK_LOST,
    Accepted,
    Ack,
    ConnectionStatus,
    InMessage,
    LinkLost,
    Refused,
)

if TYPE_CHECKING:
    from edge_agent.config import Config
    from edge_agent.sensors.base import Reading

__all__ = ["ACCEPTED", "LINK_LOST", "Accepted", "Ack", "AgentControl", "ConnectionStatus", "Disposition", "Handler",
           "Host", "InMessage", "LinkLost", "Outgoing", "PipelineView", "Refused", "Tap"]


class Disposition(Enum):
    """What the router does with an inbound QoS 1/2 message after its handler returned."""

    ACK = "ack"  # handled, or refused for good: acknowledge now
    DEFER = "defer"  # a transient local condition: the handler calls ``msg.ack()`` later, or never (redelivery)


Handler = Callable[[InMessage], Disposition]
#: Sees every reading the pipeline stores, with the seq of the message that carries it (sensor thread:
#: must be quick and must not block).
Tap = Callable[["Reading", int], None]


class AgentControl(Protocol):
    """What the command handlers may ask of the agent as a whole (status, reload, sensors, outputs)."""

    def status(self) -> dict[str, Any]: ...

    def reload(self) -> bool: ...

    def set_interval(self, sensor: str, interval: float) -> None: ...

    def output(self, name: str) -> Any | None: ...

    def output_names(self) -> list[str]: ...

    def shutdown(self, drain_timeout: float) -> None: ...


class Host(Protocol):
    """The agent as a service sees it."""

    @property
    def config(self) -> Config: ...

    @property
    def state_dir(self) -> Path: ...

    @property
    def control(self) -> AgentControl: ...

    # outbox
    def put(self, msg: Outgoing) -> int: ...

    def flush(self, timeout: float = 10.0) -> bool: ...

    def last_seq(self) -> int: ...

    def skip_seqs(self, upto: int, reason: str) -> list[int]:
        """Seqs up to ``upto`` were handed out before a crash and lost uncommitted: never hand them out
        again (they are reported in ``events/dropped`` with ``reason``); returns the ones skipped."""

    def unclean(self) -> tuple[int, int] | None:
        """The seqs (first, last) the last run may have handed out and lost (it did not stop cleanly),
        reported in events/dropped; None after a clean stop."""
        ...

    def on_committed(self, fn: Callable[[list[int]], None]) -> None: ...

    def on_dropped(self, fn: Callable[[list[int], str], None]) -> None: ...

    # transport
    def subscribe(self, topic_filter: str, match: Callable[[str], bool], handler: Handler, qos: int = 1) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None:
        """Undo :meth:`subscribe`: no more messages for ``topic_filter`` (its handler is dropped too)."""
        ...

    def on_ack(self, fn: Callable[[int, Ack], None]) -> None: ...

    def on_connection(self, fn: Callable[[ConnectionStatus], None]) -> None: ...

    def publish_state(self, topic: str, payload: bytes) -> None:
        """Set ``payload`` retained on ``topic`` (b"" clears it), sent as soon as the link is up: state such
        as a group membership, outside the seq stream (no outbox row, no seq)."""
        ...

    def connection(self) -> ConnectionStatus: ...

    # readings (e.g. inference windows)
    def add_tap(self, fn: Tap) -> None: ...

    def remove_tap(self, fn: Tap) -> None: ...

    # other services (e.g. commands asking inference for its status)
    def service(self, name: str) -> Any | None: ...


class PipelineView:
    """A Host seen as the pipeline (``taps``, ``publish``, ``event``), for a service written against it.

    Readings reach ``taps`` through one host tap; messages go to ``<prefix>/<device>/<stream>`` through
    :meth:`Host.put`, exactly as the pipeline's own.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self.taps: list[Tap] = []
        host.add_tap(self._fan_out)

    def _fan_out(self, reading: Reading, seq: int) -> None:
        for tap in self.taps:
            tap(reading, seq)

    def publish(self, stream: str, data: Any, *, cls: str = "telemetry", ts: float | None = None,
                ttl: float | None = None, extra: dict[str, Any] | None = None) -> int:
        cfg = self.host.config
        return self.host.put(Outgoing(topic=stream_topic(cfg.mqtt.topic_prefix, cfg.device.id, stream),
                                      stream=stream, data=data, cls=cls, ts=ts, ttl=ttl, extra=extra))

    def event(self, name: str, data: Any, cls: str = "event") -> int:
        return self.publish(f"events/{name}", data, cls=cls)
