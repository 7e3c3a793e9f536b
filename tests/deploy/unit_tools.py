"""Shared by the deploy tests: the unit file, systemd-analyze on an installed tree, tool lookup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

UNIT = ROOT / "systemd" / "edge-agent.service"
ROLE = ROOT / "deploy" / "ansible" / "roles" / "edge_agent"
ANSIBLE_DIR = ROOT / "deploy" / "ansible"
MAX_EXPOSURE = 3.0  # the acceptance bound; the unit scores 1.5 with systemd 252


def need_tool(name: str, hint: str) -> str:
    """Path of a tool next to this Python (venv) or on PATH; skip outside CI, fail in CI."""
    here = Path(sys.executable).parent / name
    path = str(here) if here.exists() else shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: {hint}")
        pytest.skip(f"{name} not installed: {hint}")
    return path


def os_layer(root: Path) -> None:
    """What the OS provides for the unit: systemd's own units (targets) and /bin/kill (ExecReload)."""
    dst = root / "usr" / "lib" / "systemd" / "system"
    if not dst.exists():
        shutil.copytree("/usr/lib/systemd/system", dst, symlinks=True)
    (root / "bin").mkdir(parents=True, exist_ok=True)
    kill = shutil.which("kill") or "/bin/kill"
    if not (root / "bin" / "kill").exists():
        shutil.copy2(kill, root / "bin" / "kill")


def verify(root: Path, unit: str = "edge-agent.service") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit], capture_output=True, text=True,
                          timeout=60, cwd=root)


def exposure(unit_path: Path) -> tuple[float, str]:
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_path)],
                       capture_output=True, text=True, timeout=60, cwd=unit_path.parent)
    assert r.returncode == 0, r.stderr
    last = [ln for ln in r.stdout.splitlines() if "Overall exposure level" in ln][-1]
    return float(last.split(":")[1].split()[0]), r.stdout
