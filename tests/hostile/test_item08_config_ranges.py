"""Issue 14, item 8: ``check-config`` says ok only for configs ``run`` can use; ``run`` never ends with a
traceback on a config problem but with exit 78 (EX_CONFIG) naming the key."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import config
from edge_agent.errors import ConfigError
from tests.helpers import ROOT, write_config

# (what the config says, the key the refusal must name)
BAD_NUMBERS = [
    ("[storage]\nmax_age = inf", "storage.max_age"),
    ("[storage]\nmax_age = nan", "storage.max_age"),
    ("[storage]\ncommit_interval = 1e300", "storage.commit_interval"),  # 0 (commit when idle) and up is fine
    ("[storage]\nflush_after = 1e-300", "storage.flush_after"),
    ("[mqtt]\nsession_expiry = 4294967296", "mqtt.session_expiry"),
    ("[mqtt]\nconnect_timeout = inf", "mqtt.connect_timeout"),
    ("[mqtt]\nmax_rate = inf", "mqtt.max_rate"),
    ("[agent]\nstatus_interval = 1e-300", "agent.status_interval"),
    ("[messaging]\ndefault_ttl = 1e300", "messaging.default_ttl"),
    ("[commands]\nrate = inf", "commands.rate"),
    ('[[sensors]]\nname = "x"\ntype = "simulated"\ninterval = inf', "sensors[0].interval"),
    ('[[sensors]]\nname = "x"\ntype = "simulated"\ninterval = 1180591620717411303424', "sensors[0].interval"),
    ('[[sensors]]\nname = "x"\ntype = "simulated"\ninterval = 1e-300', "sensors[0].interval"),
    ('[[sensors]]\nname = "x"\ntype = "simulated"\noffset = nan', "sensors[0].offset"),
    ('[[sensors]]\nname = "x"\ntype = "simulated"\nseed = 1180591620717411303424', "sensors[0].seed"),
]


def _cli(cmd: str, cfg: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", cmd, "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)


def _config(tmp_path: Path, text: str, state: Path | str | None = None) -> Path:
    cfg = tmp_path / "c.toml"
    write_config(cfg, 1, tmp_path / "state" if state is None else Path(state))
    if "[storage]" in text or "[mqtt]" in text or "[agent]" in text:  # merge into the section write_config has
        section, body = text.split("\n", 1)
        cfg.write_text(cfg.read_text().replace(section + "\n", f"{section}\n{body}\n", 1)
                       if section in cfg.read_text() else cfg.read_text() + "\n" + text + "\n")
    else:
        cfg.write_text(cfg.read_text() + "\n" + text + "\n")
    return cfg


@pytest.mark.parametrize(("text", "key"), BAD_NUMBERS)
def test_check_config_refuses_numbers_run_cannot_use(tmp_path: Path, text: str, key: str) -> None:
    r = _cli("check-config", _config(tmp_path, text))
    assert r.returncode == 78, r
    assert f"{key}:" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _unusable_dirs(tmp_path: Path) -> list[tuple[str, str]]:
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    (tmp_path / "a-file").write_text("x")
    return [(str(tmp_path / "loop-a"), "symbolic links"), (str(tmp_path / "a-file"), "not a directory"),
            (str(tmp_path / "a-file" / "sub"), "Not a directory"), ("/proc/sys/edge", "not writable")]


@pytest.mark.parametrize("cmd", ["check-config", "run"])
def test_unusable_state_dir_is_exit_78_naming_storage_dir(tmp_path: Path, cmd: str) -> None:
    for state, why in _unusable_dirs(tmp_path):
        r = _cli(cmd, _config(tmp_path, "", state))
        assert r.returncode == 78, (state, r)
        assert "storage.dir:" in r.stderr and why in r.stderr and "Traceback" not in r.stderr, (state, r.stderr)


def test_nul_byte_in_state_dir_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "")
    cfg.write_text(cfg.read_text().replace(f'dir = "{tmp_path / "state"}"', 'dir = "/tmp/a\\u0000b"'))
    r = _cli("check-config", cfg)
    assert r.returncode == 78 and "storage.dir: must not contain a NUL byte" in r.stderr, r


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to check as another user")
def test_read_only_state_dir_for_the_agents_user(tmp_path: Path) -> None:
    """A state dir the agent's user cannot write (root ignores modes: the check runs as euid nobody)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    cfg = config.loads(f'[storage]\ndir = "{ro}"\n[device]\nid = "d"', "c.toml")
    os.seteuid(65534)
    try:
        with pytest.raises(ConfigError) as ei:
            config.check_runnable(cfg)
        with pytest.raises(ConfigError):
            config.check_runnable(dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, dir=f"{ro}/x/y")))
    finally:
        os.seteuid(0)
    # pytest's tmp dirs are 0700: nobody may not even get to it; either way the refusal names the key
    (err,) = ei.value.errors
    assert err.startswith(f"storage.dir: {ro}: ") and ("not writable" in err or "Permission denied" in err), err
    config.check_runnable(cfg)  # root can
