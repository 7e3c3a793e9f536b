"""Presence of peers, from their retained status messages ``<prefix>/<peer>/status``.

Every agent keeps a retained JSON status on that topic (:mod:`edge_agent.status`): ``{"state": "online",
"ts": ...}`` on every connect and every ``agent.status_interval`` seconds, ``{"state": "offline"}`` on a
clean stop or, through the broker's last will, when the link dies. A :class:`PresenceBook` subscribes to
the status of each peer of interest (those this device messages, the members of its groups, and
:meth:`PresenceBook.watch`), keeps a small table and reports each change of ``online`` through
``notify(peer, Presence)`` (the service queues it for the callback thread).

A peer nobody has seen (no retained status at the broker, or not watched yet) is *unknown*:
``Presence(online=None)``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.host import Disposition, Host, InMessage
from edge_agent.transport.topics import status_topic

log = logging.getLogger("edge_agent.messaging")

MAX_WATCHED = 10_000  # peers whose status is subscribed; past it, watch() refuses quietly (logged once)


@dataclass(frozen=True)
class Presence:
    """``online``: True/False, None when unknown; ``last_seen``: when the peer was last known online (its
    status time), ``since``: when the current state began (as far as this device knows)."""

    online: bool | None = None
    last_seen: float | None = None
    since: float | None = None


UNKNOWN = Presence()


def _parse(payload: bytes) -> tuple[bool | None, float | None] | None:
    """(online, ts) from a status payload; (None, None) for a cleared one; None if it is not a status."""
    if not payload:
        return None, None
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("state") not in ("online", "offline"):
        return None
    ts = doc.get("ts")
    ts = float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None
    return doc["state"] == "online", ts


class PresenceBook:
    """The presence table of one messaging service (see the module docstring)."""

    def __init__(self, host: Host, *, dev: str, prefix: str, notify: Callable[[str, Presence], None]) -> None:
        self._host = host
        self._dev = dev
        self._prefix = prefix
        self._notify = notify
        self._lock = threading.Lock()
        self._table: dict[str, Presence] = {}
        self._watched: set[str] = set()
        self._started = False

    def start(self) -> None:
        """Subscribe the status of every peer watched so far (later ones are subscribed at once)."""
        with self._lock:
            self._started = True
            peers = sorted(self._watched)
        for peer in peers:
            self._subscribe(peer)

    def watch(self, peer: str) -> None:
        """Follow ``peer``'s presence (idempotent; this device itself is not watched)."""
        with self._lock:
            if peer == self._dev or peer in self._watched:
                return
            if len(self._watched) >= MAX_WATCHED:
                log.warning("presence: already %d peers watched; %s is not", MAX_WATCHED, peer)
                return
            self._watched.add(peer)
            started = self._started
        if started:
            self._subscribe(peer)

    def get(self, peer: str) -> Presence:
        with self._lock:
            return self._table.get(peer, UNKNOWN)

    def _subscribe(self, peer: str) -> None:
        topic = status_topic(self._prefix, peer)
        self._host.subscribe(topic, lambda t: t == topic, lambda m: self._on_status(peer, m), qos=1)

    def _on_status(self, peer: str, msg: InMessage) -> Disposition:
        parsed = _parse(msg.payload)
        if parsed is None:
            log.debug("presence: status of %s on %s is not a status document; ignored", peer, msg.topic)
            return Disposition.ACK
        online, ts = parsed
        now = time.time()
        with self._lock:
            old = self._table.get(peer, UNKNOWN)
            if online is None:
                new = UNKNOWN
            elif online:
                seen = ts if ts is not None else now
                new = Presence(True, seen, old.since if old.online else seen)
            else:  # offline: last seen when its last online status was; since now if we saw it go
                new = Presence(False, old.last_seen if old.last_seen is not None else ts,
                               old.since if old.online is False else (now if old.online else ts))
            self._table[peer] = new
        if new.online != old.online:
            self._notify(peer, new)
        return Disposition.ACK
