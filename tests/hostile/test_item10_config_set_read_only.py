"""Issue 14 item 10: under the shipped unit the config file is read-only for the agent (``/etc/edge-agent``
read-only under ``ProtectSystem=strict``, the file ``root:edge-agent 0640``), so ``config.set`` answered
``internal: PermissionError``. Now it writes ``<state>/config.override.toml``, which the loader lays over
the file at every start and reload.

Reproduced here without systemd: the config file is 0440 in a 0555 directory and the agent runs without
any capability (when the tests run as root, through ``setpriv --bounding-set=-all``: uid 0 without
CAP_DAC_OVERRIDE obeys the permission bits like the unit's ``edge-agent`` user; otherwise as the test's
own user); commands go over the real broker, and a restart picks the override up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.commands.signing import Signer
from edge_agent.devbroker import DevBroker
from tests.commands.conftest import Requester, agent_config, key_snippet
from tests.helpers import ROOT

T = "edge/dev-1/cmd/"


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp dirs are 0700 when run as root)."""
    d = Path(tempfile.mkdtemp(prefix="edge-h14-"))
    try:
        yield d
    finally:
        for p in (d / "etc", d / "etc" / "config.toml"):
            if p.exists():
                p.chmod(0o755)
        shutil.rmtree(d, ignore_errors=True)


def _unprivileged() -> list[str]:
    """The command prefix that takes every capability away from root (nothing when not root)."""
    if os.geteuid() != 0:
        return []
    exe = shutil.which("setpriv")
    if exe is None:
        pytest.skip("running as root without setpriv: the permission bits would not apply")
    return [exe, "--bounding-set=-all", "--inh-caps=-all", "--"]


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([*_unprivileged(), sys.executable, "-m", "edge_agent", "run", "--config",
                                 str(config)], stdout=out, stderr=out, env=env, cwd="/")


def _signed(req: Requester, signer: Signer, name: str, args: dict[str, Any], timeout: float = 15) -> dict[str, Any]:
    return req.request(T + name, signer.sign("device", "dev-1", name, args), timeout=timeout)


def _wait_up(req: Requester, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if req.request(T + "ping", {}, timeout=2)["status"] == "ok":
                return
        except AssertionError:
            pass
    raise AssertionError(f"agent not answering; log:\n{log.read_text(errors='replace')[-3000:]}")


def test_config_set_with_a_read_only_config_file(broker: DevBroker, requester: Requester, signer: Signer,
                                                 sandbox: Path) -> None:
    etc, state = sandbox / "etc", sandbox / "state"
    etc.mkdir()
    state.mkdir(mode=0o750)
    cfg = agent_config(etc / "config.toml", broker.port, state, keys=key_snippet(signer))
    main_text = cfg.read_text()
    cfg.chmod(0o440)
    etc.chmod(0o555)
    log = sandbox / "agent.log"
    proc = _start(cfg, log)
    try:
        _wait_up(requester, log)
        rep = _signed(requester, signer, "config.set", {"changes": {"sensors.s1.interval": 0.5,
                                                                    "mqtt.keepalive": 20}})
        assert rep["status"] == "ok", rep  # was internal: PermissionError
        assert rep["result"]["overrides"] == ["mqtt.keepalive", "sensors.s1.interval"]
        over = state / "config.override.toml"
        assert tomllib.loads(over.read_text())["set"] == {"mqtt.keepalive": 20, "sensors.s1.interval": 0.5}
        assert _signed(requester, signer, "config.get", {"key": "sensors.s1.interval"})["result"] == 0.5
        # a bad value never lands: validated as a whole before the override is written
        rep = _signed(requester, signer, "config.set", {"changes": {"sensors.s1.interval": -1}})
        assert rep["error"]["code"] == "invalid_config" and "sensors[0].interval" in rep["error"]["message"], rep
        rep = _signed(requester, signer, "config.set", {"changes": {"commands.insecure": True}})
        assert rep["error"]["code"] == "protected", rep
        assert tomllib.loads(over.read_text())["set"]["sensors.s1.interval"] == 0.5

        proc.terminate()
        assert proc.wait(30) == 0
        proc = _start(cfg, log)  # the restart picks the override up
        _wait_up(requester, log)
        assert _signed(requester, signer, "config.get", {"key": "sensors.s1.interval"})["result"] == 0.5
        assert _signed(requester, signer, "config.get", {"key": "mqtt.keepalive"})["result"] == 20
        st = requester.request(T + "status", {})["result"]["config"]
        assert st["overrides"] == ["mqtt.keepalive", "sensors.s1.interval"] and st["override_file"] == str(over)
    finally:
        proc.terminate()
        proc.wait(30)
    assert cfg.read_text() == main_text  # the config file was never touched
    r = subprocess.run([*_unprivileged(), sys.executable, "-m", "edge_agent", "check-config", "--config",
                        str(cfg)], capture_output=True, text=True, cwd="/", timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert f"overridden by {over} (config.set): mqtt.keepalive, sensors.s1.interval" in r.stdout, r.stdout


def test_override_file_problems_name_the_file_and_key(tmp_path: Path) -> None:
    """A hand-edited override is checked like the file: protected keys, unknown items and bad values are
    refused with the override file's name and the key (run exits 78 on them)."""
    from edge_agent import config as config_mod
    from edge_agent.errors import ConfigError

    state = tmp_path / "state"
    state.mkdir()
    cfg = agent_config(tmp_path / "c.toml", 1883, state)
    over = state / "config.override.toml"
    for text, key, why in (('[set]\n"commands.insecure" = true\n', "commands.insecure", "remotely"),
                           ('[set]\n"sensors.s9.interval" = 1.0\n', "sensors.s9.interval", "no sensors item"),
                           ('[set]\n"sensors.s1.interval" = -1.0\n', "sensors[0].interval", "must be >="),
                           ('[other]\nx = 1\n', "other", "only [set]")):
        over.write_text(text)
        with pytest.raises(ConfigError) as e:
            config_mod.load(cfg)
        msg = str(e.value)
        assert key in msg and why in msg and str(over) in msg, msg
    over.write_text('[set]\n"sensors.s1.interval" = 2.5\n')
    c = config_mod.load(cfg)
    assert c.sensors[0].interval == 2.5 and c.overrides == ("sensors.s1.interval",)
