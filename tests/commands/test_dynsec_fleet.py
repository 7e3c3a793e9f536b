"""A fleet provisioned with ``edge-agent users`` on a real Mosquitto running the dynamic security plugin.

Five devices and an operator get accounts through the CLI (which drives ``mosquitto_ctrl``); each
device does its job under its roles (telemetry and a command answered through ``edge-agent run``, a
direct and a group message between two ``edge_agent.Agent`` apps), and the broker refuses what is not
the device's own: subscriptions with SUBACK 0x87, publishes with PUBACK 0x87, another device's
credentials with another client id at CONNACK. The broker's answers are also compared with the pure
plan's prediction (:func:`edge_agent.dynsec.allowed`)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from edge_agent import dynsec
from edge_agent.cli.main import main
from edge_agent.config import MqttConfig
from edge_agent.transport.mqtt import InMessage, MqttTransport
from tests.commands.dynsec_broker import NOT_AUTHORIZED, DynsecBroker, RawClient, dynsec_broker, granted
from tests.helpers import AgentProcess, wait_for
from tests.messaging.common import Recorder

__all__ = ["dynsec_broker"]  # the fixture, imported for pytest

FLEET: dict[str, list[str]] = {"dev-1": ["lab"], "dev-2": ["lab"], "dev-3": ["lab", "field"],
                               "dev-4": ["field"], "dev-5": []}
FAST = {"reconnect_min": 0.1, "reconnect_max": 0.5, "keepalive": 10}


def provision(b: DynsecBroker, tmp_path: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Accounts for FLEET (minus ``skip``) and the operator ``op``; their tokens from the 0600 files."""
    tokens: dict[str, str] = {}
    for dev, groups in FLEET.items():
        if dev in skip:
            continue
        f = tmp_path / f"{dev}.token"
        assert b.users("add", dev, *(a for g in groups for a in ("--group", g)), "--token-file", str(f)) == 0
        tokens[dev] = f.read_text().strip()
    assert b.users("add", "op", "--operator", "--token-file", str(tmp_path / "op.token")) == 0
    tokens["op"] = (tmp_path / "op.token").read_text().strip()
    return tokens


def raw(b: DynsecBroker, user: str, tokens: dict[str, str], client_id: str | None = None) -> RawClient:
    c = RawClient(b.port, user, tokens[user], client_id or f"edge-agent-{user}")
    assert c.connect() == 0
    return c


def operator_ping(b: DynsecBroker, tmp_path: Path, token: str, dev: str) -> int:
    """``edge-agent ctl send --device dev ping`` with the operator's account; its exit status."""
    op_cfg = tmp_path / "op.toml"
    op_cfg.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {b.port}\nusername = "op"\npassword = "{token}"\n'
                      f'[storage]\ndir = "{tmp_path / "op-state"}"\n')
    return main(["ctl", "send", "--device", dev, "ping", "--unsigned", "--timeout", "15", "--config", str(op_cfg),
                 "--json"])


def test_fleet_each_device_does_its_job(dynsec_broker: DynsecBroker, tmp_path: Path, capsys) -> None:
    b = dynsec_broker
    tokens = provision(b, tmp_path, skip=("dev-3",))
    capsys.readouterr()
    # dev-3 the way a person would: the printed snippet is its config (plus state and a sensor)
    assert b.users("add", "dev-3", "--group", "lab", "--group", "field") == 0
    snippet = capsys.readouterr().out
    assert 'username = "dev-3"' in snippet and 'groups = ["lab", "field"]' in snippet
    cfg3 = tmp_path / "dev-3.toml"
    cfg3.write_text(snippet + f'\n[storage]\ndir = "{tmp_path / "state-3"}"\ncommit_interval = 0.01\n'
                    '[agent]\nstop_timeout = 2\n[[sensors]]\nname = "s1"\ntype = "simulated"\ninterval = 0.2\n')
    assert b.users("list", "--json") == 0
    listed = {u["user"]: u for u in json.loads(capsys.readouterr().out)}
    assert {u: (v["kind"], v["groups"]) for u, v in listed.items()} == {
        **{d: ("device", sorted(g)) for d, g in FLEET.items()}, "op": ("operator", [])}

    got: list[InMessage] = []
    lock = threading.Lock()

    def on(m: InMessage) -> None:
        with lock:
            got.append(m)

    watch = MqttTransport(MqttConfig(host="127.0.0.1", port=b.port, username="op", password=tokens["op"],
                                     session_expiry=0, **FAST), client_id="op-watch", on_message=on,
                          persistent_session=False)
    watch.subscribe("edge/#", qos=1)
    watch.start()
    agent3 = AgentProcess(cfg3).start()
    from edge_agent import Agent

    apps = [Agent(device_id=d, host="127.0.0.1", port=b.port, state_dir=tmp_path / d, groups=FLEET[d],
                  username=d, password=tokens[d], settings={"mqtt": FAST, "agent": {"stop_timeout": 3.0}})
            for d in ("dev-1", "dev-2")]
    a1, a2 = apps
    r2 = Recorder(a2, read=True)
    try:
        assert watch.wait_online(10), watch.status
        a2.start()
        assert a2.wait_online(10)
        a1.start()
        assert a1.wait_online(10)
        wait_for(lambda: any(m.topic == "edge/dev-3/telemetry/s1" for m in list(got)), 20,
                 msg=f"operator saw no telemetry from dev-3: {agent3.output()[-2000:]}")
        # a command from the operator, answered (reply on the operator's private _ctl topic)
        capsys.readouterr()
        assert operator_ping(b, tmp_path, tokens["op"], "dev-3") == 0
        out = capsys.readouterr().out
        assert '"ok"' in out and "dev-3" in out, out
        # a direct and a group message between two apps, delivered and read
        d = a1.send("dev-2", {"text": "direct"})
        g = a1.send_group("lab", {"text": "to lab"})
        assert a1.wait_status(d, "read", timeout=20).status == "read"
        assert a1.wait_status(g, "delivered", "read", timeout=20).status in ("delivered", "read")
        wait_for(lambda: {"text": "direct"} in r2.data() and {"text": "to lab"} in r2.data(), 10)
    finally:
        for a in apps:
            a.stop()
        agent3.terminate()
        watch.stop(timeout=2.0)


# (user, action, topic, allowed): dev-1 in lab; the same cases run against the plan and the broker
MATRIX = [
    ("dev-1", "subscribe", "edge/dev-1/inbox", True),
    ("dev-1", "subscribe", "edge/dev-1/receipts", True),
    ("dev-1", "subscribe", "edge/dev-1/cmd/+", True),
    ("dev-1", "subscribe", "edge/group/lab/cmd/+", True),
    ("dev-1", "subscribe", "edge/group/lab/msg", True),
    ("dev-1", "subscribe", "edge/all/cmd/+", True),
    ("dev-1", "subscribe", "edge/dev-2/inbox", False),
    ("dev-1", "subscribe", "edge/dev-2/receipts", False),
    ("dev-1", "subscribe", "edge/dev-2/cmd/+", False),
    ("dev-1", "subscribe", "edge/+/inbox", False),
    ("dev-1", "subscribe", "edge/group/field/msg", False),
    ("dev-1", "subscribe", "edge/group/+/cmd/+", False),
    ("dev-1", "subscribe", "edge/dev-2/telemetry/s1", False),
    ("dev-1", "subscribe", "edge/#", False),
    ("dev-1", "subscribe", "edge/dev-2/status", True),  # presence of peers
    ("dev-1", "subscribe", "edge/group/lab/members/+", True),
    ("dev-1", "subscribe", "edge/group/field/members/+", False),
    ("dev-1", "publish", "edge/dev-1/telemetry/s1", True),
    ("dev-1", "publish", "edge/dev-1/status", True),
    ("dev-1", "publish", "edge/dev-2/inbox", True),
    ("dev-1", "publish", "edge/dev-2/receipts", True),
    ("dev-1", "publish", "edge/group/lab/msg", True),
    ("dev-1", "publish", "edge/group/lab/members/dev-1", True),
    ("dev-1", "publish", "edge/group/lab/members/dev-2", False),  # never another device's membership
    ("dev-1", "publish", "edge/_ctl/op-1/reply/dev-1", True),
    ("dev-1", "publish", "edge/_ctl/op-1/reply/dev-2", False),  # no answering for another device
    ("dev-1", "publish", "edge/_ctl/op-1/reply", False),
    ("dev-1", "publish", "edge/dev-2/telemetry/s1", False),
    ("dev-1", "publish", "edge/dev-2/status", False),
    ("dev-1", "publish", "edge/dev-2/cmd/ping", False),
    ("dev-1", "publish", "edge/dev-1/cmd/ping", False),
    ("dev-1", "publish", "edge/group/field/msg", False),
    ("dev-1", "publish", "edge/group/lab/cmd/ping", False),
    ("dev-1", "publish", "edge/all/cmd/ping", False),
    ("op", "publish", "edge/dev-1/cmd/ping", True),
    ("op", "publish", "edge/dev-1/telemetry/s1", False),
    ("op", "subscribe", "edge/#", True),
]


def test_broker_refuses_what_is_not_the_devices_own(dynsec_broker: DynsecBroker, tmp_path: Path) -> None:
    b = dynsec_broker
    tokens = provision(b, tmp_path)
    plans = {d: dynsec.plan_device("edge", d, g).roles() for d, g in FLEET.items()}
    plans["op"] = (dynsec.operator_role("edge"),)
    op = RawClient(b.port, "op", tokens["op"], "op-watch")
    assert op.connect() == 0 and granted(op.subscribe("edge/#"))
    c, last, fresh = raw(b, "dev-1", tokens), "dev-1", True
    try:
        for i, (user, action, topic, expected) in enumerate(MATRIX):
            assert dynsec.allowed(plans[user], action, topic) is expected, ("plan", user, action, topic)
            # mosquitto 2.0.11 closes the link after a refused QoS 1 publish: a fresh one after each
            if not fresh or user != last:
                c.close()
                c, last = raw(b, user, tokens, None if user != "op" else f"op-{i}"), user
            code = c.subscribe(topic) if action == "subscribe" else c.publish(topic, b"probe")
            fresh = not (action == "publish" and not granted(code))
            assert (granted(code) if expected else code == NOT_AUTHORIZED), ("broker", user, action, topic, code)
        # nothing forged reached the operator: only dev-1's own topics and what it may send
        wait_for(lambda: "edge/dev-1/telemetry/s1" in op.got, 5)
        forged = {t for t in op.got if t.startswith(("edge/dev-2/telemetry", "edge/dev-2/status", "edge/all/"))}
        assert forged == set()
    finally:
        c.close()
        op.close()


def test_credentials_are_bound_to_their_device(dynsec_broker: DynsecBroker, tmp_path: Path) -> None:
    b = dynsec_broker
    tokens = provision(b, tmp_path)
    # dev-2's token cannot log in as dev-1 (client id bound), nor with a wrong password, nor anonymously
    assert RawClient(b.port, "dev-2", tokens["dev-2"], "edge-agent-dev-1").connect() == NOT_AUTHORIZED
    assert RawClient(b.port, "dev-1", tokens["dev-2"], "edge-agent-dev-1").connect() == NOT_AUTHORIZED
    # holding dev-2's credentials gives dev-2's rights only
    c = raw(b, "dev-2", tokens)
    try:
        assert c.subscribe("edge/dev-1/inbox") == NOT_AUTHORIZED
        assert c.subscribe("edge/group/field/cmd/+") == NOT_AUTHORIZED
        assert c.publish("edge/dev-1/telemetry/s1") == NOT_AUTHORIZED
    finally:
        c.close()
    # groups can change: dev-4 joins lab (and can then read its messages), then leaves it
    d4 = raw(b, "dev-4", tokens)
    assert d4.subscribe("edge/group/lab/msg") == NOT_AUTHORIZED
    d4.close()
    assert b.users("groups", "dev-4", "--add", "lab") == 0
    d4 = raw(b, "dev-4", tokens)
    assert granted(d4.subscribe("edge/group/lab/msg"))
    d4.close()
    assert b.users("groups", "dev-4", "--remove", "lab") == 0
    d4 = raw(b, "dev-4", tokens)
    assert d4.subscribe("edge/group/lab/msg") == NOT_AUTHORIZED
    d4.close()
    # an existing device is not re-created; --exists-ok keeps its token
    assert b.users("add", "dev-1") == 1
    assert b.users("add", "dev-1", "--exists-ok", "--group", "lab") == 0
    raw(b, "dev-1", tokens).close()
    # passwd replaces the token; remove ends the account
    assert b.users("passwd", "dev-5", "--token-file", str(tmp_path / "dev-5.new")) == 0
    assert RawClient(b.port, "dev-5", tokens["dev-5"], "edge-agent-dev-5").connect() == NOT_AUTHORIZED
    tokens["dev-5"] = (tmp_path / "dev-5.new").read_text().strip()
    raw(b, "dev-5", tokens).close()
    assert b.users("remove", "dev-5") == 0
    assert RawClient(b.port, "dev-5", tokens["dev-5"], "edge-agent-dev-5").connect() == NOT_AUTHORIZED
    assert b.users("remove", "dev-5") == 1


def test_cli_errors_are_specific(dynsec_broker: DynsecBroker, tmp_path: Path, capsys) -> None:
    b = dynsec_broker
    assert b.users("add", "a/b") == 64
    assert "device id: 'a/b' is not allowed" in capsys.readouterr().err
    assert b.users("add", "dev-x", "--public-key", "Zm9v") == 64
    assert "32 bytes" in capsys.readouterr().err
    bad = tmp_path / "wrong.password"
    bad.write_text("nope\n")
    assert main(["users", "list", "--broker", f"127.0.0.1:{b.port}", "--admin-password-file", str(bad)]) == 2
    assert "cannot log in" in capsys.readouterr().err
    assert main(["users", "list", "--broker", f"127.0.0.1:{b.port}",
                 "--admin-password-file", str(tmp_path / "missing")]) == 66
    assert b.users("groups", "nobody", "--add", "lab") == 1
    assert "no broker user 'nobody'" in capsys.readouterr().err


def test_device_cannot_subscribe_with_a_wildcard_for_others(dynsec_broker: DynsecBroker, tmp_path: Path) -> None:
    """A wildcard that would cover other devices is refused as a whole (nothing is delivered)."""
    b = dynsec_broker
    tokens = provision(b, tmp_path)
    c = raw(b, "dev-1", tokens)
    op = raw(b, "op", tokens, "op-3")
    try:
        assert c.subscribe("edge/+/cmd/+") == NOT_AUTHORIZED
        assert granted(op.publish("edge/dev-2/cmd/ping"))  # 0x10 "no matching subscribers" is a success
        assert granted(op.publish("edge/dev-1/cmd/ping"))
        assert granted(c.subscribe("edge/dev-1/cmd/+"))
        assert granted(op.publish("edge/dev-1/cmd/ping"))
        wait_for(lambda: c.got == ["edge/dev-1/cmd/ping"], 5, msg=str(c.got))
    finally:
        c.close()
        op.close()


def test_parallel_admin_sessions_do_not_take_each_others_answers(dynsec_broker: DynsecBroker) -> None:
    """Ansible provisions hosts in parallel forks; every mosquitto_ctrl reads the plugin's answers on one
    shared topic, so without the per-broker lock one host's call took another's answer ("Group is already
    in this role") and failed. Six sessions each ensure the same group many times at once."""
    from edge_agent.cli.dynsec_ctl import DynsecCtl

    b = dynsec_broker
    password = b.admin_password_file.read_text().strip()
    errors: list[Exception] = []

    def worker(k: int) -> None:
        with DynsecCtl("127.0.0.1", b.port, "admin", password) as ctl:
            try:
                for _ in range(10):
                    ctl.ensure_role(dynsec.Role(name="race-role", acls=()))
                    ctl.ensure_group("race-group", "race-role")
            except Exception as e:  # collected and asserted below
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
