"""The one id rule (edge_agent.ids): whole-string match (a trailing newline is refused everywhere),
the reserved device ids, and its use by config, the Agent's keywords and the operator's ctl."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from edge_agent import config, ids
from edge_agent.agent import build_config
from edge_agent.cli.main import main
from edge_agent.errors import ConfigError

SENSOR = '[[sensors]]\nname = "{name}"\ntype = "simulated"\n'


@pytest.mark.parametrize("value", ["a", "dev-1", "A.b_c:d-e", "9" * 64, "all", "group"])
def test_ids_accepted(value: str) -> None:
    assert ids.is_id(value) and ids.check_id(value, "x") == value


@pytest.mark.parametrize("value", ["", "abc\n", "abc\r\n", "\nabc", "a/b", "a+b", "a#", "a b", "_a", "-a", ".a",
                                   "9" * 65, "é", "abc\x00"])
def test_ids_refused(value: str) -> None:
    assert not ids.is_id(value)
    with pytest.raises(ValueError, match=r"^sensor name: .* is not allowed: letters, digits"):
        ids.check_id(value, "sensor name")


def test_non_strings_are_not_ids() -> None:
    for v in (None, 5, b"abc", ["a"]):
        assert not ids.is_id(v)
    with pytest.raises(ValueError, match=r"^command id: must be a string, got int 5"):
        ids.check_id(5, "command id")


def test_pattern_is_whole_string_even_with_re_match() -> None:
    """ID_PATTERN is anchored with \\A...\\Z, so a caller using re.match/re.search cannot let a suffix through."""
    for fn in (re.match, re.search, re.fullmatch):
        assert fn(ids.ID_PATTERN, "abc")
        assert not fn(ids.ID_PATTERN, "abc\n")
        assert not fn(ids.ID_PATTERN, "abc/def")
    assert "$" not in ids.ID_PATTERN


@pytest.mark.parametrize("reserved", ["all", "group"])
def test_reserved_device_ids(reserved: str) -> None:
    assert ids.is_id(reserved) and not ids.is_device_id(reserved)
    with pytest.raises(ValueError, match=rf"^device id: '{reserved}' is reserved: '<prefix>/all/cmd/\.\.\.'"):
        ids.check_device_id(reserved)
    with pytest.raises(ConfigError) as ei:
        config.loads(f'[device]\nid = "{reserved}"\n')
    assert len(ei.value.errors) == 1 and ei.value.errors[0].startswith(f"device.id: '{reserved}' is reserved")
    # only device ids: a group, a sensor or the topic prefix may be called so
    cfg = config.loads(f'[device]\nid = "d"\ngroups = ["{reserved}"]\n[mqtt]\ntopic_prefix = "{reserved}"\n'
                       + SENSOR.format(name=reserved))
    assert cfg.device.groups == (reserved,) and cfg.sensors[0].name == reserved


@pytest.mark.parametrize("doc, key", [
    ('[device]\nid = "dev-1\\n"\n', "device.id"),
    ('[device]\ngroups = ["lab\\n"]\n', "device.groups[0]"),
    ('[mqtt]\ntopic_prefix = "edge\\n"\n', "mqtt.topic_prefix"),
    ('[mqtt]\ntopic_prefix = ""\n', "mqtt.topic_prefix"),
    (SENSOR.format(name="s1\\n"), "sensors[0].name"),
    (SENSOR.format(name=""), "sensors[0].name"),
    ('[[outputs]]\nname = "o\\n"\ntype = "gpio.output"\npin = 17\n', "outputs[0].name"),
    (SENSOR.format(name="s1") + '[[models]]\nname = "m\\n"\npath = "x.tflite"\ninputs = ["s1"]\n', "models[0].name"),
    (SENSOR.format(name="s1") + '[[models]]\nname = "m"\npath = "x.tflite"\ninputs = ["s1"]\nalarm = "a\\n"\n',
     "models[0].alarm"),
    ('[[commands.keys]]\nname = "ops\\n"\npublic_key = "' + "A" * 43 + '="\n', "commands.keys[0].name"),
    ('[[commands.keys]]\nname = "ops"\npublic_key = "' + "A" * 43 + '=\\n"\n', "commands.keys[0].public_key"),
])
def test_config_refuses_a_trailing_newline_and_empty_ids(doc: str, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        config.loads(doc, "x.toml")
    assert [e for e in ei.value.errors if e.startswith(f"{key}: ")], ei.value.errors
    assert ei.value.source == "x.toml"


def test_agent_keywords_get_the_same_rule(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        build_config(device_id="123\n", groups=["ops", "all\n"], state_dir=tmp_path)
    errs = ei.value.errors
    assert any(e.startswith("device.id: '123\\n' is not allowed") for e in errs), errs
    assert any(e.startswith("device.groups[1]: 'all\\n' is not allowed") for e in errs), errs
    with pytest.raises(ConfigError, match=r"device\.id: 'all' is reserved"):
        build_config(device_id="all", state_dir=tmp_path)


def test_default_device_id_from_the_host_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "_pi 4.local")
    assert config.default_device_id() == "pi-4"
    assert config.loads(f'[storage]\ndir = "{tmp_path}"\n').device.id == "pi-4"
    monkeypatch.setattr(socket, "gethostname", lambda: "group")
    with pytest.raises(ConfigError, match=r"device.id: not set, and the host name gives 'group' is reserved"):
        config.loads(f'[storage]\ndir = "{tmp_path}"\n')


def test_config_is_frozen_with_tuples(tmp_path: Path) -> None:
    cfg = config.loads(f'[device]\nid = "d"\ngroups = ["a", "b"]\n[storage]\ndir = "{tmp_path}"\n'
                       + SENSOR.format(name="s1"))
    assert cfg.device.groups == ("a", "b") and isinstance(cfg.sensors, tuple)
    assert cfg.commands.unsigned == ("ping", "status") and cfg.commands.keys == ()
    assert config.DeviceConfig(groups=["x"]).groups == ("x",)  # type: ignore[arg-type]
    assert dataclasses.replace(cfg, sensors=list(cfg.sensors)).sensors == cfg.sensors  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        cfg.device.groups.append("c")  # type: ignore[attr-defined]
    assert config.to_dict(cfg)["device"] == {"id": "d", "groups": ["a", "b"]}


def test_build_validates_overrides_like_the_file() -> None:
    cfg = config.build({"device": {"id": "k"}, "mqtt": {"port": 1884}}, '[mqtt]\nport = 1883\nkeepalive = 20\n',
                       "base.toml")
    assert (cfg.device.id, cfg.mqtt.port, cfg.mqtt.keepalive, cfg.source) == ("k", 1884, 20, "base.toml")
    with pytest.raises(ConfigError) as ei:
        config.build({"device": {"id": "k\n"}, "mqtt": {"prot": 1}})
    assert ei.value.source == "<overrides>" and len(ei.value.errors) == 2
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.build({}, "[mqtt\n", "bad.toml")


@pytest.mark.parametrize("argv, why", [
    (["--device", "all"], "--device: 'all' is reserved"),
    (["--device", "dev-1\n"], "--device: 'dev-1\\n' is not allowed"),
    (["--group", "lab\n"], "--group: 'lab\\n' is not allowed"),
    (["--all", "--id", "abc\n"], "--id: 'abc\\n' is not allowed"),
    (["--all", "--devices", "a,group"], "--devices: 'group' is reserved"),
])
def test_ctl_send_refuses_bad_ids_before_connecting(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    argv: list[str], why: str) -> None:
    cfg = tmp_path / "op.toml"
    cfg.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = 1\n[storage]\ndir = "{tmp_path}"\n')
    assert main(["ctl", "send", "--config", str(cfg), *argv, "ping", "--unsigned"]) == 64
    assert why in capsys.readouterr().err
