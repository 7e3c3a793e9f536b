"""A real Mosquitto with the dynamic security plugin, and a raw paho client that reports the broker's
exact answers (CONNACK, SUBACK and PUBACK reason codes) for the ACL tests."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.cli.main import main
from edge_agent.devbroker import BrokerUnavailable, DevBroker
from tests.helpers import start_or_skip

PLUGINS = ("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
           "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
           "/usr/lib/arm-linux-gnueabihf/mosquitto_dynamic_security.so",
           "/usr/lib/mosquitto_dynamic_security.so", "/usr/local/lib/mosquitto_dynamic_security.so")
NOT_AUTHORIZED = 0x87


def find_plugin() -> str | None:
    """The plugin's path: the usual places, else what ``dpkg -L mosquitto`` lists."""
    found = next((p for p in PLUGINS if os.path.exists(p)), None)
    if found is None and shutil.which("dpkg"):
        r = subprocess.run(["dpkg", "-L", "mosquitto"], capture_output=True, text=True, timeout=30)
        found = next((line for line in r.stdout.splitlines() if line.endswith("/mosquitto_dynamic_security.so")),
                     None)
    return found


@dataclass
class DynsecBroker:
    broker: DevBroker
    admin_password_file: Path
    config_file: Path

    @property
    def port(self) -> int:
        return self.broker.port

    def admin_args(self) -> list[str]:
        return ["--broker", f"127.0.0.1:{self.port}", "--admin-user", "admin",
                "--admin-password-file", str(self.admin_password_file)]

    def users(self, *args: str) -> int:
        """``edge-agent users <sub> <admin flags> args...`` in-process; its exit status."""
        return main(["users", args[0], *self.admin_args(), *args[1:]])


def start_dynsec_broker(tmp_path: Path) -> DynsecBroker:
    plugin = find_plugin()
    if plugin is None or shutil.which("mosquitto_ctrl") is None:
        raise BrokerUnavailable("the dynsec plugin or mosquitto_ctrl is missing: "
                                "sudo apt-get install -y mosquitto mosquitto-clients")
    d = tmp_path / "dynsec"
    d.mkdir(parents=True)
    cfg = d / "dynamic-security.json"
    password = secrets.token_urlsafe(16)
    # `dynsec init` writes the file with one client "admin" holding the role "admin" (the plugin's
    # control topics, and read access to everything); no other client exists until one is created
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(cfg), "admin", password], check=True,
                   capture_output=True, timeout=30)
    pw = d / "admin.password"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.chmod(d, 0o777)  # mosquitto may drop privileges and rewrites the file on every change
    os.chmod(cfg, 0o666)
    conf = f"allow_anonymous false\nplugin {plugin}\nplugin_opt_config_file {cfg}\n"
    b = DevBroker(workdir=tmp_path / "broker", extra_conf=conf).start()
    return DynsecBroker(b, pw, cfg)


@pytest.fixture
def dynsec_broker(tmp_path: Path) -> Iterator[DynsecBroker]:
    b = start_or_skip(lambda: start_dynsec_broker(tmp_path))
    try:
        yield b
    finally:
        b.broker.close()


class RawClient:
    """paho, MQTT 5, one connection; every call waits for the broker's answer and returns its code."""

    def __init__(self, port: int, username: str, password: str, client_id: str) -> None:
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.c.username_pw_set(username, password)
        self.cond = threading.Condition()
        self.connack: int | None = None
        self.subacks: dict[int, list[int]] = {}
        self.pubacks: dict[int, int] = {}
        self.got: list[str] = []
        self.closed = False
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        self.port = port

    def _note(self, fn: object) -> None:
        with self.cond:
            fn()  # type: ignore[operator]
            self.cond.notify_all()

    def _on_connect(self, c: paho.Client, u: object, flags: object, rc: ReasonCode, p: Properties | None) -> None:
        self._note(lambda: setattr(self, "connack", rc.value))

    def _on_subscribe(self, c: paho.Client, u: object, mid: int, rcs: list[ReasonCode], p: object) -> None:
        self._note(lambda: self.subacks.__setitem__(mid, [r.value for r in rcs]))

    def _on_publish(self, c: paho.Client, u: object, mid: int, rc: ReasonCode, p: object) -> None:
        self._note(lambda: self.pubacks.__setitem__(mid, rc.value))

    def _on_message(self, c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        self._note(lambda: self.got.append(m.topic))

    def _on_disconnect(self, c: paho.Client, u: object, flags: object, rc: ReasonCode, p: object) -> None:
        self._note(lambda: setattr(self, "closed", True))

    def _wait(self, pred: object, timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, timeout), "no answer from the broker"  # type: ignore[arg-type]

    def connect(self) -> int:
        """The CONNACK reason code (0 = accepted, 0x87 / 0x86 = refused)."""
        self.c.connect("127.0.0.1", self.port, keepalive=10)
        self.c.loop_start()
        self._wait(lambda: self.connack is not None or self.closed)
        return NOT_AUTHORIZED if self.connack is None else self.connack

    def subscribe(self, topic: str) -> int:
        rc, mid = self.c.subscribe(topic, qos=1)
        assert rc == paho.MQTT_ERR_SUCCESS, rc
        self._wait(lambda: mid in self.subacks)
        return self.subacks[mid][0]

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        """The PUBACK reason code of a QoS 1 publish (0 = accepted, 0x87 = not authorized)."""
        info = self.c.publish(topic, payload, qos=1)
        self._wait(lambda: info.mid in self.pubacks or self.closed)
        return self.pubacks.get(info.mid, -1)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def granted(code: int) -> bool:
    return code < 0x80
