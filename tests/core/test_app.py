"""The composition root: build without side effects, open, start, stop; the router's policy end to end."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edge_agent import config
from edge_agent.app import App
from edge_agent.config import MqttConfig
from edge_agent.devbroker import DevBroker, free_port
from edge_agent.errors import TransportError
from edge_agent.host import Disposition, InMessage
from edge_agent.transport.mqtt import MqttTransport
from tests.helpers import unique, wait_for, write_config


def test_building_the_app_touches_no_file_and_starts_no_thread(tmp_path: Path) -> None:
    threads = set(threading.enumerate())
    app = App(config.load(write_config(tmp_path / "c.toml", free_port(), tmp_path / "state")))
    assert not (tmp_path / "state").exists()
    assert set(threading.enumerate()) == threads
    with pytest.raises(RuntimeError, match=r"not open yet: call App.open\(\) or App.start\(\) first"):
        app.outbox  # noqa: B018
    app.stop()  # nothing to stop
    assert not (tmp_path / "state").exists()


def test_opened_but_never_started_app_closes_cleanly(tmp_path: Path) -> None:
    cfg = config.load(write_config(tmp_path / "c.toml", free_port(), tmp_path / "state"))
    app = App(cfg)
    app.open()
    app.open()  # idempotent
    assert (tmp_path / "state" / "outbox.db").exists()
    assert [s.name for s in app.services] == ["messaging", "commands"]
    st = app.status_dict()
    assert st["inbound_refused"] == 0 and st["inbound_unmatched"] == 0 and "outbox" in st
    app.pipeline.publish("x", {"v": 1})
    app.stop()
    with pytest.raises(RuntimeError, match="after stop"):
        app.start()
    again = App(cfg)  # the outbox and the stores were closed: a new agent opens them
    again.open()
    assert again.outbox.pending == 1
    again.stop()


def test_open_that_fails_closes_what_it_opened(tmp_path: Path) -> None:
    (tmp_path / "state" / "commands.db").mkdir(parents=True)  # the command store cannot be opened
    threads = set(threading.enumerate())
    app = App(config.load(write_config(tmp_path / "c.toml", free_port(), tmp_path / "state")))
    with pytest.raises(Exception, match=r"commands\.db"):
        app.open()
    wait_for(lambda: set(threading.enumerate()) <= threads, 5, msg="the outbox writer stopped")
    assert app.services == []
    app.stop()


def test_poison_messages_do_not_hold_the_receive_window(tmp_path: Path, broker: DevBroker) -> None:
    """More poison messages than the agent's Receive Maximum (1000): each is acked although its handler
    raised, so a good message behind them still arrives."""
    prefix = unique("pz")
    app = App(config.load(write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", prefix=prefix)),
              with_sensors=False)
    good: list[bytes] = []

    def poison(msg: InMessage) -> Disposition:
        raise ValueError("poison")

    def fine(msg: InMessage) -> Disposition:
        good.append(msg.payload)
        return Disposition.ACK

    app.open()
    app.host.subscribe(f"{prefix}/dev-1/poison", lambda t: t.endswith("/poison"), poison)
    app.host.subscribe(f"{prefix}/dev-1/good", lambda t: t.endswith("/good"), fine)
    app.start()
    pub = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port, session_expiry=0, max_inflight=100),
                        client_id=unique("pub-"), persistent_session=False)
    pub.start()
    try:
        assert app.wait_online(10) and pub.wait_online(10)
        time.sleep(0.3)  # SUBACK
        for i in range(1200):
            _publish(pub, f"{prefix}/dev-1/poison", b"%d" % i)
        _publish(pub, f"{prefix}/dev-1/good", b"after the poison")
        wait_for(lambda: good == [b"after the poison"], 20, msg="the good message behind 1200 poison ones")
        assert app.router.refused == 1200
        assert app.status_dict()["inbound_refused"] == 1200
    finally:
        pub.stop(timeout=2.0)
        app.stop()


def _publish(t: MqttTransport, topic: str, payload: bytes) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            t.publish(topic, payload, qos=1)
            return
        except TransportError:  # our own window is full: wait for PUBACKs
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
