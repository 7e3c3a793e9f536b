"""Shared bits of the messaging tests: real agents against the test's real mosquitto."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from edge_agent import Agent
from edge_agent.devbroker import DevBroker
from edge_agent.messaging.history import Message

FAST = {"reconnect_min": 0.1, "reconnect_max": 0.5, "keepalive": 10}


def make_agent(broker: DevBroker, tmp_path: Path, dev: str, *, groups: tuple[str, ...] = (),
               mqtt: dict[str, Any] | None = None, messaging: dict[str, Any] | None = None,
               agent: dict[str, Any] | None = None) -> Agent:
    settings: dict[str, dict[str, Any]] = {"mqtt": {**FAST, **(mqtt or {})}, "agent": {"stop_timeout": 3.0,
                                                                                       **(agent or {})}}
    if messaging:
        settings["messaging"] = messaging
    return Agent(device_id=dev, host="127.0.0.1", port=broker.port, state_dir=tmp_path / dev, groups=groups,
                 settings=settings)


class Recorder:
    """Collects what an app sees through the callbacks (thread-safe)."""

    def __init__(self, agent: Agent, *, read: bool = False) -> None:
        self.lock = threading.Lock()
        self.messages: list[Message] = []
        self.statuses: list[tuple[str, str]] = []
        self.connection: list[str] = []
        self.agent = agent
        self.read = read
        agent.add_listener(self)

    def on_message(self, m: Message) -> None:
        with self.lock:
            self.messages.append(m)
        if self.read:
            self.agent.mark_read([m])

    def on_message_status(self, m: Message) -> None:
        with self.lock:
            self.statuses.append((m.id, m.status))

    def on_connection_status(self, st: Any) -> None:
        with self.lock:
            self.connection.append(st.state)

    def data(self) -> list[Any]:
        with self.lock:
            return [m.data for m in self.messages]

    def status_of(self, mid: str) -> list[str]:
        with self.lock:
            return [s for i, s in self.statuses if i == mid]
