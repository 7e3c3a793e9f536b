"""The static unit: systemd-analyze verify on an installed tree, the security exposure, the contract."""

from __future__ import annotations

import configparser
import os
import shutil
from pathlib import Path

import pytest

from tests.deploy.unit_tools import MAX_EXPOSURE, ROLE, UNIT, exposure, os_layer, verify

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
                                reason="systemd-analyze not installed (apt-get install systemd)")


def installed_tree(root: Path, unit_text: str) -> Path:
    """The unit where the role puts it, the venv entry point it runs, and the OS layer."""
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/edge-agent.service").write_text(unit_text)
    exe = root / "opt/edge-agent/venv/bin/edge-agent"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    os_layer(root)
    return root


def test_verify_clean_on_installed_tree(tmp_path: Path) -> None:
    r = verify(installed_tree(tmp_path, UNIT.read_text()))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


@pytest.mark.parametrize(("typo", "expect"), [("WatchdogSec=", "WatchdogSek="), ("Type=notify", "Type=notifyy")])
def test_verify_catches_typos_by_stderr(tmp_path: Path, typo: str, expect: str) -> None:
    """systemd-analyze only warns (rc 0) on these; the empty-stderr rule is what catches them."""
    r = verify(installed_tree(tmp_path, UNIT.read_text().replace(typo, expect, 1)))
    assert r.stderr.strip(), "a typo must show up on stderr"


def test_verify_fails_without_the_venv(tmp_path: Path) -> None:
    root = installed_tree(tmp_path, UNIT.read_text())
    (root / "opt/edge-agent/venv/bin/edge-agent").unlink()
    assert verify(root).returncode != 0


def test_security_exposure_within_bound() -> None:
    score, report = exposure(UNIT)
    print(f"systemd-analyze security --offline=true: overall exposure {score}")
    assert score <= MAX_EXPOSURE, report


def unit_sections() -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=False, delimiters=("=",), comment_prefixes=("#", ";"))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    return cp


def test_unit_contract() -> None:
    u = unit_sections()
    unit, svc = u["Unit"], u["Service"]
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert svc["ExecStart"] == "/opt/edge-agent/venv/bin/edge-agent run --config /etc/edge-agent/config.toml"
    assert svc["Restart"] == "on-failure" and svc["RestartPreventExitStatus"] == "78"
    assert "StartLimitIntervalSec" in unit and "StartLimitBurst" in unit
    assert "network-online.target" in unit["After"] and "network-online.target" in unit["Wants"]
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["WatchdogSec"] and svc["User"] == "edge-agent"
    assert svc["SupplementaryGroups"].split() == ["gpio", "i2c", "spi"]
    assert svc["StateDirectory"] == "edge-agent" and svc["RuntimeDirectory"] == "edge-agent"
    # issue 14 item 15: status.json (backlog, pid, state) is not world-readable
    assert svc["StateDirectoryMode"] == "0750" and svc["RuntimeDirectoryMode"] == "0750"
    assert svc["UMask"] == "0027"
    assert svc["ProtectSystem"] == "strict" and svc["NoNewPrivileges"] == "yes"
    assert svc["DevicePolicy"] == "closed" and "PrivateDevices" not in svc
    text = UNIT.read_text()
    for dev in ("char-gpiochip rw", "char-i2c rw", "char-spi rw"):
        assert f"DeviceAllow={dev}" in text
    assert svc["CapabilityBoundingSet"] == "" and svc["RestrictAddressFamilies"]
    assert "SystemCallFilter=@system-service" in text


def test_role_ships_the_unit_verbatim() -> None:
    assert (ROLE / "files" / "edge-agent.service").read_bytes() == UNIT.read_bytes(), \
        "copy systemd/edge-agent.service to deploy/ansible/roles/edge_agent/files/ unchanged"
