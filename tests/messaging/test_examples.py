"""The two examples, run end to end as real processes against a real broker."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_agent.devbroker import DevBroker
from tests.helpers import ROOT, wait_for
from tests.messaging.common import Recorder, make_agent


class Proc:
    """A child process whose stdout lines are collected as they come."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.p = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, cwd=cwd, bufsize=1)
        self.lines: list[str] = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def close(self, timeout: float = 20.0) -> int:
        if self.p.stdin is not None and not self.p.stdin.closed:
            self.p.stdin.close()
        try:
            return self.p.wait(timeout)
        finally:
            if self.p.poll() is None:
                self.p.kill()
            self.t.join(2)

    def output(self) -> str:
        return "\n".join(self.lines)


def test_chat_example_two_terminals(broker: DevBroker, tmp_path: Path) -> None:
    common = ["--port", str(broker.port), "--linger", "5"]
    a = Proc([str(ROOT / "examples" / "chat.py"), "--me", "123", "--peer", "456", "--state-dir",
              str(tmp_path / "a"), *common], tmp_path)
    b = Proc([str(ROOT / "examples" / "chat.py"), "--me", "456", "--peer", "123", "--state-dir",
              str(tmp_path / "b"), *common], tmp_path)
    try:
        wait_for(lambda: a.has("* online") and b.has("* online"), 20, msg="both chats online")
        time.sleep(0.5)  # first connections: let the new sessions' SUBACKs land
        a.send("hello from 123")
        wait_for(lambda: b.has("123: hello from 123"), 15, msg=f"b got it:\n{b.output()}")
        wait_for(lambda: a.has("[123:1] read"), 15, msg=f"a saw read:\n{a.output()}")
        statuses = [ln.split("] ", 1)[1] for ln in a.lines if ln.strip().startswith("[123:1] ")
                    and not ln.strip().endswith("hello from 123")]
        assert statuses == ["queued", "sent", "delivered", "read"], a.output()
        b.send("hi 123, loud and clear")
        wait_for(lambda: a.has("456: hi 123, loud and clear"), 15, msg=f"a got the reply:\n{a.output()}")
        wait_for(lambda: b.has("read"), 15)
        a.send("/history")
        wait_for(lambda: a.has("me: hello from 123 (read)"), 10, msg=f"history:\n{a.output()}")
    finally:
        rc_a, rc_b = a.close(), b.close()
    assert rc_a == 0 and rc_b == 0, a.output() + b.output()


def test_fleet_monitor_splits_the_load_and_alerts_the_group(broker: DevBroker, tmp_path: Path) -> None:
    ops = make_agent(broker, tmp_path, "ops-phone", groups=("ops",))
    rec = Recorder(ops, read=True)
    fleet = [make_agent(broker, tmp_path, f"pi-{i}") for i in (1, 2)]
    mons = [Proc([str(ROOT / "examples" / "fleet_monitor.py"), "--port", str(broker.port), "--id", f"mon-{i}",
                  "--share", "monitors", "--alert-group", "ops", "--cooldown", "0",
                  "--state-dir", str(tmp_path / f"mon-{i}")], tmp_path) for i in (1, 2)]
    try:
        with ops:
            assert ops.wait_online(10)
            wait_for(lambda: all(m.has("watching $share/monitors/edge/+/inference/#") for m in mons), 20,
                     msg="monitors subscribed")
            for a in fleet:
                a.start()
            n = 20
            for _ in range(n):
                for a in fleet:
                    a.publish("inference/m1", {"model": "m1", "score": 0.1, "threshold": 0.5, "alarm": False},
                              cls="inference")
            fleet[1].publish("inference/m1", {"model": "m1", "score": 0.93, "threshold": 0.5, "alarm": True},
                             cls="inference")
            fleet[0].publish("events/m1_anomaly", {"model": "m1", "score": 0.8, "threshold": 0.5}, cls="alarm")
            total = 2 * n + 1

            def results() -> list[int]:
                return [sum(1 for ln in list(m.lines) if ln.startswith("result ")) for m in mons]

            wait_for(lambda: sum(results()) >= total, 30, msg=f"results {results()}")
            wait_for(lambda: len(rec.messages) >= 2, 20, msg="alerts reached the ops group")
            texts = sorted(m.data["text"] for m in rec.messages)
            assert any("pi-2" in t and "0.93" in t for t in texts), texts
            assert any("pi-1" in t and "0.8" in t for t in texts), texts
            assert all(m.group == "ops" for m in rec.messages)
            for a in fleet:
                a.stop()
    finally:
        for m in mons:
            if m.p.poll() is None:
                m.p.send_signal(signal.SIGTERM)
        codes = [m.close() for m in mons]
    split = results()
    assert sum(split) == total, split  # each result handled by exactly one copy
    assert all(c > 0 for c in split), f"shared subscription did not split the load: {split}"
    assert codes == [0, 0], "\n".join(m.output() for m in mons)
