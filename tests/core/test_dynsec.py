"""The dynsec access plan as pure functions (edge_agent/dynsec.py) and the users CLI's pure helpers.

The real broker's agreement with :func:`edge_agent.dynsec.allowed` is checked in
tests/commands/test_dynsec_fleet.py."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from edge_agent import config as config_mod
from edge_agent import dynsec
from edge_agent.cli.dynsec_ctl import parse_client
from edge_agent.cli.users import check_public_key, parse_broker, write_secret

PLAN = dynsec.plan_device("edge", "dev-a", ["lab", "lab", "ops"])
ROLES = PLAN.roles()
OP = (dynsec.operator_role("edge"),)

# (action, topic, allowed for dev-a in groups lab and ops)
DEVICE_CASES = [
    ("publish", "edge/dev-a/telemetry/s1", True),
    ("publish", "edge/dev-a/status", True),
    ("publish", "edge/dev-a/events/dropped", True),
    ("publish", "edge/dev-a/inference/m1", True),
    ("publish", "edge/dev-a/cmd-reply/ping", True),
    ("publish", "edge/dev-b/inbox", True),          # direct messages and file chunks to another device
    ("publish", "edge/dev-b/receipts", True),       # receipts for the messages dev-b sent us
    ("publish", "edge/_ctl/edge-ctl-1-abc/reply/dev-a", True),
    ("publish", "edge/_ctl/edge-ctl-1-abc/reply/dev-b", False),  # replies name their device
    ("publish", "edge/_ctl/edge-ctl-1-abc/reply", False),
    ("publish", "edge/group/lab/msg", True),
    ("publish", "edge/group/lab/members/dev-a", True),  # its own membership (retained)
    ("publish", "edge/group/field/members/dev-a", True),  # any group: the device role cannot know them
    ("publish", "edge/group/lab/members/dev-b", False),  # never another device's
    ("publish", "edge/dev-a/cmd/ping", False),      # not even to itself: commands come from operators
    ("publish", "edge/dev-b/telemetry/s1", False),
    ("publish", "edge/dev-b/status", False),
    ("publish", "edge/dev-b/cmd/ping", False),
    ("publish", "edge/group/field/msg", False),
    ("publish", "edge/group/lab/cmd/ping", False),
    ("publish", "edge/all/cmd/ping", False),
    ("publish", "other/dev-a/telemetry/s1", False),
    ("subscribe", "edge/dev-a/inbox", True),
    ("subscribe", "edge/dev-a/receipts", True),
    ("subscribe", "edge/dev-a/cmd/+", True),
    ("subscribe", "edge/dev-a/cmd/ping", True),
    ("subscribe", "edge/group/lab/cmd/+", True),
    ("subscribe", "edge/group/ops/msg", True),
    ("subscribe", "edge/group/lab/members/+", True),
    ("subscribe", "edge/group/ops/members/dev-b", True),
    ("subscribe", "edge/dev-b/status", True),  # presence of peers
    ("subscribe", "edge/group/field/members/+", False),
    ("subscribe", "edge/group/+/members/+", False),
    ("subscribe", "edge/+/status", True),
    ("subscribe", "edge/all/cmd/+", True),
    ("subscribe", "edge/dev-a/#", False),
    ("subscribe", "edge/dev-a/telemetry/s1", False),
    ("subscribe", "edge/dev-b/inbox", False),
    ("subscribe", "edge/dev-b/cmd/+", False),
    ("subscribe", "edge/+/inbox", False),
    ("subscribe", "edge/+/cmd/+", False),
    ("subscribe", "edge/group/+/cmd/+", False),
    ("subscribe", "edge/group/field/msg", False),
    ("subscribe", "edge/#", False),
    ("subscribe", "#", False),
]


@pytest.mark.parametrize(("action", "topic", "expected"), DEVICE_CASES)
def test_device_plan(action: str, topic: str, expected: bool) -> None:
    assert dynsec.allowed(ROLES, action, topic) is expected


@pytest.mark.parametrize(("action", "topic", "expected"), [
    ("publish", "edge/dev-a/cmd/ping", True),
    ("publish", "edge/group/lab/cmd/ping", True),
    ("publish", "edge/all/cmd/ping", True),
    ("publish", "edge/dev-a/telemetry/s1", False),
    ("publish", "edge/dev-a/inbox", False),
    ("publish", "edge/_ctl/x/reply", False),
    ("subscribe", "edge/#", True),
    ("subscribe", "edge/+/status", True),
    ("subscribe", "edge/_ctl/edge-ctl-1/reply", True),
    ("subscribe", "#", False),
    ("subscribe", "$SYS/#", False),
])
def test_operator_plan(action: str, topic: str, expected: bool) -> None:
    assert dynsec.allowed(OP, action, topic) is expected


def test_plan_names_and_shape() -> None:
    assert PLAN.username == "dev-a" and PLAN.client_id == "edge-agent-dev-a"
    assert PLAN.groups == ("lab", "ops")  # duplicates dropped, order kept
    assert [r.name for r in ROLES] == ["edge/device/dev-a", "edge/devices", "edge/group/lab", "edge/group/ops"]
    # a device role and a group role can never share a name: ids cannot contain '/'
    assert dynsec.device_role_name("edge", "lab") != dynsec.group_name("edge", "lab")
    deny = [a for a in PLAN.own_role.acls if not a.allow]
    assert deny == [dynsec.Acl(dynsec.PUBLISH, "edge/dev-a/cmd/#", False, dynsec.DENY_PRIORITY)]
    assert deny[0].args() == ["publishClientSend", "edge/dev-a/cmd/#", "deny", "10"]
    assert dynsec.plan_device("p1", "d", client_id="").client_id == ""
    assert dynsec.device_role("p1", "d").acls[1].topic == "p1/d/#"


def test_priority_decides_within_a_role() -> None:
    role = dynsec.Role("r", (dynsec.Acl(dynsec.PUBLISH, "a/#"),
                             dynsec.Acl(dynsec.PUBLISH, "a/b", allow=False, priority=1)))
    assert not dynsec.allowed([role], "publish", "a/b")
    assert dynsec.allowed([role], "publish", "a/c")
    with pytest.raises(ValueError, match="action"):
        dynsec.allowed([role], "read", "a/b")


@pytest.mark.parametrize(("acl", "sub", "expected"), [  # the plugin's own sub_acl_check table
    ("foo/+/bar", "foo/#", False), ("foo/+/ba℞/#", "foo/baz/ba℞", True), ("foo/+/ba℞/#", "foo/baz/ba℞/+", True),
    ("foo/+/ba℞/#", "foo/baz/ba℞/#", True), ("foo/+/ba℞/#", "foo/baz/+/#", False), ("/+//#", "/foo///#", True),
    ("#", "#", True), ("#", "+", True), ("/#", "+", False), ("/#", "/+", True), ("/+", "#", False),
    ("/+", "+", False), ("+/+", "topic/topic", True), ("+/+", "topic/topic/", False), ("+", "#", False),
    ("+", "+", True), ("a/b/c/d/e", "a/b/c/d/e", True), ("a/b/ /d/e", "a/b/c/d/e", False),
])
def test_subscribe_pattern_matching(acl: str, sub: str, expected: bool) -> None:
    role = dynsec.Role("r", (dynsec.Acl(dynsec.SUB_PATTERN, acl),))
    assert dynsec.allowed([role], "subscribe", sub) is expected


@pytest.mark.parametrize(("call", "match"), [
    (lambda: dynsec.plan_device("edge", "a/b"), r"device id: 'a/b' is not allowed"),
    (lambda: dynsec.plan_device("edge", "all"), r"'all' is reserved"),
    (lambda: dynsec.plan_device("edge", "dev", ["lab+"]), r"group: 'lab\+' is not allowed"),
    (lambda: dynsec.plan_device("ed/ge", "dev"), r"topic prefix"),
    (lambda: dynsec.plan_device("edge", "dev", client_id="c#1"), r"client id 'c#1'"),
    (lambda: dynsec.Acl("publish", "a"), r"unknown dynsec ACL type 'publish'"),
])
def test_bad_input_is_refused_by_name(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_config_snippet_is_a_valid_config(tmp_path: Path) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    text = dynsec.config_snippet(PLAN, host="broker.lan", port=8883, prefix="edge", token="tok-123",
                                 public_key=key)
    cfg = config_mod.loads(text + f'\n[storage]\ndir = "{tmp_path}"\n', "<snippet>")
    assert (cfg.device.id, cfg.device.groups) == ("dev-a", ("lab", "ops"))
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username, cfg.mqtt.password) == ("broker.lan", 8883, "dev-a",
                                                                                      "tok-123")
    assert cfg.mqtt.client_id == PLAN.client_id  # the id the account is bound to is the agent's default
    assert key in text
    other = dynsec.config_snippet(dynsec.plan_device("edge", "d", client_id="cid-1"), host="h", port=1,
                                  prefix="edge", token_file="/secret/d.token")
    assert 'client_id = "cid-1"' in other and "password =" not in other.replace("# password =", "")
    assert "/secret/d.token" in other
    op = "\n".join(dynsec.mqtt_snippet("alice", host="h", port=1884, prefix="p1", token="t"))
    op_cfg = config_mod.loads(op + f'\n[storage]\ndir = "{tmp_path}"\n', "<operator snippet>")
    assert (op_cfg.mqtt.username, op_cfg.mqtt.password, op_cfg.mqtt.topic_prefix) == ("alice", "t", "p1")


def test_cli_helpers(tmp_path: Path) -> None:
    assert parse_broker("broker.lan:8883") == ("broker.lan", 8883)
    assert parse_broker("broker.lan") == ("broker.lan", 1883)
    assert parse_broker("[::1]:1884") == ("::1", 1884)
    for bad in ("host:0", "host:99999", ":1883", "host:x"):
        with pytest.raises(ValueError, match="--broker"):
            parse_broker(bad)
    good = base64.b64encode(b"k" * 32).decode()
    assert check_public_key(good) == good
    with pytest.raises(ValueError, match="32 bytes, this one is 31"):
        check_public_key(base64.b64encode(b"k" * 31).decode())
    with pytest.raises(ValueError, match="not base64"):
        check_public_key("not base64!")
    secret = tmp_path / "t.token"
    write_secret(secret, "s3cret")
    assert secret.read_text() == "s3cret\n" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["t.token"]


def test_parse_get_client_output() -> None:
    text = ("Username: dev1\nClientid: edge-agent-dev1\nDisabled: true\nRoles:    r2 (priority: 3)\n"
            "          edge/device/dev1 (priority: -1)\nGroups:   edge/group/lab (priority: -1)\n"
            "          g2 (priority: -1)\n")
    c = parse_client(text)
    assert (c.username, c.client_id, c.disabled) == ("dev1", "edge-agent-dev1", True)
    assert c.roles == ["r2", "edge/device/dev1"] and c.groups == ["edge/group/lab", "g2"]
    plain = parse_client("Username: op\nClientid:\nRoles:    edge/operators (priority: 0)\n")
    assert (plain.client_id, plain.groups, plain.disabled) == ("", [], False)


def test_users_add_puts_the_device_key_in_the_signed_roster(tmp_path: Path) -> None:
    """`edge-agent users add DEV --public-key K --roster FILE` signs the device into the roster: a device
    that trusts the operator key verifies it and finds DEV's key; a second add re-keys (rotation)."""
    from edge_agent.cli.users import add_to_roster
    from edge_agent.commands.signing import Signer
    from edge_agent.config.schema import OperatorKey
    from edge_agent.roster import verify_roster

    op = Signer.generate()
    (tmp_path / "op.key").write_text(op.private_b64())
    dev_key, dev_key2 = Signer.generate().public_b64(), Signer.generate().public_b64()
    roster_file = tmp_path / "roster.json"
    add_to_roster(str(roster_file), "dev-a", dev_key, ["lab"], "edge", str(tmp_path / "op.key"))
    trusted = [OperatorKey(name="op", public_key=op.public_b64())]
    r = verify_roster(roster_file.read_bytes(), trusted, "edge")
    assert base64.b64encode(r.devices["dev-a"].key).decode() == dev_key and list(r.devices["dev-a"].groups) == ["lab"]
    v1 = r.version
    add_to_roster(str(roster_file), "dev-a", dev_key2, ["lab"], "edge", str(tmp_path / "op.key"))
    r2 = verify_roster(roster_file.read_bytes(), trusted, "edge")
    assert r2.version > v1 and base64.b64encode(r2.devices["dev-a"].key).decode() == dev_key2
    with pytest.raises(ValueError, match="--public-key"):
        add_to_roster(str(roster_file), "dev-b", None, [], "edge", str(tmp_path / "op.key"))
    other = Signer.generate()
    with pytest.raises(Exception, match=r"trusted|operator|sign"):
        verify_roster(roster_file.read_bytes(), [OperatorKey(name="x", public_key=other.public_b64())], "edge")
