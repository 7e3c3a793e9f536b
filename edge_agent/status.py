"""The agent's presence and health reporting.

* the retained status message ``<prefix>/<device>/status`` (JSON; see docs/architecture.md): published on
  every connect and every ``agent.status_interval`` seconds, replaced by ``offline`` on a clean stop or by
  the last will;
* systemd: ``WATCHDOG=1`` only while every loop ticks (:class:`~edge_agent.health.Health`), ``STATUS=``
  lines;
* ``$RUNTIME_DIRECTORY/status.json``, what the deploy health gate reads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent import systemd
from edge_agent.config import Config
from edge_agent.health import Health
from edge_agent.outbox import Outbox
from edge_agent.transport.mqtt import MqttTransport, Will
from edge_agent.transport.topics import status_topic
from edge_agent.transport.types import Refused, StateToken
from edge_agent.version import __version__

#: status.json: owner read/write, group read (the unit's RuntimeDirectoryMode=0750 guards the directory)
STATUS_FILE_MODE = 0o640

log = logging.getLogger("edge_agent")


def offline_will(cfg: Config) -> Will:
    """The retained ``offline`` status: the last will, and what a clean stop publishes."""
    payload = json.dumps({"state": "offline", "dev": cfg.device.id, "groups": list(cfg.device.groups)}).encode()
    return Will(status_topic(cfg.mqtt.topic_prefix, cfg.device.id), payload)


class StatusReporter:
    """Builds the status dict and keeps the status message, systemd and status.json up to date."""

    def __init__(self, config: Callable[[], Config], outbox: Outbox, transport: MqttTransport, health: Health,
                 counters: Callable[[], dict[str, int]]) -> None:
        self._config = config  # the running config (replaced by a reload)
        self.outbox = outbox
        self.transport = transport
        self.health = health
        self.counters = counters  # e.g. the router's inbound_refused
        self.started_at = time.time()
        self._due = False  # the last publish failed (e.g. window full): retried at the next tick
        self._retained: dict[str, bytes] = {}  # retained state (e.g. group membership) not yet handed to the link
        self._retained_lock = threading.Lock()
        self._refusals: set[tuple[str, int]] = set()  # (topic, reason code) already logged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def status_dict(self, state: str = "online") -> dict[str, Any]:
        cfg = self._config()
        st: dict[str, Any] = {"state": state, "dev": cfg.device.id, "ts": round(time.time(), 3),
                              "version": __version__, "pid": os.getpid(), "started": round(self.started_at, 3),
                              "groups": list(cfg.device.groups)}
        if state == "online":
            st["outbox"] = self.outbox.status()  # backlog, oldest age, all counters
            st["reconnects"] = self.transport.reconnects
            st.update(self.counters())
        return st

    def publish(self) -> bool:
        """Publish the retained online status and the other retained state; False (retried by the loop) if
        something could not go out."""
        cfg = self._config()
        payload = json.dumps(self.status_dict("online"), separators=(",", ":")).encode()
        with self._retained_lock:
            pending = dict(self._retained)
        ok = self._send(status_topic(cfg.mqtt.topic_prefix, cfg.device.id), payload)
        for topic, value in pending.items():
            if self._send(topic, value):
                self._sent(topic, value)
            else:
                ok = False
        self._due = not ok
        return ok

    def set_retained(self, topic: str, payload: bytes) -> None:
        """Set ``payload`` retained on ``topic`` (b"" clears it): handed to the link now if it is up, else at
        the next connect. State, not part of the seq stream: no outbox row, no seq. Sent once per change
        (a broker that refuses it, e.g. an ACL without the topic, must not cause a reconnect loop)."""
        with self._retained_lock:
            self._retained[topic] = payload
        if self.transport.connected and self._send(topic, payload):
            self._sent(topic, payload)
        else:
            self._due = True  # the status loop (or the next connect) sends it

    def _sent(self, topic: str, payload: bytes) -> None:
        with self._retained_lock:
            if self._retained.get(topic) == payload:
                del self._retained[topic]

    def _send(self, topic: str, payload: bytes) -> bool:
        try:
            self.transport.publish(topic, payload, qos=1, retain=True, token=StateToken(topic, self._refused))
        except Exception as e:
            log.debug("retained %s not published: %s", topic, e)
            return False
        return True

    def _refused(self, topic: str, ack: Refused) -> None:
        """The broker refused a retained state message (network thread): one error per topic and reason,
        since it is sent again per change and the status every interval. Not retried: a refusal would
        only repeat (and Mosquitto closes the connection after each, see docs/commands.md)."""
        with self._retained_lock:
            if (topic, ack.code) in self._refusals:
                return
            self._refusals.add((topic, ack.code))
        hint = ": the broker's ACL does not let this device write that topic" if ack.code == 0x87 else ""
        log.error("broker refused the retained message on %s (%s)%s; not retried", topic, ack, hint)

    def start(self) -> None:
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._loop, name="status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)

    def _loop(self) -> None:
        """Watchdog pings (only while every loop ticks), STATUS= lines, status.json, retained status."""
        interval = systemd.watchdog_interval()
        next_status = time.monotonic() + self._config().agent.status_interval
        tick = min(interval, 1.0) if interval else 1.0
        status_file = systemd.runtime_file("status.json")
        was_stalled: list[str] = []
        while not self._stop.wait(tick):
            stalled = self.health.stalled()
            if stalled != was_stalled:
                if stalled:
                    log.error("watchdog: loop(s) stalled: %s; not pinging systemd", ", ".join(stalled),
                              extra={"STALLED": ",".join(stalled)})
                else:
                    log.warning("watchdog: all loops ticking again")
                was_stalled = stalled
            if interval and not stalled:
                systemd.watchdog()
            state = self.transport.status.state
            systemd.status(f"{state}; backlog {self.outbox.pending}; last_seq {self.outbox.last_seq}"
                           + (f"; STALLED: {', '.join(stalled)}" if stalled else ""))
            if status_file is not None:
                self._write_file(status_file, state, stalled)
            if time.monotonic() >= next_status or self._due:
                next_status = time.monotonic() + self._config().agent.status_interval
                if self.transport.connected:
                    self.publish()

    def _write_file(self, path: Path, state: str, stalled: list[str]) -> None:
        """$RUNTIME_DIRECTORY/status.json (tmpfs under systemd): what the deploy health gate reads."""
        doc = {"state": state, "dev": self._config().device.id, "ts": round(time.time(), 3), "pid": os.getpid(),
               "version": __version__, "pending": self.outbox.pending, "last_seq": self.outbox.last_seq,
               "stalled": stalled}
        try:
            tmp = path.with_name(path.name + ".tmp")
            # 0640 whatever the umask: backlog, pid and state are for the service's group, not every user
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, STATUS_FILE_MODE)
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), STATUS_FILE_MODE)
                f.write(json.dumps(doc, separators=(",", ":")))
            tmp.replace(path)
        except OSError as e:
            log.debug("cannot write %s: %s", path, e)
