"""The Ansible role's optional broker-account tasks (roles/edge_agent/tasks/dynsec.yml) against a real
Mosquitto with the dynamic security plugin: two hosts get accounts and tokens through `edge-agent users
add`, the tokens become their mqtt.username/password, and a second run changes nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands.dynsec_broker import DynsecBroker, RawClient, dynsec_broker
from tests.helpers import ROOT

__all__ = ["dynsec_broker"]

PLAYBOOK = """\
- name: Broker accounts only
  hosts: edge
  gather_facts: false
  tasks:
    - name: The role's dynsec tasks
      ansible.builtin.include_role:
        name: edge_agent
        tasks_from: dynsec.yml
    - name: What config.toml would get
      ansible.builtin.copy:
        content: "{{ {'user': edge_agent_mqtt_username, 'password': edge_agent_mqtt_password} | to_json }}"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
        mode: "0600"
      delegate_to: localhost
"""


def _play(tmp_path: Path, b: DynsecBroker) -> subprocess.CompletedProcess[str]:
    playbook = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or shutil.which(
        "ansible-playbook")
    if playbook is None:
        pytest.skip("ansible-playbook is not installed: pip install ansible-core")
    cli = tmp_path / "edge-agent"
    cli.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m edge_agent "$@"\n')
    cli.chmod(0o755)
    hosts = {h: {"ansible_connection": "local", "edge_agent_device_groups": groups}
             for h, groups in (("dev-1", ["lab"]), ("dev-2", ["lab", "field"]))}
    inv = {"all": {"hosts": {"localhost": {"ansible_connection": "local",
                                           "ansible_python_interpreter": sys.executable}}},
           "edge": {"hosts": hosts, "vars": {
               "ansible_python_interpreter": sys.executable, "out_dir": str(tmp_path / "out"),
               "edge_agent_mqtt_host": "127.0.0.1", "edge_agent_mqtt_port": b.port,
               "edge_agent_dynsec_provision": True, "edge_agent_dynsec_cli": str(cli),
               "edge_agent_dynsec_admin_password_file": str(b.admin_password_file),
               "edge_agent_dynsec_token_dir": str(tmp_path / "tokens")}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inv))
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "deploy" / "ansible" / "roles"),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible-tmp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg")}
    return subprocess.run([playbook, "-i", str(tmp_path / "inventory.json"), str(tmp_path / "play.yml")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def _changed(out: str, host: str) -> int:
    m = re.search(rf"^{re.escape(host)}\s*:.*changed=(\d+)", out, re.MULTILINE)
    assert m, out[-3000:]
    return int(m.group(1))


def test_role_provisions_accounts_and_uses_their_tokens(dynsec_broker: DynsecBroker, tmp_path: Path,
                                                         capsys) -> None:
    b = dynsec_broker
    r = _play(tmp_path, b)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert _changed(r.stdout, "dev-1") >= 1
    for dev in ("dev-1", "dev-2"):
        token_file = tmp_path / "tokens" / f"{dev}.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        got = json.loads((tmp_path / "out" / f"{dev}.json").read_text())
        assert got == {"user": dev, "password": token_file.read_text().strip()}
        c = RawClient(b.port, dev, got["password"], f"edge-agent-{dev}")
        assert c.connect() == 0
        c.close()
        assert got["password"] not in r.stdout  # no_log
    assert stat.S_IMODE((tmp_path / "tokens").stat().st_mode) == 0o700
    capsys.readouterr()
    assert b.users("list", "--json") == 0
    listed = {u["user"]: u["groups"] for u in json.loads(capsys.readouterr().out)}
    assert listed == {"dev-1": ["lab"], "dev-2": ["field", "lab"]}
    again = _play(tmp_path, b)
    assert again.returncode == 0, again.stdout[-4000:]
    assert _changed(again.stdout, "dev-1") == 0 and _changed(again.stdout, "dev-2") == 0, again.stdout[-3000:]
    # an account whose token file was lost is reported, not silently re-keyed
    (tmp_path / "tokens" / "dev-2.token").unlink()
    lost = _play(tmp_path, b)
    assert lost.returncode != 0 and "users passwd dev-2" in lost.stdout, lost.stdout[-3000:]
