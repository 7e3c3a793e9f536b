"""``edge-agent roster ...`` end to end: operator key, device keys, add/remove/show, publish retained on a
real mosquitto, and running agents taking (and enforcing) the published roster."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_agent import Agent
from edge_agent.cli import main
from edge_agent.commands.signing import Signer
from edge_agent.devbroker import DevBroker
from tests.helpers import wait_for
from tests.messaging.common import Recorder


def config(tmp_path: Path, dev: str, port: int, op_pub: str) -> Path:
    p = tmp_path / f"{dev}.toml"
    p.write_text(f'[device]\nid = "{dev}"\n[storage]\ndir = "{tmp_path / dev}"\n'
                 f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect_min = 0.1\nreconnect_max = 0.5\n'
                 f'[[commands.keys]]\nname = "op"\npublic_key = "{op_pub}"\nallow = ["roster.*"]\n')
    return p


def test_roster_cli_add_show_publish_and_agents_enforce_it(broker: DevBroker, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "operator.key"
    assert main(["keys", "generate", "--out", str(key), "--name", "op"]) == 0
    op = Signer.load(key)
    cfgs = {d: config(tmp_path, d, broker.port, op.public_b64()) for d in ("alice", "bob")}
    capsys.readouterr()
    pubs = {}
    for d, c in cfgs.items():
        assert main(["roster", "device-key", "-c", str(c)]) == 0
        pubs[d] = capsys.readouterr().out.strip()
    assert main(["roster", "device-key", "-c", str(cfgs["alice"])]) == 0  # the same key: made once
    assert capsys.readouterr().out.strip() == pubs["alice"]
    roster = tmp_path / "roster.json"
    base = ["--file", str(roster), "--key", str(key)]
    for d in ("alice", "bob"):
        assert main(["roster", "add", d, "--public-key", pubs[d], "--group", "ops", *base]) == 0
    assert main(["roster", "add", "bad/id", "--public-key", pubs["bob"], *base]) == 64
    assert main(["roster", "add", "carol", "--public-key", "not-a-key", *base]) == 64
    capsys.readouterr()
    assert main(["roster", "show", "--file", str(roster), "-c", str(cfgs["bob"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == 2 and doc["devices"]["alice"] == {"key": pubs["alice"], "groups": ["ops"]}
    assert main(["roster", "publish", "--file", str(roster), "-c", str(cfgs["bob"])]) == 0

    a, b = Agent(cfgs["alice"]), Agent(cfgs["bob"])
    rb = Recorder(b)
    with a, b:
        wait_for(lambda: a.service.roster_version == 2 and b.service.roster_version == 2, 10,
                 msg="both take the retained roster")
        time.sleep(0.3)
        a.wait_status(a.send("bob", "signed hello"), "delivered", timeout=15)
        assert main(["roster", "remove", "alice", *base]) == 0
        assert main(["roster", "publish", "--file", str(roster), "-c", str(cfgs["bob"])]) == 0
        wait_for(lambda: b.service.roster_version == 3, 10, msg="bob takes the revocation")
        a.wait_status(a.send("bob", "after revocation"), "sent", timeout=15)
        wait_for(lambda: b.service.refused().get("unknown sender", 0) == 1, 10, msg=f"{b.service.refused()}")
        assert rb.data() == ["signed hello"]
    # a roster file signed by another operator is refused by publish (it would be refused by every device)
    other = tmp_path / "other.key"
    assert main(["keys", "generate", "--out", str(other)]) == 0
    forged = tmp_path / "forged.json"
    assert main(["roster", "add", "mallory", "--public-key", pubs["bob"], "--file", str(forged),
                 "--key", str(other)]) == 0
    capsys.readouterr()
    assert main(["roster", "publish", "--file", str(forged), "-c", str(cfgs["bob"])]) == 1
    assert "not a trusted operator key" in capsys.readouterr().err
