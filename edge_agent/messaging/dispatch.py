"""The one thread that calls the app: on_message, on_message_status, on_connection_status, on_presence.

Never the MQTT network thread, so a slow app cannot stall keepalives or PUBACKs. Received messages are
handed over from the history (``notified = 0``), so a message stored just before a crash still reaches
the app after the restart; status and connection changes are queued snapshots, reported in order.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from edge_agent.messaging.envelope import MessagingError
from edge_agent.messaging.history import History, HistoryError, Message
from edge_agent.transport.types import ConnectionStatus

log = logging.getLogger("edge_agent.messaging")

Listener = Callable[[Any], None]
KINDS = ("message", "status", "connection", "presence")
_BATCH = 100
_SEEN = 1000  # ids of messages handed to on_message kept, to hand none over twice


class Dispatcher:
    """Listeners of the three kinds and the events waiting for them."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {k: [] for k in KINDS}
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._wake = threading.Event()
        self._fresh: deque[tuple[int, Message]] = deque()  # received messages handed over as they are stored
        self._fresh_lock = threading.Lock()
        self._query = True  # unnotified messages may be in the history that are not in _fresh
        self._last = 0  # the highest row id handed to on_message
        self._seen: OrderedDict[str, None] = OrderedDict()  # ids handed to on_message lately

    def add(self, kind: str, fn: Listener) -> None:
        if kind not in self._listeners:
            raise MessagingError(f"unknown listener kind {kind!r} ({', '.join(KINDS)})")
        self._listeners[kind].append(fn)
        if kind == "message":
            self._query = True
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
        self._query = True
        self._wake.set()

    def received(self, rowid: int, m: Message | None) -> None:
        """``m`` is being stored as row ``rowid`` (not notified): on_message gets it without a read of the
        history, maybe before the commit (``None``: read it from there). If storing fails, :meth:`unstored`."""
        if m is None:
            self.wake()
            return
        with self._fresh_lock:
            self._fresh.append((rowid, m))
        self._wake.set()

    def unstored(self, mid: str) -> None:
        """Storing ``mid`` failed after :meth:`received`: not to on_message now (if it is not too late: then
        the app has seen it, and it is not handed over again when it is stored)."""
        with self._fresh_lock:
            for x in [x for x in self._fresh if x[1].id == mid]:
                self._fresh.remove(x)

    def run(self, history: History, stop: threading.Event) -> None:
        """The thread's loop: until ``stop`` is set (``wake()`` after setting it for a prompt exit). Status
        and connection changes queued by then (the last ones: ``stopped``, the final PUBACKs' statuses)
        are still reported before it returns."""
        try:
            while not stop.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
                self._drain_events()
                if not self._listeners["message"]:
                    self._fresh.clear()  # they stay unnotified in the history, for a listener added later
                    self._query = True
                elif not history.closed and not self._deliver(history, stop):
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
        """Hand received messages to on_message, oldest first: those the history holds unnotified (after a
        restart, or stored while no listener was there), then those handed over as stored. False once the
        history is gone."""
        if self._query:
            self._query = False
            try:
                batch = history.unnotified_rows(_BATCH)
            except HistoryError:
                return True
            if len(batch) == _BATCH:
                self._query = True
        else:
            batch = []
            with self._fresh_lock:
                while self._fresh:
                    batch.append(self._fresh.popleft())
            if any(rowid <= self._last for rowid, _ in batch):  # out of order, or read from the history already
                self._query = True
                batch = [x for x in batch if x[0] > self._last]
        for rowid, m in batch:
            if stop.is_set():
                return False
            if m.id not in self._seen:  # else a store that failed after the app saw it, and now succeeded
                self._call("message", m)
                self._seen[m.id] = None
                if len(self._seen) > _SEEN:
                    self._seen.popitem(last=False)
            self._last = max(self._last, rowid)
            try:
                history.set_notified([m.id])
            except HistoryError:  # closed by a stop() from inside the callback
                return False
        if self._query or self._fresh:
            self._wake.set()
        return True

    def _call(self, kind: str, arg: Any) -> None:
        for fn in list(self._listeners[kind]):
            try:
                fn(arg)
            except Exception:
                log.exception("messaging listener %r failed", getattr(fn, "__name__", fn))
