"""Inbound routing and the acknowledgement policy.

The transport hands every inbound message to :meth:`Router.route` on its network thread. The first
route whose ``match`` accepts the topic gets the message; its handler returns a
:class:`~edge_agent.host.Disposition`:

* ``ACK``: the PUBACK goes out now (the handler has stored what it must, or refused the message for good);
* ``DEFER``: the handler acknowledges later itself (``msg.ack()``), or never, and the broker delivers the
  message again on the next connection.

A handler that **raises** has refused the message: it is acknowledged all the same. Left unacknowledged,
a poison message would hold a slot of the broker's receive window until the next reconnect, and about a
thousand of them (our Receive Maximum) would silence the device. The failure is counted
(``inbound_refused`` in the status) and logged at most once per route per :data:`LOG_EVERY` seconds,
with the number of failures the silent period swallowed. A message no route matches is acknowledged,
counted (``inbound_unmatched``) and logged the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.host import Disposition, Handler, InMessage

log = logging.getLogger("edge_agent.router")

#: Seconds between two log lines about the same route (a flood of poison messages must not flood the log).
LOG_EVERY = 10.0
UNMATCHED = "(no route)"


@dataclass(frozen=True)
class Route:
    topic_filter: str  # what was subscribed; also the "kind" failures are logged and throttled by
    match: Callable[[str], bool]
    handler: Handler


class Throttle:
    """At most one log line per key per ``interval`` seconds; what was skipped is counted into the next."""

    def __init__(self, interval: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: stay silent (and count this one); else how many were skipped since the last line."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._skipped.pop(key, 0)


class Router:
    """Routes inbound messages to handlers and acknowledges them by the policy above."""

    def __init__(self, *, log_every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self._routes: tuple[Route, ...] = ()  # replaced, never mutated: route() reads it without a lock
        self._lock = threading.Lock()
        self._throttle = Throttle(log_every, clock)
        self.refused = 0  # handlers that raised (the message was acknowledged)
        self.unmatched = 0  # messages no route matched (acknowledged)

    def add(self, topic_filter: str, match: Callable[[str], bool], handler: Handler) -> None:
        """Route what ``match`` accepts to ``handler``; routes are tried in the order they were added."""
        with self._lock:
            self._routes = (*self._routes, Route(topic_filter, match, handler))

    def remove(self, topic_filter: str) -> bool:
        """Drop the routes added for ``topic_filter``; True if there were any."""
        with self._lock:
            kept = tuple(r for r in self._routes if r.topic_filter != topic_filter)
            gone = len(kept) != len(self._routes)
            self._routes = kept
        return gone

    def route(self, msg: InMessage) -> Disposition | None:
        """Hand ``msg`` to its handler and apply the ack policy. Never raises. None if no route matched."""
        for r in self._routes:
            if r.match(msg.topic):
                try:
                    disposition = r.handler(msg)
                except Exception as e:
                    self.refused += 1
                    self._report(r.topic_filter, "handler for %s raised on %s: %s: %s; message acknowledged, "
                                 "not redelivered", r.topic_filter, msg.topic, type(e).__name__, e, exc=True)
                    msg.ack()
                    return Disposition.ACK
                if disposition is Disposition.DEFER:
                    return disposition
                msg.ack()
                return Disposition.ACK
        self.unmatched += 1
        self._report(UNMATCHED, "no handler for message on %s; acknowledged and dropped", msg.topic)
        msg.ack()
        return None

    def counters(self) -> dict[str, int]:
        return {"inbound_refused": self.refused, "inbound_unmatched": self.unmatched}

    def _report(self, kind: str, fmt: str, *args: object, exc: bool = False) -> None:
        skipped = self._throttle.allow(kind)
        if skipped is None:
            return
        if skipped:
            fmt += " (and %d more since the last report, not logged)"
            args = (*args, skipped)
        log.log(logging.ERROR if exc else logging.WARNING, fmt, *args, exc_info=exc)
