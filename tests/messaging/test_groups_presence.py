"""Live groups (join/leave at run time, members, undelivered) and peers' presence, against a real Mosquitto.

Each test uses the API of issue 17 part 3 (``join``, ``leave``, ``members``, ``undelivered``, ``presence``,
``on_presence``), so each fails on a tree without it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent import Agent, codec
from edge_agent import config as config_mod
from edge_agent.devbroker import DevBroker
from edge_agent.host import Disposition
from edge_agent.messaging.presence import Presence
from edge_agent.messaging.service import MessagingService
from tests.fakes import FakeHost
from tests.messaging.common import Recorder, make_agent


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or pred}")
        time.sleep(0.05)


def started(*agents: Agent) -> None:
    for a in agents:
        a.start()
    for a in agents:
        assert a.wait_online(10)


def stop_all(*agents: Agent) -> None:
    for a in agents:
        a.stop()


def test_join_at_run_time_then_receive_a_group_message(broker: DevBroker, tmp_path: Path) -> None:
    a, b = make_agent(broker, tmp_path, "a"), make_agent(broker, tmp_path, "b")
    rb = Recorder(b)
    try:
        started(a, b)
        assert b.groups == [] and a.members("ops") == []
        assert b.join("ops") is True and b.join("ops") is False
        assert b.groups == ["ops"]
        # b's membership is published after its SUBSCRIBE on the same connection: once a sees it, b listens
        wait_for(lambda: a.members("ops") == ["b"], what="b in a.members('ops')")
        m = a.send_group("ops", {"text": "welcome"})
        wait_for(lambda: {"text": "welcome"} in rb.data(), what="b got the group message")
        assert a.wait_status(m, "delivered").receipts == {"b": "delivered"}
        assert (tmp_path / "b" / "groups.json").read_text() == '{"joined": ["ops"]}\n'  # kept for restarts
    finally:
        stop_all(a, b)


def test_leave_then_stop_receiving(broker: DevBroker, tmp_path: Path) -> None:
    a = make_agent(broker, tmp_path, "a")
    b, c = (make_agent(broker, tmp_path, d, groups=("ops",)) for d in ("b", "c"))
    rb, rc = Recorder(b), Recorder(c)
    try:
        started(a, b, c)
        wait_for(lambda: a.members("ops") == ["b", "c"], what="b and c in ops")
        a.send_group("ops", {"n": 1})
        wait_for(lambda: {"n": 1} in rb.data() and {"n": 1} in rc.data(), what="both got n=1")
        assert b.leave("ops") is True and b.leave("ops") is False and b.groups == []
        wait_for(lambda: a.members("ops") == ["c"], what="b gone from a.members('ops')")
        a.send_group("ops", {"n": 2})
        wait_for(lambda: {"n": 2} in rc.data(), what="c got n=2")
        time.sleep(1.0)  # what b would get arrives about as fast as c's
        assert rb.data() == [{"n": 1}]
    finally:
        stop_all(a, b, c)


def test_members_of_a_group_of_three_also_after_one_leaves(broker: DevBroker, tmp_path: Path) -> None:
    agents = [make_agent(broker, tmp_path, d, groups=("team",)) for d in ("a", "b", "c")]
    _, b, _ = agents
    try:
        started(*agents)
        for x in agents:
            wait_for(lambda x=x: x.members("team") == ["a", "b", "c"], what=f"{x.device_id} sees 3 members")
        b.leave("team")
        for x in agents:
            wait_for(lambda x=x: x.members("team") == ["a", "c"], what=f"{x.device_id} sees b gone")
    finally:
        stop_all(*agents)


def test_undelivered_lists_an_offline_member_until_it_comes_back(broker: DevBroker, tmp_path: Path) -> None:
    a = make_agent(broker, tmp_path, "a")
    b, c = (make_agent(broker, tmp_path, d, groups=("crew",)) for d in ("b", "c"))
    c2: Agent | None = None
    try:
        started(a, b, c)
        wait_for(lambda: a.members("crew") == ["b", "c"], what="b and c in crew")
        c.stop()  # its persistent session keeps its subscription: the message waits at the broker
        m = a.send_group("crew", {"text": "muster at 6"})
        assert a.wait_status(m, "delivered").receipts == {"b": "delivered"}
        assert a.undelivered(m) == ["c"] and a.undelivered(m.id) == ["c"]
        assert a.members("crew") == ["b", "c"]  # stopped is not left
        c2 = make_agent(broker, tmp_path, "c", groups=("crew",))
        rc = Recorder(c2)
        c2.start()
        wait_for(lambda: {"text": "muster at 6"} in rc.data(), what="c got it after its restart")
        wait_for(lambda: a.undelivered(m) == [], what="undelivered() empty")
        assert a.message(m.id).receipts == {"b": "delivered", "c": "delivered"}
    finally:
        stop_all(a, b, *(x for x in (c2,) if x is not None))


def test_presence_online_then_offline_with_on_presence(broker: DevBroker, tmp_path: Path) -> None:
    a, b = make_agent(broker, tmp_path, "a"), make_agent(broker, tmp_path, "b")
    seen: list[tuple[str, Presence]] = []
    lock = threading.Lock()
    threads: set[str] = set()

    @a.on_presence
    def changed(peer: str, pr: Presence) -> None:
        with lock:
            seen.append((peer, pr))
            threads.add(threading.current_thread().name)

    try:
        started(a, b)
        a.watch_presence("b")
        wait_for(lambda: a.presence("b").online is True, what="b online")
        pr = a.presence("b")
        assert pr.last_seen is not None and pr.since is not None and abs(pr.last_seen - time.time()) < 30
        b.stop()  # a clean stop publishes the retained offline status
        wait_for(lambda: a.presence("b").online is False, what="b offline")
        wait_for(lambda: [(p, x.online) for p, x in seen] == [("b", True), ("b", False)], what="two callbacks")
        assert a.presence("b").last_seen == pr.last_seen
        assert threads == {"messaging-callbacks"}  # the Agent's callback thread, not the network thread
    finally:
        stop_all(a, b)


def test_presence_of_a_group_member_follows_its_membership(broker: DevBroker, tmp_path: Path) -> None:
    a = make_agent(broker, tmp_path, "a", groups=("ops",))
    b = make_agent(broker, tmp_path, "b", groups=("ops",))
    try:
        started(a, b)
        wait_for(lambda: a.members("ops") == ["a", "b"], what="b in ops")
        wait_for(lambda: a.service.presence.get("b").online is True, what="b online without asking")
    finally:
        stop_all(a, b)


def test_presence_of_an_unknown_peer_is_unknown(broker: DevBroker, tmp_path: Path) -> None:
    a = make_agent(broker, tmp_path, "a")
    try:
        started(a)
        assert a.presence("nobody-here") == Presence(online=None, last_seen=None, since=None)
        time.sleep(1.0)  # had the broker a retained status for it, it would have arrived by now
        assert a.presence("nobody-here").online is None
    finally:
        stop_all(a)


def test_leave_drops_the_route_and_membership_documents_are_checked(tmp_path: Path) -> None:
    """On a FakeHost: after leave() the router has no handler for the group any more (the message is
    unmatched), and a membership whose ``dev`` is not its topic's is refused."""
    cfg = config_mod.parse({"device": {"id": "me", "groups": ["ops"]}, "mqtt": {"topic_prefix": "p"}}, "<test>")
    host = FakeHost(cfg, tmp_path / "me")
    svc = MessagingService(host)
    svc.start()
    try:
        env = codec.encode_envelope("ann", 1, time.time(), "msg", "hi", group="ops")
        assert host.deliver("p/group/ops/msg", env) is Disposition.ACK
        host.deliver("p/group/ops/members/bob", json.dumps({"dev": "bob", "joined": time.time()}).encode())
        host.deliver("p/group/ops/members/eve", json.dumps({"dev": "bob", "joined": time.time()}).encode())
        assert svc.groups.members("ops") == ["bob"]
        assert svc.groups.leave("ops") and svc.groups.joined == []
        assert host.deliver("p/group/ops/msg", env) is None  # no route: the handler is gone
        assert host.state["p/group/ops/members/me"] == b""  # membership cleared (retained)
        host.deliver("p/group/ops/members/bob", b"")
        assert svc.groups.members("ops") == []
    finally:
        svc.stop()


def test_groups_followed_before_start_are_subscribed_at_start(tmp_path: Path) -> None:
    cfg = config_mod.parse({"device": {"id": "me", "groups": ["ops"]}, "mqtt": {"topic_prefix": "p"}}, "<test>")
    host = FakeHost(cfg, tmp_path / "me")
    svc = MessagingService(host)
    svc.open()
    try:
        assert svc.groups.members("ops") == [] and svc.groups.members("lab") == []
        svc.send_group("field", "before start")
        svc.groups.join("night")
        assert host.subscriptions == []  # start() subscribes
        svc.start()
        subs = sorted(f for f, *_ in host.subscriptions if "/group/" in f)
        assert subs == ["p/group/field/members/+", "p/group/lab/members/+", "p/group/night/members/+",
                        "p/group/night/msg", "p/group/ops/members/+", "p/group/ops/msg"]
    finally:
        svc.stop()


_CHILD = """
import sys, threading
from edge_agent import Agent
a = Agent(device_id="k", host="127.0.0.1", port=int(sys.argv[1]), state_dir=sys.argv[2],
          settings={"mqtt": {"keepalive": 2, "reconnect_min": 0.1, "reconnect_max": 0.5}})
a.start()
assert a.wait_online(10)
print("ONLINE", flush=True)
threading.Event().wait()
"""


def test_presence_goes_offline_by_the_last_will_when_a_peer_is_killed(broker: DevBroker, tmp_path: Path) -> None:
    """SIGKILL: no clean stop publishes offline; the broker's last will does (at once here, the kernel closes
    the socket; a dead link or host takes 1.5 x keepalive, 3 s with this child's 2 s)."""
    a = make_agent(broker, tmp_path, "a")
    changes: list[bool | None] = []
    a.on_presence(lambda peer, pr: changes.append(pr.online))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(broker.port), str(tmp_path / "k")],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ONLINE"
        started(a)
        wait_for(lambda: a.presence("k").online is True, what="k online")
        os.kill(child.pid, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: a.presence("k").online is False, 15, what="k offline by its last will")
        print(f"offline {time.monotonic() - t0:.1f} s after SIGKILL")
        wait_for(lambda: changes == [True, False], what="on_presence online then offline")
    finally:
        child.kill()
        child.wait(10)
        a.stop()
