"""Drift-free sampling of polled sensors.

Each polled sensor gets a thread that sleeps until an absolute deadline on the monotonic clock,
``t0 + k * interval``, so timing errors never accumulate: a tick that wakes 80 µs late does not delay
the next one, and after ten hours at 1 Hz the 36,000th reading is taken within the same jitter as the
first. (Sleeping ``interval`` *after* each read, as naive loops do, drifts by the read time plus the
wake-up latency every tick.) Wall-clock steps (NTP, a 1970 boot clock) do not move the schedule;
readings are still stamped with wall time.

Ticks missed because a read took longer than the interval are skipped and counted, never bunched up.
A read that raises is reported (``on_error``; the app turns it into an ``events/sensor_error`` event on
the first failure and every tenth) and retried with exponential backoff capped at 60 s; other sensors
are unaffected, and the schedule restarts from the first successful read.

Sleeping: waits longer than a few milliseconds block on an Event (so ``stop()`` wakes the thread at
once); the last few milliseconds use ``time.sleep``, which on Linux is ``clock_nanosleep`` with about
50-100 µs of wake-up latency. No busy-waiting, so a 1 kHz sensor costs a fraction of a core, not all
of it.

A sensor may pace itself (:meth:`Sensor.pace`, used by ``replay``): deadlines then advance by the
paced amount instead of ``interval``, still as absolute deadlines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent.sensors.base import Exhausted, Reading, Sensor, Stamped

log = logging.getLogger("edge_agent.sampling")

BACKOFF_MAX = 60.0
FINE_SLEEP = 0.005  # below this, time.sleep (precise) instead of Event.wait (wakeable)


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
        self.dropped = 0  # readings the sink raised on
        self.exhausted = False
        self.t0 = 0.0  # monotonic start of the current schedule (after start, a reschedule or a recovery)
        self.last_tick = time.monotonic()
        self._stop = threading.Event()
        self._reschedule = threading.Event()
        self._wake = threading.Event()  # set by stop() and set_interval() to end a long sleep early
        self._thread: threading.Thread | None = None
        self.done = threading.Event()

    def set_interval(self, interval: float) -> None:
        """Change the interval; the new schedule starts at the next tick."""
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.interval = interval
        self._reschedule.set()
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sensor-{self.sensor.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def stalled(self, limit: float) -> bool:
        if self.done.is_set() or self._thread is None:
            return False
        # a sensor with a long interval (or in backoff) is expected to be silent for that long
        return time.monotonic() - self.last_tick > limit + max(self.interval, BACKOFF_MAX if self.errors else 0)

    def _sleep_until(self, deadline: float) -> bool:
        """Sleep until a monotonic deadline; return False if stopped or rescheduled (the caller re-plans)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return not self._stop.is_set()
            if left > FINE_SLEEP:
                if self._wake.wait(left - FINE_SLEEP / 2):
                    self._wake.clear()
                    return False
            else:
                time.sleep(left)

    def _run(self) -> None:
        try:
            try:
                self.sensor.start()
            except Exception as e:
                self.errors += 1
                self.on_error(self.sensor.name, e, 1)
                return
            self._loop()
        except Exception:
            log.exception("sensor %s: sampler failed", self.sensor.name)
        finally:
            self.done.set()

    def _loop(self) -> None:
        """Sleep until each deadline, read, hand the reading to the sink; until stopped, exhausted or done."""
        failures = 0
        self.t0 = time.monotonic()
        k = 0  # deadline = t0 + k * interval: a product, not a running sum, so no rounding creep
        deadline = self.t0
        while not self._stop.is_set():
            if self._reschedule.is_set():
                self._reschedule.clear()
                self.t0 = deadline = time.monotonic()
                k = 0
            if not self._sleep_until(deadline):
                if self._stop.is_set():
                    break
                continue  # set_interval(): start the new schedule now
            self.last_tick = time.monotonic()
            try:
                out = self.sensor.read()
            except Exhausted:
                self.exhausted = True
                log.info("sensor %s: no more data after %d reading(s)", self.sensor.name, self.taken)
                break
            except Exception as e:  # a failing sensor never stops the agent
                failures += 1
                self.errors += 1
                self.on_error(self.sensor.name, e, failures)
                backoff = min(BACKOFF_MAX, max(self.interval, 0.5) * 2 ** min(failures - 1, 10))
                deadline = time.monotonic() + backoff
                continue
            if failures:
                log.info("sensor %s recovered after %d failure(s)", self.sensor.name, failures)
                failures = 0
                self.t0, k = self.last_tick, 0
            if not self._deliver(out):
                break
            self.taken += 1
            if self.count and self.taken >= self.count:
                break
            k, deadline = self._next_deadline(k)

    def _deliver(self, out: Any) -> bool:
        """Hand one read to the sink as a Reading; False if the sink refused because we are stopping."""
        if isinstance(out, Stamped):
            reading = Reading(self.sensor.name, out.ts, out.data, self.cls)
        else:
            reading = Reading(self.sensor.name, self.clock(), out, self.cls)
        try:
            self.sink(reading)
        except Exception as e:  # the pipeline refused (closed at stop, or a bug): keep sampling
            if self._stop.is_set():
                return False
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("sensor %s: reading not stored (%d so far): %s: %s", self.sensor.name,
                          self.dropped, type(e).__name__, e)
        return True

    def _next_deadline(self, k: int) -> tuple[int, float]:
        """(k, deadline) of the next tick after tick ``k``: the paced step if the sensor paces itself, else
        the next ``t0 + k * interval`` not already past (ticks missed meanwhile are skipped and counted)."""
        step = self.sensor.pace()
        if step is not None:  # self-paced: move the origin by the paced step
            self.t0 += max(0.0, step)
            return 0, self.t0
        k += 1
        deadline = self.t0 + k * self.interval
        behind = time.monotonic() - deadline
        if behind > self.interval:
            missed = int(behind / self.interval)
            self.skipped += missed
            k += missed
            deadline = self.t0 + k * self.interval
        return k, deadline


def describe(runner: SensorRunner) -> dict[str, Any]:
    return {"interval": runner.interval, "taken": runner.taken, "skipped": runner.skipped,
            "errors": runner.errors, "dropped": runner.dropped, "exhausted": runner.exhausted}
