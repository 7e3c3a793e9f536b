"""Test helpers shared by every suite: a real Mosquitto, a collecting subscriber, an agent subprocess.

Nothing here is a mock: the broker is a real mosquitto on an ephemeral port, the subscriber a real
MQTT client (the agent's own transport), the agent a real ``python -m edge_agent run`` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edge_agent import codec
from edge_agent.config import MqttConfig
from edge_agent.transport.mqtt import InMessage, MqttTransport

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


T = TypeVar("T")


def start_or_skip(start: Callable[[], T]) -> T:
    """``start()`` a test broker; without Mosquitto the test is skipped, except in CI, where it fails."""
    import pytest

    from edge_agent.devbroker import BrokerUnavailable

    try:
        return start()
    except BrokerUnavailable as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def missing(seqs: list[int], last: int) -> list[int]:
    """The seqs 1..last that never arrived."""
    got = set(seqs)
    return [s for s in range(1, last + 1) if s not in got]


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02, msg: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {msg or pred}")


def wait_progress(pred: Callable[[], bool], progress: Callable[[], int], stall: float = 30.0,
                  limit: float = 600.0, interval: float = 0.2, msg: str = "") -> None:
    """Until ``pred()`` holds, for as long as ``progress()`` (a count that only grows) keeps growing.

    Fails when the count has not grown for ``stall`` seconds, or after ``limit`` in all. For waits on
    a subscriber that is still working through a backlog: on a slow machine it may need minutes, and a
    fixed timeout then fails a run that loses nothing; a real loss still fails, ``stall`` after the
    last message.
    """
    start = last_change = time.monotonic()
    seen = progress()
    while not pred():
        now = time.monotonic()
        n = progress()
        if n != seen:
            seen, last_change = n, now
        if now - last_change > stall or now - start > limit:
            raise AssertionError(f"gave up waiting for {msg or pred} after {now - start:.1f} s: no progress "
                                 f"for {now - last_change:.1f} s (count {n})")
        time.sleep(interval)


def agent_state(app: Any) -> str:
    """What an in-process App's outbox, forwarder and transport hold, and every thread's stack: for a
    test's failure message when a drain stalls (it says which side is stuck)."""
    ob, fw, tr = app.outbox, app.forwarder, app.transport
    lines = [f"outbox: pending {ob.pending}, last_seq {ob.last_seq}, last_assigned {ob.last_assigned}",
             f"outbox stats: {ob.stats()}",
             f"forwarder: sent {fw.sent}, rejected {fw.rejected}, buffer {len(fw._buffer)}, "
             f"waiting {fw._waiting}, starved {fw._starved}, probe {fw._probe}, down {fw._down}",
             f"transport: connected {tr.connected}, inflight {tr.inflight()}, window {tr.window}"]
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        lines.append(f"--- thread {names.get(ident, ident)}")
        lines.extend(x.rstrip() for x in traceback.format_stack(frame)[-6:])
    return "\n".join(lines)


class Collector:
    """A real MQTT subscriber that decodes envelopes and keeps them (thread-safe).

    ``persistent=True`` keeps its session at the broker: if its own link drops (paho's client-side
    keepalive does close it on a machine starved of CPU), what was published meanwhile still arrives.
    """

    def __init__(self, port: int, topic: str, client_id: str | None = None, persistent: bool = False,
                 host: str = "127.0.0.1") -> None:
        self.messages: list[InMessage] = []
        self.envelopes: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.cfg = MqttConfig(host=host, port=port, keepalive=10, session_expiry=3600 if persistent else 0,
                              reconnect_min=0.1, reconnect_max=0.5)
        self.t = MqttTransport(self.cfg, client_id=client_id or unique("collector-"), on_message=self._on,
                               persistent_session=persistent)
        self.t.subscribe(topic, qos=1)
        self._seqs: set[int] = set()

    def _on(self, m: InMessage) -> None:
        rx = time.time()
        with self.lock:
            self.messages.append(m)
            try:
                env = codec.decode(m.payload)
            except Exception:
                env = None
            if isinstance(env, dict):
                env["_topic"] = m.topic
                self._stamp(env, rx)
                self.envelopes.append(env)
                if isinstance(env.get("seq"), int):
                    self._seqs.add(env["seq"])

    def _stamp(self, env: dict[str, Any], rx: float) -> None:
        """Subclasses add what they record per envelope (``rx``: arrival, epoch seconds)."""

    def distinct(self) -> int:
        """How many different seqs arrived (cheap: kept as they come)."""
        with self.lock:
            return len(self._seqs)

    def wait_distinct(self, n: int, stall: float = 30.0) -> None:
        """Until ``n`` different seqs arrived; fails only when nothing new comes for ``stall`` s."""
        wait_progress(lambda: self.distinct() >= n, self.count, stall, msg=f"{n} distinct seqs")

    def start(self, timeout: float = 10.0) -> Collector:
        self.t.start()
        assert self.t.wait_online(timeout), "collector could not connect"
        time.sleep(0.1)  # let SUBACK arrive
        return self

    def stop(self) -> None:
        self.t.stop(timeout=2.0)

    def envelopes_copy(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.envelopes)

    def seqs(self, stream_prefix: str = "") -> list[int]:
        with self.lock:
            return [e["seq"] for e in self.envelopes if str(e.get("stream", "")).startswith(stream_prefix)]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


SIM = """
[[sensors]]
name = "{name}"
type = "simulated"
interval = {interval}
count = {count}
cls = "{cls}"
"""


def sensors(*specs: tuple[str, float, int, str]) -> str:
    """``(name, interval, count, cls)`` tuples -> [[sensors]] tables of simulated sensors."""
    return "".join(SIM.format(name=n, interval=i, count=c, cls=k) for n, i, c, k in specs)


def write_config(path: Path, port: int, state: Path, device: str = "dev-1", extra: str = "",
                 sensors: str = "", prefix: str = "edge", keepalive: int = 10) -> Path:
    text = f"""
[device]
id = "{device}"
groups = ["lab"]
[mqtt]
host = "127.0.0.1"
port = {port}
topic_prefix = "{prefix}"
keepalive = {keepalive}
reconnect_min = 0.1
reconnect_max = 1.0
[storage]
dir = "{state}"
[agent]
stop_timeout = 5
{extra}
{sensors}
"""
    path.write_text(text)
    return path


class AgentProcess:
    """``python -m edge_agent run`` as a real child process."""

    def __init__(self, config: Path, extra_env: dict[str, str] | None = None, args: list[str] | None = None):
        self.config = config
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.parent / f"{config.stem}.log"

    def start(self) -> AgentProcess:
        out = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(self.config),
                                      *self.args], stdout=out, stderr=out, env=self.env, cwd=ROOT)
        out.close()
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
