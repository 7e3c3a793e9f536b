"""The ``acl_file`` ACL of docs/commands.md (read from the docs) with a ``password_file``, on a real
Mosquitto: messaging works through it (a direct message read, a group message delivered), and a
device outside the group or not the recipient gets nothing and cannot publish as another device."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from edge_agent import Agent
from edge_agent.devbroker import DevBroker, free_port
from tests.commands.broker_acl import docs_acl
from tests.commands.dynsec_broker import NOT_AUTHORIZED, RawClient, granted
from tests.helpers import wait_for
from tests.messaging.common import FAST, Recorder

USERS = {"dev-1": "pw-1", "dev-2": "pw-2", "dev-3": "pw-3", "operator": "pw-op"}


def _broker(tmp_path: Path) -> DevBroker:
    pwfile = tmp_path / "passwd"
    pwfile.write_text("")
    for user, pw in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, pw], check=True, capture_output=True)
    os.chmod(pwfile, 0o644)
    acl = tmp_path / "acl"
    acl.write_text(docs_acl())
    port = free_port()
    conf = f"allow_anonymous false\nacl_file {acl}\npassword_file {pwfile}\nlistener {port} 127.0.0.1\n"
    b = DevBroker(workdir=tmp_path / "broker", extra_conf=conf).start()
    b.port = port  # the listener with the ACL (DevBroker's own listener is also there, same rules)
    return b


def test_docs_acl_lets_messaging_work_and_nothing_more(tmp_path: Path) -> None:
    assert "pattern read edge/%u/inbox" in docs_acl() and "pattern read edge/group/+/cmd/+" not in docs_acl()
    b = _broker(tmp_path)
    apps = [Agent(device_id=d, host="127.0.0.1", port=b.port, state_dir=tmp_path / d, groups=["lab"],
                  username=d, password=USERS[d], settings={"mqtt": FAST, "agent": {"stop_timeout": 3.0}})
            for d in ("dev-1", "dev-2")]
    a1, a2 = apps
    r2 = Recorder(a2, read=True)
    spy = RawClient(b.port, "dev-3", USERS["dev-3"], "edge-agent-dev-3")
    op = RawClient(b.port, "operator", USERS["operator"], "op-1")
    try:
        assert spy.connect() == 0 and op.connect() == 0
        # Mosquitto 2.0.11's acl_file grants these subscriptions (SUBACK 1) and filters on delivery:
        # nothing may arrive through them (docs/commands.md says so)
        for topic in ("edge/dev-2/inbox", "edge/dev-1/receipts", "edge/group/lab/msg", "edge/group/lab/cmd/+"):
            assert granted(spy.subscribe(topic))
        assert granted(op.subscribe("edge/#"))
        a2.start()
        assert a2.wait_online(10)
        a1.start()
        assert a1.wait_online(10)
        time.sleep(0.5)  # the agents' subscriptions are acknowledged
        d = a1.send("dev-2", {"text": "direct"})
        g = a1.send_group("lab", {"text": "to lab"})
        assert a1.wait_status(d, "read", timeout=20).status == "read"
        assert a1.wait_status(g, "delivered", "read", timeout=20).status in ("delivered", "read")
        wait_for(lambda: {"text": "direct"} in r2.data() and {"text": "to lab"} in r2.data(), 10)
        assert granted(op.publish("edge/group/lab/cmd/ping", b"{}"))
        wait_for(lambda: "edge/dev-2/inbox" in op.got and "edge/dev-1/receipts" in op.got, 5)
        time.sleep(0.5)
        assert spy.got == []
        assert spy.publish("edge/dev-2/telemetry/s1") == NOT_AUTHORIZED
    finally:
        for a in apps:
            a.stop()
        spy.close()
        op.close()
        b.close()
