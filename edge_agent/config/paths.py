"""Where the config file and the state directory are, and the device id when the file gives none."""

from __future__ import annotations

import os
import re
import socket
import stat as stat_mod
import tempfile
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


def state_dir_problem(path: str) -> str | None:
    """Why ``run`` could not use ``path`` as its state directory (create it, write files in it), or None.

    Checked without leaving anything behind: a NUL byte, a symlink loop, a non-directory on the way, a
    directory (or the nearest existing parent, for one still to be made) this user cannot write."""
    if not path:
        return "must not be empty"
    if "\x00" in path:
        return f"must not contain a NUL byte, got {path!r}"
    p = Path(path)
    while True:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            if p.parent == p:
                return f"{path}: no existing parent directory"
            p = p.parent  # made by run (mkdir -p): the first existing parent must take it
            continue
        except OSError as e:  # ELOOP (a symlink loop), ENOTDIR (a file on the way), EACCES, ENAMETOOLONG
            return f"{path}: cannot be used: {e.strerror or e}"
        break
    if not stat_mod.S_ISDIR(st.st_mode):
        what = "is" if str(p) == path else f"has {p} on its way, which is"
        return f"{path}: {what} not a directory"
    what = "is" if str(p) == path else f"would be made in {p}, which is"
    if not os.access(p, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return f"{path}: {what} not writable by this user (uid {os.geteuid()})"
    try:  # what access() cannot tell: a read-only mount, an immutable directory (also for root)
        tempfile.TemporaryFile(dir=p).close()  # O_TMPFILE where available: nothing visible is made
    except OSError as e:
        return f"{path}: {what} not writable: {e.strerror or e}"
    return None
