"""The Ansible role: lint (production profile), its conventions, and real runs into a throwaway prefix.

The prefix run is the same site.yml the fleet gets, against ``localhost`` with a local connection and
``edge_agent_root`` pointing at a temp dir (no user is created, no service managed there). It proves
the role installs from the wheelhouse offline, templates a config that ``edge-agent check-config``
accepts, is idempotent (second run ``changed=0``), supports ``--check --diff``, and refuses a config
the agent rejects while keeping the old one. The multi-host rollout on real systemd is test_fleet.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.unit_tools import ANSIBLE_DIR, ROLE, UNIT, need_tool, os_layer, verify

yaml = pytest.importorskip("yaml", reason="PyYAML comes with ansible-core: pip install ansible-core ansible-lint")


def test_ansible_lint_production_profile() -> None:
    lint = need_tool("ansible-lint", "pip install ansible-core ansible-lint")
    r = subprocess.run([lint, "--offline", "--profile", "production", "--nocolor"], cwd=ANSIBLE_DIR,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "ANSIBLE_LOCAL_TEMP": "/tmp/.ansible-lint-tmp"})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


def _commented_keys(path: Path) -> list[tuple[str, bool]]:
    """(top-level key, has a comment on the line above) for a defaults file."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):", line)
        if m:
            out.append((m.group(1), i > 0 and lines[i - 1].lstrip().startswith("#")))
    return out


def test_defaults_prefixed_commented_and_specified() -> None:
    keys = _commented_keys(ROLE / "defaults" / "main.yml")
    assert keys
    assert [k for k, _ in keys if not k.startswith("edge_agent_")] == []
    assert [k for k, commented in keys if not commented] == [], "every default needs a comment above it"
    spec = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert set(spec) == set(defaults), "argument_specs.yml and defaults/main.yml list different settings"


def _inventory(tmp: Path, **hostvars: object) -> Path:
    inv = {"edge": {"hosts": {"localhost": {"ansible_connection": "local",
                                            "ansible_python_interpreter": sys.executable, **hostvars}}}}
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


Run = subprocess.CompletedProcess[str]


def playbook(inv: Path, *args: str, extra: dict[str, object]) -> tuple[Run, dict[str, int]]:
    """``ansible-playbook site.yml`` with the project's ansible.cfg; returns the result and recap totals."""
    exe = need_tool("ansible-playbook", "pip install ansible-core")
    tmp = str(inv.parent / ".ansible-tmp")
    # no PYTHONPATH: a checkout on it (with its edge_agent.egg-info) made the role's pip in the new venv
    # think edge-agent was installed already, so the venv got the dependencies but not the agent
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_LOCAL_TEMP": tmp, "ANSIBLE_REMOTE_TEMP": tmp}
    extra_file = inv.parent / "extra.yml"
    extra_file.write_text(yaml.safe_dump(extra))
    r = subprocess.run([exe, "-i", str(inv), "site.yml", "-e", f"@{extra_file}", *args], cwd=ANSIBLE_DIR,
                       capture_output=True, text=True, timeout=600, env=env)
    return r, recap(r.stdout)


def recap(out: str) -> dict[str, int]:
    """Totals over every host of the PLAY RECAP (ok, changed, failed, unreachable...)."""
    totals: dict[str, int] = {}
    for line in out.split("PLAY RECAP")[-1].splitlines():
        for k, v in re.findall(r"(\w+)=(\d+)", line):
            totals[k] = totals.get(k, 0) + int(v)
    return totals


@pytest.mark.timeout(600)
def test_localhost_prefix_install_idempotent_check_diff(tmp_path: Path, wheelhouse: Path) -> None:
    prefix = tmp_path / "root"
    inv = _inventory(tmp_path)
    extra = {"edge_agent_root": str(prefix), "edge_agent_manage_packages": False, "ansible_become": False,
             "edge_agent_wheelhouse": str(wheelhouse), "edge_agent_mqtt_host": "127.0.0.1",
             "edge_agent_device_id": "lab-1",
             "edge_agent_sensors": [{"name": "t1", "type": "simulated", "interval": 2.0}]}
    times = {}

    t0 = time.monotonic()
    r, totals = playbook(inv, extra=extra)
    times["run 1"] = time.monotonic() - t0
    assert r.returncode == 0 and totals["changed"] > 0, r.stdout[-5000:]
    exe = prefix / "opt/edge-agent/venv/bin/edge-agent"
    cfg = prefix / "etc/edge-agent/config.toml"
    assert (prefix / "etc/systemd/system/edge-agent.service").read_bytes() == UNIT.read_bytes()
    out = subprocess.run([str(exe), "check-config", "--json", "--config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0 and '"device": "lab-1"' in out.stdout, out.stdout + out.stderr
    assert oct(cfg.stat().st_mode & 0o777) == "0o640"

    # the unit as installed by the role: verify on that tree (plus what the OS provides)
    os_layer(prefix)
    v = verify(prefix)
    assert (v.returncode, v.stderr) == (0, ""), v.stderr

    t0 = time.monotonic()
    r, totals = playbook(inv, extra=extra)
    times["run 2"] = time.monotonic() - t0
    assert r.returncode == 0 and totals["changed"] == 0, r.stdout[-5000:]

    t0 = time.monotonic()
    r, totals = playbook(inv, "--check", "--diff", extra={**extra, "edge_agent_log_level": "debug"})
    times["check --diff of a change"] = time.monotonic() - t0
    assert r.returncode == 0 and totals["changed"] == 1, r.stdout[-5000:]
    assert '-level = "info"' in r.stdout and '+level = "debug"' in r.stdout, "the diff shows the config change"
    assert 'level = "info"' in cfg.read_text(), "--check changed the file"

    # a value only the agent itself rejects: check-config refuses it, the old file stays
    before = cfg.read_text()
    r, totals = playbook(inv, "--start-at-task", "edge_agent : Configure | config.toml (checked with edge-agent "
                         "check-config)", extra={**extra, "edge_agent_status_interval": -5})
    assert r.returncode != 0 and totals["failed"] == 1
    assert "agent.status_interval" in r.stdout, r.stdout[-4000:]
    assert cfg.read_text() == before

    # broker credentials from Ansible Vault: decrypted into config.toml (0640), never shown by --diff
    secret = "S3cret-" + os.urandom(4).hex()
    pw = tmp_path / "vault-pass"
    pw.write_text("test-vault-password\n")
    enc = subprocess.run([need_tool("ansible-vault", "pip install ansible-core"), "encrypt_string",
                          "--vault-password-file", str(pw), secret, "--name", "vault_edge_agent_mqtt_password"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert enc.returncode == 0 and "$ANSIBLE_VAULT" in enc.stdout, enc.stderr
    (tmp_path / "vault.yml").write_text(enc.stdout)
    r, totals = playbook(inv, "--diff", "--vault-password-file", str(pw), "-e", f"@{tmp_path / 'vault.yml'}",
                         "--start-at-task", "edge_agent : Configure | config.toml (checked with edge-agent "
                         "check-config)",
                         extra={**extra, "edge_agent_mqtt_username": "lab-1",
                                "edge_agent_mqtt_password": "{{ vault_edge_agent_mqtt_password }}"})
    assert r.returncode == 0 and totals["changed"] == 1, r.stdout[-4000:]
    assert f'password = "{secret}"' in cfg.read_text()
    assert secret not in r.stdout + r.stderr, "the vaulted password leaked into the output"
    print("ansible prefix runs: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))


def test_preflight_rejects_missing_broker(tmp_path: Path) -> None:
    inv = _inventory(tmp_path)
    r, totals = playbook(inv, extra={"edge_agent_root": str(tmp_path / "root"), "ansible_become": False,
                                     "edge_agent_manage_packages": False, "edge_agent_device_id": "bad/id",
                                     "edge_agent_mqtt_host": "x"})
    assert r.returncode != 0 and totals.get("failed") == 1
    assert "edge_agent_device_id" in r.stdout and "bad/id" in r.stdout
    assert not (tmp_path / "root").exists()
