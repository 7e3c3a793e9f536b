"""Drift-free sampling of polled sensors.

Each polled sensor gets a thread that sleeps until ``t0 + k * interval`` on the monotonic clock, so
timing errors never accumulate (a late tick does not delay the next one). Ticks missed because a read
took longer than the interval are skipped and counted, never bunched up. A read that raises is
reported once per failure streak as an event and retried with exponential backoff (capped at 60 s);
other sensors are unaffected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent.sensors.base import Reading, Sensor

log = logging.getLogger("edge_agent.sampling")


class SensorRunner:
    def __init__(self, sensor: Sensor, interval: float, count: int, cls: str,
                 sink: Callable[[Reading], None], on_error: Callable[[str, Exception, int], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.sensor = sensor
        self.interval = interval
        self.count = count
        self.cls = cls
        self.sink = sink
        self.on_error = on_error
        self.clock = clock
        self.taken = 0
        self.skipped = 0
        self.errors = 0
        self.last_tick = time.monotonic()
        self._stop = threading.Event()
        self._reschedule = threading.Event()
        self._thread: threading.Thread | None = None
        self.done = threading.Event()

    def set_interval(self, interval: float) -> None:
        self.interval = interval
        self._reschedule.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sensor-{self.sensor.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def stalled(self, limit: float) -> bool:
        if self.done.is_set() or self._thread is None:
            return False
        # a sensor with a long interval is expected to be silent for that long
        return time.monotonic() - self.last_tick > limit + self.interval

    def _sleep_until(self, deadline: float) -> bool:
        """Sleep until a monotonic deadline; return False if stopped."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return not self._stop.is_set()
            if left > 0.002:
                if self._stop.wait(left - 0.001):
                    return False
            else:
                # sub-2 ms: a short spin keeps 1 kHz jitter low without burning a core between ticks
                time.sleep(0)

    def _run(self) -> None:
        backoff = 0.0
        failures = 0
        t0 = time.monotonic()
        k = 0
        try:
            while not self._stop.is_set():
                if self._reschedule.is_set():
                    self._reschedule.clear()
                    t0, k = time.monotonic(), 0
                deadline = t0 + k * self.interval + backoff
                if not self._sleep_until(deadline):
                    break
                self.last_tick = time.monotonic()
                try:
                    data = self.sensor.read()
                except Exception as e:  # a failing sensor never stops the agent
                    failures += 1
                    self.errors += 1
                    self.on_error(self.sensor.name, e, failures)
                    backoff = min(60.0, max(self.interval, 0.5) * 2 ** min(failures - 1, 10))
                    t0, k = time.monotonic(), 0
                    continue
                if failures:
                    log.info("sensor %s recovered after %d failure(s)", self.sensor.name, failures)
                    failures, backoff = 0, 0.0
                self.sink(Reading(self.sensor.name, self.clock(), data, self.cls))
                self.taken += 1
                if self.count and self.taken >= self.count:
                    break
                k += 1
                behind = time.monotonic() - (t0 + k * self.interval)
                if behind > self.interval:
                    missed = int(behind / self.interval)
                    self.skipped += missed
                    k += missed
        finally:
            self.done.set()


def describe(runner: SensorRunner) -> dict[str, Any]:
    return {"interval": runner.interval, "taken": runner.taken, "skipped": runner.skipped,
            "errors": runner.errors}
