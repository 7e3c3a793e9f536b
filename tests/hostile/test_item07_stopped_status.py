"""Issue 14, item 7: ``stopped`` reaches ``on_connection_status``. It was queued for the callback thread,
which ended without reporting what was still queued when the stop came while it was busy (here: in a
slow ``on_message``), although the property already read ``stopped``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edge_agent.devbroker import DevBroker
from tests.helpers import wait_for
from tests.messaging.common import Recorder, make_agent


def test_stopped_reaches_on_connection_status(broker: DevBroker, tmp_path: Path) -> None:
    a = make_agent(broker, tmp_path, "sender-7").start()
    b = make_agent(broker, tmp_path, "slow-7")
    rec = Recorder(b)
    inside = threading.Event()

    @b.on_message
    def slow(_m: object) -> None:
        inside.set()
        time.sleep(1.0)  # the app is busy when the agent is asked to stop

    b.start()
    try:
        assert b.wait_online(10)
        wait_for(lambda: "online" in rec.connection, 5, msg="online reported")
        a.send("slow-7", {"n": 1})
        assert inside.wait(10)
        b.stop()
        assert b.connection_status.state == "stopped"
        with rec.lock:
            assert rec.connection[-1:] == ["stopped"], rec.connection
    finally:
        b.stop()
        a.stop()
