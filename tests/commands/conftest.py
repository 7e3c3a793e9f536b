"""Fixtures for the command channel tests: real Mosquitto, real App (in-process or as a process)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import codec
from edge_agent import config as config_mod
from edge_agent.app import App
from edge_agent.commands.signing import Signer
from edge_agent.config import MqttConfig
from edge_agent.devbroker import DevBroker
from edge_agent.errors import TransportError
from edge_agent.transport.mqtt import InMessage, MqttTransport


def agent_config(path: Path, port: int, state: Path, *, device: str = "dev-1", groups: tuple[str, ...] = ("lab",),
                 keys: str = "", commands: str = "", sensors: bool = True, extra: str = "") -> Path:
    sensor = '[[sensors]]\nname = "s1"\ntype = "simulated"\ninterval = 1.0\n' if sensors else ""
    text = f"""[device]
id = "{device}"
groups = {json.dumps(list(groups))}

[mqtt]
host = "127.0.0.1"
port = {port}
keepalive = 10
reconnect_min = 0.1
reconnect_max = 1.0

[storage]
dir = "{state}"
commit_interval = 0.01

[agent]
stop_timeout = 2
status_interval = 3600

[commands]
{commands}

{keys}

{sensor}
{extra}
"""
    path.write_text(text)
    return path


def key_snippet(signer: Signer, name: str = "alice", allow: tuple[str, ...] = ("*",)) -> str:
    return (f'[[commands.keys]]\nname = "{name}"\npublic_key = "{signer.public_b64()}"\n'
            f"allow = {json.dumps(list(allow))}\n")


class Requester:
    """A real MQTT 5 client that publishes requests with a Response Topic and collects replies."""

    def __init__(self, port: int, prefix: str = "edge") -> None:
        self.reply_topic = f"{prefix}/_ctl/test-{uuid.uuid4().hex[:8]}/reply"
        self.replies: list[InMessage] = []
        self.cond = threading.Condition()
        self.t = MqttTransport(MqttConfig(host="127.0.0.1", port=port, keepalive=10, session_expiry=0,
                                          reconnect_min=0.1, reconnect_max=0.5),
                               client_id=f"req-{uuid.uuid4().hex[:8]}", on_message=self._on, persistent_session=False)
        self.t.subscribe(self.reply_topic, qos=1)
        self.t.subscribe(self.reply_topic + "/+", qos=1)  # agents reply on <reply topic>/<device> (issue 14)

    def _on(self, m: InMessage) -> None:
        with self.cond:
            self.replies.append(m)
            self.cond.notify_all()

    def start(self) -> Requester:
        self.t.start()
        assert self.t.wait_online(10)
        return self

    def publish(self, topic: str, payload: bytes, corr: bytes | None = None, json_ct: bool = False,
                response: bool = True) -> bytes:
        corr = corr if corr is not None else uuid.uuid4().bytes
        props: dict[str, Any] = {"correlation_data": corr}
        if response:
            props["response_topic"] = self.reply_topic
        if json_ct:
            props["content_type"] = "application/json"
        deadline = time.monotonic() + 10
        while True:
            try:
                self.t.publish(topic, payload, qos=1, props=props)
                return corr
            except TransportError:  # e.g. the in-flight window is full: wait for PUBACKs
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def wait_reply(self, corr: bytes, timeout: float = 15.0, final: bool = True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.replies:
                    if m.correlation_data == corr:
                        rep = json.loads(m.payload) if m.payload[:1] == b"{" else codec.decode(m.payload)
                        if not final or rep.get("status") != "accepted":
                            return rep
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no reply for {corr!r} within {timeout} s")
                self.cond.wait(left)

    def replies_for(self, corr: bytes) -> list[dict[str, Any]]:
        with self.cond:
            return [codec.decode(m.payload) if m.payload[:1] != b"{" else json.loads(m.payload)
                    for m in self.replies if m.correlation_data == corr]

    def request(self, topic: str, req: dict[str, Any], timeout: float = 15.0, **kw: Any) -> dict[str, Any]:
        corr = self.publish(topic, codec.encode(req), **kw)
        return self.wait_reply(corr, timeout)

    def stop(self) -> None:
        self.t.stop(timeout=2.0)


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def requester(broker: DevBroker) -> Iterator[Requester]:
    r = Requester(broker.port).start()
    yield r
    r.stop()


@pytest.fixture
def make_app(broker: DevBroker, tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Start an in-process App against the test broker (``start=False``: only opened); stopped at the end."""
    apps: list[App] = []

    def make(device: str = "dev-1", start: bool = True, **kw: Any) -> App:
        d = tmp_path / device
        d.mkdir(exist_ok=True)
        path = agent_config(d / "config.toml", broker.port, d / "state", device=device, **kw)
        app = App(config_mod.load(path))
        apps.append(app)
        if start:
            app.start()
            assert app.transport.wait_online(10)
            time.sleep(0.2)  # SUBACK
        else:
            app.open()  # the stores and services exist; nothing runs or connects yet
        return app

    yield make
    for a in apps:
        a.stop()
