"""Crash (SIGKILL) of either side: no message and no status is lost; the app sees each message once
(at most one repeat: the message whose callback was running when the process died)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from edge_agent.devbroker import DevBroker
from tests.helpers import wait_for
from tests.messaging.common import Recorder, make_agent

APP = Path(__file__).with_name("crash_app.py")


class Child:
    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen([sys.executable, str(APP), *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)
        self.reader.join(10)  # every line the child printed before it died


def test_sender_killed_after_queueing_loses_nothing(broker: DevBroker, tmp_path: Path) -> None:
    b = make_agent(broker, tmp_path, "456")
    with b:
        assert b.wait_online(10)
    a_state = tmp_path / "123"
    child = Child("send", "--dev", "123", "--port", str(broker.port), "--state", str(a_state), "--to", "456",
                  "--count", "25")
    try:
        wait_for(lambda: any(ln.startswith("QUEUED") for ln in child.lines), 30, msg=f"queued: {child.lines}")
    finally:
        child.kill()
    ids = next(ln for ln in child.lines if ln.startswith("QUEUED")).split()[1:]
    a = make_agent(broker, tmp_path, "123")
    with a:
        before = {m.id: m.status for m in a.history(peer="456")}
        assert set(before) == set(ids) and set(before.values()) <= {"queued", "sent"}, before
        b = make_agent(broker, tmp_path, "456")
        rb = Recorder(b, read=True)
        with b:
            wait_for(lambda: len(rb.messages) >= 25, 20, msg="b got the messages")
            for mid in ids:
                a.wait_status(mid, "read", timeout=20)
            assert [d["n"] for d in rb.data()] == list(range(25))


def test_recipient_killed_mid_stream_loses_nothing(broker: DevBroker, tmp_path: Path) -> None:
    b_state = tmp_path / "456"
    child = Child("recv", "--dev", "456", "--port", str(broker.port), "--state", str(b_state))
    a = make_agent(broker, tmp_path, "123")
    with a:
        try:
            wait_for(lambda: "READY" in child.lines, 30, msg=f"receiver ready: {child.lines}")
            sent = [a.send("456", {"n": i}) for i in range(150)]
            wait_for(lambda: sum(ln.startswith("GOT") for ln in child.lines) >= 30, 30, msg="some received")
        finally:
            child.kill()
        first = [ln for ln in child.lines if ln.startswith("GOT")]
        assert len(first) < 150, "the receiver finished before it was killed; nothing was tested"
        child2 = Child("recv", "--dev", "456", "--port", str(broker.port), "--state", str(b_state))
        try:
            for m in sent:
                a.wait_status(m, "read", timeout=40)
        finally:
            child2.kill()
        second = [ln for ln in child2.lines if ln.startswith("GOT")]
    seen = [int(ln.split()[2]) for ln in first + second]
    assert sorted(set(seen)) == list(range(150))
    assert len(seen) - len(set(seen)) <= 1, f"repeats: {len(seen) - len(set(seen))}"
    # each run saw its messages in order
    for name, run in (("first", first), ("second", second)):
        ns = [int(ln.split()[2]) for ln in run]
        assert ns == sorted(ns), f"{name} run out of order: {ns}"
