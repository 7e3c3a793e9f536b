"""Issue 14 item 12: a compromised device could answer for another one. Under the documented ACL any
device reads the group commands (with their Response Topic) and could write ``edge/_ctl/+/reply``;
``ctl send`` trusted the body's ``device`` and took the first reply, so it showed ``dev-1 ok`` when dev-1
had answered ``error``, and a row for a device that does not exist.

Now an agent replies on ``<reply topic>/<device>``, which the ACL (``pattern write edge/_ctl/+/reply/%u``)
lets only that device write, and the Sender takes a reply only when its topic, body, id and correlation
data agree; the rest is counted as forged."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent import codec
from edge_agent import config as config_mod
from edge_agent.app import App
from edge_agent.cli.sender import Sender
from edge_agent.commands.signing import Signer
from edge_agent.devbroker import DevBroker
from edge_agent.errors import NotConnected
from tests.commands.conftest import agent_config, key_snippet
from tests.commands.test_tls_acl import Client, _tls, tls_broker  # noqa: F401  (fixture)
from tests.helpers import wait_for


class Forger:
    """A compromised device ``dev-2`` (raw paho): reads every command and answers at once, for others."""

    def __init__(self, port: int) -> None:
        self.seen = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"forger-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe([("edge/+/cmd/+", 1), ("edge/group/+/cmd/+", 1)])
        self.c.loop_start()

    def _on(self, client: Any, userdata: Any, m: Any) -> None:
        rt = getattr(m.properties, "ResponseTopic", None)
        corr = getattr(m.properties, "CorrelationData", None)
        if not rt:
            return
        req = codec.decode(m.payload)
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = corr
        ok = {"id": req.get("id"), "name": m.topic.rsplit("/", 1)[1], "status": "ok", "result": "forged"}
        # the old shared reply topic, and the compromised device's own reply topic with others' names
        client.publish(rt, codec.encode({**ok, "device": "dev-1"}), qos=1, properties=props)
        client.publish(f"{rt}/dev-2", codec.encode({**ok, "device": "dev-1"}), qos=1, properties=props)
        client.publish(f"{rt}/dev-2", codec.encode({**ok, "device": "dev-3"}), qos=1, properties=props)
        self.seen.set()

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_sender_takes_only_replies_bound_to_their_device(make_app, broker: DevBroker, signer: Signer,
                                                         tmp_path: Path) -> None:
    make_app(keys=key_snippet(signer))
    cfg = config_mod.load(agent_config(tmp_path / "op.toml", broker.port, tmp_path / "op-state"))
    forger = Forger(broker.port)
    sender = Sender(cfg, signer)
    try:
        assert sender.connect(10)
        sender.send("group", "lab", "config.get", {"key": "no.such.key"})
        sender.wait(["dev-1"], 1, 10)
        assert forger.seen.wait(5)
        time.sleep(0.5)  # every forgery has arrived
        rows = {r.device: r for r in sender.rows(["dev-1"])}
    finally:
        sender.close()
        forger.stop()
    assert set(rows) == {"dev-1"}, rows  # no row for dev-3, which does not exist
    assert rows["dev-1"].status == "error" and rows["dev-1"].error["code"] == "no_such_key", rows
    assert len(sender.forged) == 2 and all("body names device" in f for f in sender.forged), sender.forged


def _forge(c: Client, op: Client, topic: str, payload: bytes, n: int) -> None:
    """Publish a forgery at QoS 0 from ``c`` and return once the broker has judged it.

    Mosquitto 2.0 closes an MQTT 5 connection that publishes where the ACL denies it, even at QoS 0
    (its log says "Bad socket read/write ... Unknown error"), and the transport reconnects. So the
    forgery goes out on a connection that is online, followed by an allowed marker: either the marker
    arrives (the broker dropped the forgery quietly) or the connection closes (it refused it); either
    way the broker has seen the forgery before the test looks at what was delivered.
    """
    marker = codec.encode({"marker": n})
    for _ in range(3):
        assert c.t.wait_online(10), c.states
        closed = sum(s.startswith("offline") for s in c.states)
        try:
            c.t.publish(topic, payload, qos=0)
        except NotConnected:
            continue  # the previous refusal's close had not been seen yet: again, online
        try:
            c.t.publish("edge/_ctl/op/reply/dev-b", marker, qos=0)
        except NotConnected:
            pass
        wait_for(lambda n=closed: sum(s.startswith("offline") for s in c.states) > n  # type: ignore[misc]
                 or any(m.payload == marker for m in list(op.got)), 10, msg=f"the broker judged {topic}")
        return
    raise AssertionError(f"could not publish {topic}: {c.states}")


def test_acl_binds_the_reply_topic_to_the_device(tls_broker, tmp_path: Path) -> None:  # noqa: F811
    """With the documented ACL: dev-a's real reply passes, dev-b cannot write dev-a's reply topic."""
    _broker, port, pki = tls_broker
    tls = _tls(pki, "dev-a")
    path = agent_config(tmp_path / "a.toml", port, tmp_path / "state-a", device="dev-a", sensors=False,
                        extra=f'[mqtt.tls]\nca = "{tls.ca}"\ncert = "{tls.cert}"\nkey = "{tls.key}"\n')
    app = App(config_mod.load(path))
    app.start()
    op = Client(port, _tls(pki, "operator"), "operator-1")
    b = Client(port, _tls(pki, "dev-b"), "edge-agent-dev-b")
    try:
        assert app.transport.wait_online(10), app.transport.status
        op.t.subscribe("edge/_ctl/op/reply/+")
        op.t.subscribe("edge/_ctl/op/reply")
        op.start()
        b.start()
        time.sleep(0.3)
        op.t.publish("edge/dev-a/cmd/ping", codec.encode({}), props={"response_topic": "edge/_ctl/op/reply",
                                                                     "correlation_data": b"1"})
        wait_for(lambda: "edge/_ctl/op/reply/dev-a" in op.topics(), 10, msg="dev-a's reply")
        b.t.publish("edge/_ctl/op/reply/dev-b", codec.encode({"device": "dev-a", "status": "ok"}), qos=0)
        wait_for(lambda: "edge/_ctl/op/reply/dev-b" in op.topics(), 10, msg="dev-b's own reply topic")
        _forge(b, op, "edge/_ctl/op/reply/dev-a", codec.encode({"device": "dev-a", "status": "ok"}), 1)
        _forge(b, op, "edge/_ctl/op/reply", codec.encode({"device": "dev-a", "status": "ok"}), 2)
        time.sleep(1.0)  # what the broker would deliver has arrived by now
        forged = codec.encode({"device": "dev-a", "status": "ok"})
        on_a = [m.payload for m in list(op.got) if m.topic == "edge/_ctl/op/reply/dev-a"]
        # only the real reply (possibly twice: at least once across a reconnect), never dev-b's forgery
        assert on_a and forged not in on_a, op.topics()
        assert "edge/_ctl/op/reply" not in op.topics()  # the old shared topic is no longer writable
    finally:
        b.stop()
        op.stop()
        app.stop()
