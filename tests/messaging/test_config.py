"""Agent configuration: a file plus keyword overrides, validated by edge_agent.config like the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import config as config_mod
from edge_agent.agent import build_config
from edge_agent.errors import ConfigError
from edge_agent.messaging.service import MessagingError


def test_file_plus_keywords(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[device]\nid = "from-file"\ngroups = ["a"]\n[mqtt]\nport = 1884\nkeepalive = 20\n'
                 '[messaging]\nenabled = false\nchunk_size = 2048\n')
    cfg = build_config(f, device_id="123", state_dir=tmp_path / "s", groups=["ops", "lab"],
                       settings={"mqtt": {"session_expiry": 600}})
    assert cfg.device.id == "123" and cfg.device.groups == ("ops", "lab")
    assert cfg.mqtt.port == 1884 and cfg.mqtt.keepalive == 20 and cfg.mqtt.session_expiry == 600
    assert cfg.mqtt.client_id == "edge-agent-123" and cfg.storage.dir == str(tmp_path / "s")
    assert cfg.messaging.enabled and cfg.messaging.chunk_size == 2048  # an Agent always has messaging
    assert cfg.source == str(f)


def test_keywords_only_and_config_object(tmp_path: Path) -> None:
    cfg = build_config(device_id="456", host="broker.local", port=8883, state_dir=tmp_path)
    assert (cfg.device.id, cfg.mqtt.host, cfg.mqtt.port) == ("456", "broker.local", 8883)
    base = config_mod.loads(f'[storage]\ndir = "{tmp_path}"\n[messaging]\nenabled = false\n')
    assert build_config(base).messaging.enabled
    with pytest.raises(MessagingError, match="either a Config object or keyword settings"):
        build_config(base, device_id="x")


def test_bad_keywords_get_the_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        build_config(device_id="a/b", port=70000, state_dir=tmp_path, settings={"mqtt": {"keepalife": 3}})
    text = str(ei.value)
    assert "device.id: 'a/b' is not allowed" in text
    assert "mqtt.port: must be <= 65535" in text
    assert "mqtt.keepalife: unknown key (did you mean 'keepalive'?)" in text
    with pytest.raises(ConfigError, match="cannot read"):
        build_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        build_config(bad)
