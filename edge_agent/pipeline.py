"""Readings -> messages. The one-way path from sensors to the outbox, with taps for inference.

::

    sensor runners / push sensors --Reading--> Pipeline.submit --(batch)--> outbox.put -> seq
                                                                  '--> taps(reading, seq)  (inference)

With ``batch = n`` on a sensor, n readings become one message whose data holds arrays:
``{"ts": [...], "value": [...]}`` (one array per field), stamped with the first reading's ts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from edge_agent.message import Outgoing
from edge_agent.sensors.base import Reading
from edge_agent.transport.topics import stream_topic

log = logging.getLogger("edge_agent.pipeline")

Tap = Callable[[Reading, int], None]


class Sink(Protocol):
    """Where messages go (the outbox): ``put`` stores one and returns its seq."""

    def put(self, msg: Outgoing) -> int: ...


class Pipeline:
    def __init__(self, outbox: Sink, prefix: str, device_id: str, batches: dict[str, int] | None = None) -> None:
        self.outbox = outbox
        self.prefix = prefix
        self.device_id = device_id
        self.batches = dict(batches or {})
        self._pending: dict[str, list[Reading]] = {}
        self._lock = threading.Lock()
        self.taps: list[Tap] = []

    def add_tap(self, fn: Tap) -> None:
        self.taps.append(fn)

    def remove_tap(self, fn: Tap) -> None:
        """Stop calling ``fn``; a tap that is not there is ignored."""
        try:
            self.taps.remove(fn)
        except ValueError:
            pass

    def submit(self, r: Reading) -> int | None:
        """Store one reading (or add it to its sensor's batch). Returns the seq once stored.

        Taps see every reading, with the seq of the message that carries it (for a batched sensor,
        all readings of a batch share the batch message's seq and reach the taps when it is stored).
        """
        n = self.batches.get(r.sensor, 1)
        if n > 1:
            with self._lock:
                buf = self._pending.setdefault(r.sensor, [])
                buf.append(r)
                batch = None if len(buf) < n else self._pending.pop(r.sensor)
            if not batch:
                return None
            seq = self._put_batch(batch)
            readings = batch
        else:
            seq = self.publish(r.stream or f"telemetry/{r.sensor}", r.data, cls=r.cls, ts=r.ts)
            readings = [r]
        for tap in self.taps:
            for reading in readings:
                try:
                    tap(reading, seq)
                except Exception:
                    log.exception("pipeline tap failed")
        return seq

    def publish(self, stream: str, data: Any, *, cls: str = "telemetry", ts: float | None = None,
                ttl: float | None = None, extra: dict[str, Any] | None = None) -> int:
        return self.outbox.put(Outgoing(topic=stream_topic(self.prefix, self.device_id, stream), stream=stream,
                                        data=data, cls=cls, ts=ts, ttl=ttl, extra=extra))

    def event(self, name: str, data: Any, cls: str = "event") -> int:
        return self.publish(f"events/{name}", data, cls=cls)

    def _put_batch(self, batch: list[Reading]) -> int:
        first = batch[0]
        data: dict[str, Any] = {"ts": [r.ts for r in batch]}
        for key in first.data:
            data[key] = [r.data.get(key) for r in batch]
        return self.publish(first.stream or f"telemetry/{first.sensor}", data, cls=first.cls, ts=first.ts)

    def flush(self) -> None:
        """Store partial batches (at stop)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for batch in pending.values():
            if batch:
                self._put_batch(batch)
