"""The sd_notify contract of ``edge-agent run``, checked against a real notify socket.

The test plays systemd's part: it binds an AF_UNIX datagram socket with SO_PASSCRED (so every message
carries the sender's pid, like systemd's NotifyAccess=main check), sets ``NOTIFY_SOCKET`` and a short
``WATCHDOG_USEC``, and runs the real entry point (``python -m edge_agent run``) as a child process.
"""

from __future__ import annotations

import itertools
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.devbroker import DevBroker, free_port
from tests.helpers import ROOT, AgentProcess, wait_for, write_config

WATCHDOG_USEC = 4_000_000  # systemd's WatchdogSec=4: pings expected every 2 s, the agent sends every 1 s
SENSORS = """
[[sensors]]
name = "t1"
type = "simulated"
interval = 0.2
"""


class NotifySocket:
    """What systemd's manager sees: (sender pid, message, monotonic time) for every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[int, str, float]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", cdata[:12])[0]
            with self.lock:
                self.messages.append((pid, data.decode(), time.monotonic()))

    def lines(self, key: str, since: float = 0.0) -> list[tuple[int, str, float]]:
        """Every ``KEY=value`` line sent after ``since`` as (pid, value, time)."""
        out = []
        with self.lock:
            for pid, msg, t in self.messages:
                if t < since:
                    continue
                for line in msg.splitlines():
                    k, _, v = line.partition("=")
                    if k == key:
                        out.append((pid, v, t))
        return out

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path):
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def agent(tmp_path: Path, notify: NotifySocket, port: int, extra_env: dict[str, str] | None = None,
          edit: Callable[[str], str] | None = None, usec: int = WATCHDOG_USEC,
          launcher: str = "") -> AgentProcess:
    """The real entry point; ``launcher``: python -c code that ends in cli.main (to register test plugins)."""
    cfg = write_config(tmp_path / "agent.toml", port, tmp_path / "state", device="wd-1", sensors=SENSORS,
                       extra="[logging]\nlevel = \"info\"")
    if edit is not None:
        cfg.write_text(edit(cfg.read_text()))
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(usec), **(extra_env or {})}
    env.pop("WATCHDOG_PID", None)
    p = AgentProcess(cfg, extra_env=env)
    if not launcher:
        return p.start()
    with open(p.log, "ab") as out:
        p.proc = subprocess.Popen([sys.executable, "-c", launcher, "run", "--config", str(cfg)], stdout=out,
                                  stderr=out, env=p.env, cwd=ROOT)
    return p


def pings_stop(notify: NotifySocket, since: float, quiet: float = 3.5, timeout: float = 15.0) -> bool:
    """True once no WATCHDOG=1 has arrived for ``quiet`` s (pings come every 1 s while healthy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pings = notify.lines("WATCHDOG", since)
        if pings and time.monotonic() - pings[-1][2] > quiet:
            return True
        time.sleep(0.2)
    return False


def stop(p: AgentProcess) -> int:
    if p.alive():
        try:
            return p.terminate(30)
        except Exception:
            p.kill()
    assert p.proc is not None
    return p.proc.returncode


def test_ready_from_main_pid_then_watchdog_pings(tmp_path: Path, notify: NotifySocket, broker: DevBroker) -> None:
    p = agent(tmp_path, notify, broker.port)
    assert p.proc is not None
    try:
        wait_for(lambda: notify.lines("READY"), 30, 0.05, "READY=1")
        pid, val, t_ready = notify.lines("READY")[0]
        assert (pid, val) == (p.proc.pid, "1"), "READY=1 must come from the main pid"
        wait_for(lambda: len(notify.lines("WATCHDOG", t_ready)) >= 3, 15, 0.1, "3 WATCHDOG=1 pings")
        pings = notify.lines("WATCHDOG", t_ready)
        assert {pid for pid, _, _ in pings} == {p.proc.pid}
        assert all(v == "1" for _, v, _ in pings)
        gaps = [b[2] - a[2] for a, b in itertools.pairwise(pings)]
        assert max(gaps) < WATCHDOG_USEC / 1e6 / 2, f"pings too far apart for WatchdogSec=4: {gaps}"
        wait_for(lambda: any(v.startswith("online") for _, v, _ in notify.lines("STATUS")), 15, 0.1,
                 "STATUS=online ...")
        assert any("backlog" in v for _, v, _ in notify.lines("STATUS"))
        assert stop(p) == 0
        assert notify.lines("STOPPING"), "STOPPING=1 on SIGTERM"
    finally:
        stop(p)


def test_ready_and_pings_while_broker_is_down(tmp_path: Path, notify: NotifySocket) -> None:
    """Production reconnect backoff (up to 60 s): the idle MQTT supervisor must not stop the pings."""
    port = free_port()  # nothing listens there
    p = agent(tmp_path, notify, port, edit=lambda t: t.replace("reconnect_min = 0.1\nreconnect_max = 1.0\n", ""))
    assert "reconnect_max" not in p.config.read_text()
    try:
        wait_for(lambda: notify.lines("READY"), 30, 0.05, "READY=1 with the broker down")
        t_ready = notify.lines("READY")[0][2]
        time.sleep(7)  # > 3 stall limits (2 s each)
        pings = notify.lines("WATCHDOG", t_ready)
        assert len(pings) >= 4, f"pings stopped while the broker was down: {p.output()[-2000:]}"
        assert not any("STALLED" in v for _, v, _ in notify.lines("STATUS"))
        assert any(v.startswith(("offline", "connecting")) for _, v, _ in notify.lines("STATUS"))
    finally:
        assert stop(p) == 0


@pytest.mark.parametrize("loop", ["forwarder", "outbox"])
def test_stalled_loop_stops_watchdog_pings(tmp_path: Path, notify: NotifySocket, broker: DevBroker,
                                           loop: str) -> None:
    p = agent(tmp_path, notify, broker.port, extra_env={"EDGE_AGENT_TEST_STALL": f"{loop}:2"})
    try:
        wait_for(lambda: notify.lines("READY"), 30, 0.05, "READY=1")
        t_ready = notify.lines("READY")[0][2]
        wait_for(lambda: len(notify.lines("WATCHDOG", t_ready)) >= 1, 10, 0.1, "a first ping")
        # stall at +2 s, detected after the 2 s stall limit: pings must end by ~+5 s and never resume
        assert pings_stop(notify, t_ready), f"pings continue with {loop} stalled"
        n = len(notify.lines("WATCHDOG", t_ready))
        time.sleep(2)
        assert len(notify.lines("WATCHDOG", t_ready)) == n, "pings resumed"
        assert "loop(s) stalled: " in p.output() and loop in p.output()
        assert p.alive(), "a stalled loop must not kill the agent by itself; systemd does that"
    finally:
        p.kill()


def test_unknown_stall_hook_is_a_config_error(tmp_path: Path, notify: NotifySocket) -> None:
    p = agent(tmp_path, notify, free_port(), extra_env={"EDGE_AGENT_TEST_STALL": "nosuchloop"})
    assert p.wait(30) == 78
    assert "nosuchloop" in p.output()
    assert not notify.lines("READY")


def test_bad_config_exits_78_without_ready(tmp_path: Path, notify: NotifySocket) -> None:
    p = agent(tmp_path, notify, free_port(), edit=lambda t: t.replace("keepalive = 10", "keepalive = 10\nprot = 1"))
    assert p.wait(30) == 78
    assert "mqtt.prot: unknown key" in p.output()
    assert not notify.lines("READY")


def test_sighup_reload_refuses_bad_config_and_keeps_running(tmp_path: Path, notify: NotifySocket,
                                                            broker: DevBroker) -> None:
    p = agent(tmp_path, notify, broker.port)
    assert p.proc is not None
    try:
        wait_for(lambda: notify.lines("READY"), 30, 0.05, "READY=1")
        good = p.config.read_text()
        # a good change: the sampler interval is applied live
        p.config.write_text(good.replace("interval = 0.2", "interval = 0.3"))
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(notify.lines("READY")) >= 2, 15, 0.05, "READY=1 after the reload")
        assert notify.lines("RELOADING")
        assert "interval 0.2 -> 0.3" in p.output()
        # a bad file: refused, the running config kept, still alive and pinging
        p.config.write_text(good + "\n[storage]\nmax_bytes = -1\n")
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("refused" in v for _, v, _ in notify.lines("STATUS")), 15, 0.05,
                 "STATUS=reload refused")
        t = time.monotonic()
        assert "reload refused, keeping the running config" in p.output()
        wait_for(lambda: len(notify.lines("WATCHDOG", t)) >= 2, 10, 0.1, "pings after a refused reload")
        assert p.alive()
        assert stop(p) == 0
    finally:
        stop(p)


LAUNCH_WITH_HANG_SENSOR = (
    "import sys; from edge_agent.sensors import PLUGINS; "
    "PLUGINS['test.hang'] = 'tests.deploy.hang_sensor:HangSensor'; "
    "from edge_agent.cli import main; raise SystemExit(main(sys.argv[1:]))")


def test_stalled_sampler_stops_watchdog_pings(tmp_path: Path, notify: NotifySocket, broker: DevBroker) -> None:
    """A sensor read that never returns (real sampler thread stuck) stops the pings too."""
    hang = '[[sensors]]\nname = "stuck"\ntype = "test.hang"\ninterval = 0.2\nafter = 10\n'
    p = agent(tmp_path, notify, broker.port, edit=lambda t: t + hang, launcher=LAUNCH_WITH_HANG_SENSOR)
    try:
        wait_for(lambda: notify.lines("READY"), 30, 0.05, "READY=1")
        t_ready = notify.lines("READY")[0][2]
        wait_for(lambda: len(notify.lines("WATCHDOG", t_ready)) >= 1, 10, 0.1, "a first ping")
        # hang after 10 reads (~2 s), detected after 2 s + interval
        assert pings_stop(notify, t_ready), "pings continue with a sampler stuck"
        assert "sensor:stuck" in p.output()
        assert any("STALLED: sensor:stuck" in v for _, v, _ in notify.lines("STATUS"))
    finally:
        p.kill()
