"""Config: every error reported with file and key path; exit 78; search order; defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import config
from edge_agent.errors import ConfigError

GOOD = """
[device]
id = "dev-1"
groups = ["lab"]
[mqtt]
host = "127.0.0.1"
port = 1883
topic_prefix = "edge"
keepalive = 30
[storage]
dir = "{dir}"
[[sensors]]
name = "s1"
type = "simulated"
interval = 0.5
count = 1000
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_contract_keys_parse_into_frozen_dataclasses(tmp_path: Path) -> None:
    cfg = config.loads(GOOD.format(dir=tmp_path), "x.toml")
    assert cfg.device.id == "dev-1" and cfg.device.groups == ("lab",)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.topic_prefix, cfg.mqtt.keepalive) == ("127.0.0.1", 1883, "edge", 30)
    assert cfg.storage.dir == str(tmp_path)
    s = cfg.sensors[0]
    assert (s.name, s.type, s.interval, s.count) == ("s1", "simulated", 0.5, 1000)
    with pytest.raises(AttributeError):
        cfg.mqtt.port = 1  # type: ignore[misc]


def test_defaults_device_id_is_hostname_and_state_dir_from_env(tmp_path: Path) -> None:
    cfg = config.loads("", "x.toml", env={"STATE_DIRECTORY": str(tmp_path / "sd")})
    assert cfg.device.id == config.default_device_id()
    assert cfg.storage.dir == str(tmp_path / "sd")
    assert cfg.mqtt.topic_prefix == "edge"
    assert cfg.mqtt.client_id == f"edge-agent-{cfg.device.id}"


def test_every_error_collected_with_key_path() -> None:
    text = """
[device]
id = 5
[mqtt]
prot = 1883
keepalive = 0
[[sensors]]
name = "a"
type = "simulated"
interval = 0.5
[[sensors]]
name = "b"
type = "simulated"
interval = -1
"""
    with pytest.raises(ConfigError) as ei:
        config.loads(text, "/etc/x.toml")
    errs = ei.value.errors
    assert "device.id: must be string, got int 5" in errs
    assert "mqtt.prot: unknown key (did you mean 'port'?)" in errs
    assert "mqtt.keepalive: must be >= 2, got 0" in errs
    assert "sensors[1].interval: must be >= 1e-06, got -1" in errs
    assert len(errs) == 4
    assert ei.value.source == "/etc/x.toml"


def test_plugin_options_validated_with_hint() -> None:
    text = '[[sensors]]\nname = "a"\ntype = "simulated"\nspike_evry = 3\n[[sensors]]\nname = "b"\ntype = "simulatd"\n'
    with pytest.raises(ConfigError) as ei:
        config.loads(text)
    assert "sensors[0].spike_evry: unknown key (did you mean 'spike_every'?)" in ei.value.errors
    assert "sensors[1].type: unknown sensor type 'simulatd' (did you mean 'simulated'?)" in ei.value.errors


def test_ids_with_wildcards_refused() -> None:
    with pytest.raises(ConfigError) as ei:
        config.loads('[device]\nid = "a+b"\ngroups = ["x/#"]\n')
    assert any(e.startswith("device.id:") for e in ei.value.errors)
    assert any(e.startswith("device.groups[0]:") for e in ei.value.errors)


def test_duplicate_sensor_names() -> None:
    with pytest.raises(ConfigError) as ei:
        config.loads('[[sensors]]\nname = "a"\ntype = "simulated"\n[[sensors]]\nname = "a"\ntype = "simulated"\n')
    assert ei.value.errors == ["sensors[1].name: duplicate name 'a' (also sensors[0])"]


@pytest.mark.parametrize("body, key, why", [
    ('[mqtt]\nport = "1883"\n', "mqtt.port", "must be integer"),
    ('[mqtt]\nhots = "x"\n', "mqtt.hots", "unknown key"),
    ('[mqtt]\nport = 70000\n', "mqtt.port", "must be <= 65535"),
    ('[storage]\nmax_bytes = 1000\n', "storage.max_bytes", "must be >= 1048576"),
    ('[mqtt\nport = 1\n', "invalid TOML", "line 1"),
])
def test_check_config_exit_78_names_file_and_key(tmp_path: Path, body: str, key: str, why: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(body)
    r = run_cli("check-config", "--config", str(f))
    assert r.returncode == 78, r.stderr
    assert str(f) in r.stderr and key in r.stderr and why in r.stderr, r.stderr


def test_missing_file_exit_78(tmp_path: Path) -> None:
    r = run_cli("check-config", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 78
    assert "nope.toml" in r.stderr and "file not found" in r.stderr


def test_run_with_bad_config_exits_78(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[mqtt]\nport = -1\n")
    r = run_cli("run", "--config", str(f))
    assert r.returncode == 78 and "mqtt.port" in r.stderr


def test_config_path_from_env(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(GOOD.format(dir=tmp_path))
    import os

    r = run_cli("check-config", env={**os.environ, "EDGE_AGENT_CONFIG": str(f)})
    assert r.returncode == 0, r.stderr
    assert str(f) in r.stdout
    assert config.default_config_path({"EDGE_AGENT_CONFIG": str(f)}) == f


def test_sample_config_is_valid_and_shows_every_section(tmp_path: Path) -> None:
    r = run_cli("sample-config")
    assert r.returncode == 0
    for section in ("[device]", "[mqtt]", "[storage]", "[agent]", "[commands]", "[messaging]", "[[sensors]]"):
        assert section in r.stdout
    f = tmp_path / "sample.toml"
    f.write_text(r.stdout.replace('# dir = ""', f'dir = "{tmp_path}"'))
    cfg = config.load(f)
    assert cfg.mqtt.keepalive == config.MqttConfig().keepalive


def test_version() -> None:
    from edge_agent import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and __version__ in r.stdout


def test_model_ring_size_is_capped_with_the_arithmetic_in_the_error() -> None:
    """window + hop x queue rows are allocated up front: an absurd queue is refused at config check,
    not discovered as an out-of-memory kill on a 512 MB device."""
    base = '[[sensors]]\nname = "t"\ntype = "simulated"\n[[models]]\nname = "m"\npath = "x.tflite"\ninputs = ["t"]\n'
    ok = config.loads(base + "window = 32\nhop = 4\nqueue = 100000\n")  # 400,032 rows: fine
    assert ok.models[0].queue == 100000
    with pytest.raises(ConfigError) as ei:
        config.loads(base + "window = 32\nhop = 32\nqueue = 100000\n", "/etc/edge-agent.toml")
    assert ei.value.errors == ["models[0].queue: window + hop x queue = 32 + 32 x 100000 = 3,200,032 rows of ring "
                               "buffer (~110 MiB) is more than 1,000,000; lower queue (the windows that may wait "
                               "for the worker) or hop"]
