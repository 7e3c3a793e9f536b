"""`edge-agent keys generate` and `edge-agent ctl send` as real processes against 3 real agents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edge_agent.commands.signing import Signer
from tests.helpers import ROOT


def _run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def test_group_command_three_agents_then_one_stopped(make_app, broker, tmp_path: Path) -> None:
    env = {**os.environ, "EDGE_AGENT_CTL_CACHE": str(tmp_path / "members.json")}
    key = tmp_path / "op.key"
    gen = _run("keys", "generate", "--out", str(key), "--name", "ops", env=env)
    assert gen.returncode == 0, gen.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    snippet = gen.stdout
    assert "[[commands.keys]]" in snippet and Signer.load(key).public_b64() in snippet
    keys = snippet.replace('allow = ["*"]', 'allow = ["ping", "status"]')
    apps = [make_app(device=d, groups=("lab",), keys=keys, sensors=False) for d in ("dev-1", "dev-2", "dev-3")]
    make_app(device="dev-9", groups=("other",), keys=keys, sensors=False)  # not in the group: not asked
    op = tmp_path / "op.toml"
    op.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[storage]\ndir = "{tmp_path / "op-state"}"\n')

    out = _run("ctl", "send", "--config", str(op), "--group", "lab", "ping", "--key", str(key), "--timeout", "15",
               "--json", env=env)
    rows = json.loads(out.stdout)
    assert out.returncode == 0, out.stderr
    assert sorted(r["device"] for r in rows) == ["dev-1", "dev-2", "dev-3"]
    assert all(r["status"] == "ok" and r["result"]["pong"] and r["latency_ms"] >= 0 for r in rows)
    assert "[3/3]" in out.stderr  # progress while replies arrive

    apps[2].stop()  # dev-3 goes away (its retained status becomes 'offline', without groups)
    out = _run("ctl", "send", "--config", str(op), "--group", "lab", "ping", "--key", str(key), "--timeout", "4",
               env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    table = out.stdout.splitlines()
    assert table[0].split() == ["DEVICE", "STATUS", "RESULT", "LATENCY"]
    by_dev = {line.split()[0]: line for line in table[1:]}
    assert set(by_dev) == {"dev-1", "dev-2", "dev-3"}
    assert " ok " in by_dev["dev-1"] and " ok " in by_dev["dev-2"]
    assert "no answer" in by_dev["dev-3"] and "offline" in by_dev["dev-3"]

    # --devices names members the broker cannot tell about; a refusal is shown with its reason
    out = _run("ctl", "send", "--config", str(op), "--device", "dev-1", "sensor.set_interval", "sensor=s1",
               "interval=2", "--key", str(key), "--timeout", "10", env=env)
    assert out.returncode == 1 and "not_allowed" in out.stdout


def test_ctl_send_all_and_expected_count(make_app, broker, tmp_path: Path) -> None:
    env = {**os.environ, "EDGE_AGENT_CTL_CACHE": str(tmp_path / "members.json")}
    for d in ("dev-1", "dev-2"):
        make_app(device=d, sensors=False)
    op = tmp_path / "op.toml"
    op.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[storage]\ndir = "{tmp_path / "op-state"}"\n')
    out = _run("ctl", "send", "--config", str(op), "--all", "status", "--unsigned", "--expected", "3",
               "--timeout", "4", "--json", env=env)
    rows = json.loads(out.stdout)
    assert [r["status"] for r in rows].count("ok") == 2 and [r["status"] for r in rows].count("no answer") == 1
    assert out.returncode == 1
