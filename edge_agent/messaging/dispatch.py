"""The one thread that calls the app: on_message, on_message_status, on_connection_status, on_presence.

Never the MQTT network thread, so a slow app cannot stall keepalives or PUBACKs. Received messages are
handed over from the history (``notified = 0``), so a message stored just before a crash still reaches
the app after the restart; status and connection changes are queued snapshots, reported in order.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from edge_agent.messaging.envelope import MessagingError
from edge_agent.messaging.history import History, HistoryError, Message
from edge_agent.transport.types import ConnectionStatus

log = logging.getLogger("edge_agent.messaging")

Listener = Callable[[Any], None]
KINDS = ("message", "status", "connection", "presence")
_BATCH = 100


class Dispatcher:
    """Listeners of the three kinds and the events waiting for them."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {k: [] for k in KINDS}
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._wake = threading.Event()

    def add(self, kind: str, fn: Listener) -> None:
        if kind not in self._listeners:
            raise MessagingError(f"unknown listener kind {kind!r} ({', '.join(KINDS)})")
        self._listeners[kind].append(fn)
        self._wake.set()

    def status(self, m: Message | None) -> None:
        """Report a status change; ``m`` is the message as it is now (a snapshot)."""
        if m is not None:
            self._events.put(("status", m))
            self._wake.set()

    def connection(self, st: ConnectionStatus) -> None:
        self.event("connection", st)

    def event(self, kind: str, arg: Any) -> None:
        """Queue ``arg`` for the listeners of ``kind`` (e.g. presence: ``(peer, Presence)``)."""
        self._events.put((kind, arg))
        self._wake.set()

    def wake(self) -> None:
        """New received messages are in the history."""
        self._wake.set()

    def run(self, history: History, stop: threading.Event) -> None:
        """The thread's loop: until ``stop`` is set (``wake()`` after setting it for a prompt exit). Status
        and connection changes queued by then (the last ones: ``stopped``, the final PUBACKs' statuses)
        are still reported before it returns."""
        try:
            while not stop.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
                self._drain_events()
                if self._listeners["message"] and not history.closed and not self._deliver(history, stop):
                    return
        finally:
            self._drain_events()

    def _drain_events(self) -> None:
        while True:
            try:
                kind, item = self._events.get_nowait()
            except queue.Empty:
                return
            self._call(kind, item)

    def _deliver(self, history: History, stop: threading.Event) -> bool:
        """Hand the next batch of received messages to on_message; False once the history is gone."""
        try:
            batch = history.unnotified(_BATCH)
        except HistoryError:
            return True
        for m in batch:
            if stop.is_set():
                return False
            self._call("message", m)
            try:
                history.set_notified([m.id])
            except HistoryError:  # closed by a stop() from inside the callback
                return False
        if len(batch) == _BATCH:
            self._wake.set()
        return True

    def _call(self, kind: str, arg: Any) -> None:
        for fn in list(self._listeners[kind]):
            try:
                fn(arg)
            except Exception:
                log.exception("messaging listener %r failed", getattr(fn, "__name__", fn))
