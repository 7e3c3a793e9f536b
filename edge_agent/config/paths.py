"""Where the config file and the state directory are, and the device id when the file gives none."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path

SYSTEM_CONFIG = Path("/etc/edge-agent/config.toml")


def default_device_id() -> str:
    """The host name, made an id: its first label, other characters as '-', at most 64 characters."""
    host = socket.gethostname().split(".")[0]
    host = re.sub(r"[^A-Za-z0-9_.:-]", "-", host).lstrip("_.:-")[:64]
    return host or "edge"


def default_state_dir(env: Mapping[str, str]) -> str:
    """$STATE_DIRECTORY (systemd's StateDirectory=; its first entry), else the user data dir."""
    sd = env.get("STATE_DIRECTORY", "")
    if sd:
        return sd.split(":")[0]
    import platformdirs

    return platformdirs.user_data_dir("edge-agent", appauthor=False)


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """$EDGE_AGENT_CONFIG, else /etc/edge-agent/config.toml when it exists, else the user config dir."""
    env = os.environ if env is None else env
    if env.get("EDGE_AGENT_CONFIG"):
        return Path(env["EDGE_AGENT_CONFIG"])
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    import platformdirs

    return Path(platformdirs.user_config_dir("edge-agent", appauthor=False)) / "config.toml"
