"""Interop with a real third-party MQTT 5 client: mosquitto_rr (mosquitto-clients)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_rr") is None, reason="mosquitto_rr not installed "
                                "(apt-get install mosquitto-clients)")


def test_mosquitto_rr_ping_gets_json_ok(make_app, broker) -> None:
    make_app()
    out = subprocess.run(["mosquitto_rr", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(broker.port),
                          "-t", "edge/dev-1/cmd/ping", "-e", "ops/rr/reply", "-m", "{}", "-W", "10"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["status"] == "ok" and body["device"] == "dev-1" and body["result"]["pong"] is True


def test_mosquitto_rr_state_changing_unsigned_is_refused(make_app, broker) -> None:
    app = make_app()
    out = subprocess.run(["mosquitto_rr", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(broker.port),
                          "-t", "edge/dev-1/cmd/sensor.set_interval", "-e", "ops/rr/reply2",
                          "-m", '{"args": {"sensor": "s1", "interval": 5}}', "-W", "10"],
                         capture_output=True, text=True, timeout=20)
    body = json.loads(out.stdout)
    assert body["status"] == "error" and body["error"]["code"] == "unsigned_not_allowed"
    assert app.runners["s1"].interval == 1.0
