"""A small in-memory :class:`edge_agent.host.Host` for direct service tests.

Services (commands, messaging, inference) see the agent only through the Host protocol, so they can be
driven here without a broker: ``deliver()`` plays an inbound message through the same router policy as
the real agent, ``ack()`` plays the broker's PUBACK, ``commit()`` and ``drop()`` play the outbox.
The end-to-end tests against a real Mosquitto stay; these pin each service's own logic.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.host import ACCEPTED, Ack, ConnectionStatus, Disposition, Handler, InMessage, Outgoing, Tap
from edge_agent.router import Router
from edge_agent.sensors.base import Reading


@dataclass
class FakeControl:
    """AgentControl with assertion helpers: what was asked of the agent."""

    status_extra: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    reloads: int = 0
    reload_result: bool = True
    shutdowns: list[float] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        return {"state": "online", **self.status_extra}

    def reload(self) -> bool:
        self.reloads += 1
        return self.reload_result

    def set_interval(self, sensor: str, interval: float) -> None:
        self.intervals[sensor] = interval

    def output(self, name: str) -> Any | None:
        return self.outputs.get(name)

    def output_names(self) -> list[str]:
        return sorted(self.outputs)

    def shutdown(self, drain_timeout: float) -> None:
        self.shutdowns.append(drain_timeout)


class FakeHost:
    """Records what a service puts and subscribes; plays inbound messages, acks, commits and drops."""

    def __init__(self, config: Any, state_dir: Path, *, control: FakeControl | None = None) -> None:
        self._config = config
        self._state_dir = Path(state_dir)
        self._control = control or FakeControl()
        self._lock = threading.Lock()
        self._seq = 0
        self.sent: list[tuple[int, Outgoing]] = []
        self.subscriptions: list[tuple[str, Callable[[str], bool], Handler, int]] = []
        self.acked_inbound: list[str] = []  # topics of inbound messages the router acknowledged
        self.flushes = 0
        self.skipped: list[tuple[list[int], str]] = []  # skip_seqs() calls
        self._committed: list[Callable[[list[int]], None]] = []
        self._dropped: list[Callable[[list[int], str], None]] = []
        self._acks: list[Callable[[int, Ack], None]] = []
        self._conn: list[Callable[[ConnectionStatus], None]] = []
        self.connection_status = ConnectionStatus("online")
        self.services: dict[str, Any] = {}
        self.state: dict[str, bytes] = {}  # publish_state(): retained state by topic
        self.router = Router()  # the agent's own ack policy
        self.taps: list[Tap] = []

    # -- Host
    @property
    def config(self) -> Any:
        return self._config

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def control(self) -> FakeControl:
        return self._control

    def put(self, msg: Outgoing) -> int:
        with self._lock:
            self._seq += 1
            self.sent.append((self._seq, msg))
            return self._seq

    def flush(self, timeout: float = 10.0) -> bool:
        self.flushes += 1
        return True

    def last_seq(self) -> int:
        return self._seq

    def skip_seqs(self, upto: int, reason: str) -> list[int]:
        with self._lock:
            skipped = list(range(self._seq + 1, upto + 1))
            self._seq = max(self._seq, upto)
            self.skipped.append((skipped, reason))
            return skipped

    def unclean(self) -> tuple[int, int] | None:
        return None

    def on_committed(self, fn: Callable[[list[int]], None]) -> None:
        self._committed.append(fn)

    def on_dropped(self, fn: Callable[[list[int], str], None]) -> None:
        self._dropped.append(fn)

    def subscribe(self, topic_filter: str, match: Callable[[str], bool], handler: Handler, qos: int = 1) -> None:
        self.subscriptions.append((topic_filter, match, handler, qos))
        self.router.add(topic_filter, match, handler)

    def unsubscribe(self, topic_filter: str) -> None:
        self.subscriptions = [s for s in self.subscriptions if s[0] != topic_filter]
        self.router.remove(topic_filter)

    def on_ack(self, fn: Callable[[int, Ack], None]) -> None:
        self._acks.append(fn)

    def on_connection(self, fn: Callable[[ConnectionStatus], None]) -> None:
        self._conn.append(fn)

    def publish_state(self, topic: str, payload: bytes) -> None:
        self.state[topic] = payload

    def connection(self) -> ConnectionStatus:
        return self.connection_status

    def service(self, name: str) -> Any | None:
        return self.services.get(name)

    def add_tap(self, fn: Tap) -> None:
        self.taps.append(fn)

    def remove_tap(self, fn: Tap) -> None:
        self.taps.remove(fn)

    # -- playing the rest of the agent
    def deliver(self, topic: str, payload: bytes, **kw: Any) -> Disposition | None:
        """Route one inbound QoS 1 message through the agent's router; ``None`` if nothing matched."""
        msg = InMessage(topic=topic, payload=payload, qos=kw.pop("qos", 1), **kw)
        msg.acker = lambda: self.acked_inbound.append(topic)
        return self.router.route(msg)

    def ack(self, seq: int, ack: Ack = ACCEPTED) -> None:
        for fn in self._acks:
            fn(seq, ack)

    def commit(self, seqs: list[int] | None = None) -> None:
        seqs = [s for s, _ in self.sent] if seqs is None else seqs
        for fn in self._committed:
            fn(seqs)

    def drop(self, seqs: list[int], reason: str) -> None:
        for fn in self._dropped:
            fn(seqs, reason)

    def feed(self, reading: Reading, seq: int) -> None:
        """Play the pipeline storing ``reading`` as message ``seq``: every tap sees it."""
        for fn in list(self.taps):
            fn(reading, seq)

    def set_connection(self, st: ConnectionStatus) -> None:
        self.connection_status = st
        for fn in self._conn:
            fn(st)

    # -- assertion helpers
    def sent_to(self, topic_part: str) -> list[Outgoing]:
        return [m for _, m in self.sent if topic_part in m.topic]
