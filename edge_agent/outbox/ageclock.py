"""The clock of the outbox's ``created`` and ``expires`` columns: elapsed time, not the wall clock.

A TTL (``storage.max_age``, ``Outgoing.ttl``) means *time actually elapsed since the message was
queued*. The wall clock is a poor judge of that on an edge device: it boots behind (no RTC, or
fake-hwclock), then NTP steps it forward, sometimes by days; an operator may set it back. So ``created``
is read from ``CLOCK_BOOTTIME`` (monotonic, counts suspend) plus an anchor fixed per boot:

* the anchor is taken from the wall clock once per boot and kept in ``meta`` with the boot id, so a
  restart of the agent within the same boot continues the same clock whatever the wall clock did
  meanwhile (a clock step never ages or rejuvenates a queued reading);
* after a reboot (new boot id) the wall clock is the only link to the previous boot, so ages across a
  power-off follow it, with one guard: the clock never runs behind the newest stored ``created``
  (a clock that boots behind makes old rows look younger, i.e. kept longer, never older).

Because of that guard and because seqs and ``created`` are taken under one lock, ``created`` never
decreases in seq order, and the default-TTL expiry scan may stop at the first live row (see
:meth:`Maintenance._select_expired`); rows with their own TTL are found through their index. The
envelope's ``ts`` stays the wall clock reading: that is the reading's timestamp, not its age.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable


def boottime() -> float:
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


def read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class AgeClock:
    """``now()``: seconds on the outbox's age clock (wall-clock-like values, elapsed-time steps)."""

    def __init__(self, wall: Callable[[], float] = time.time, boot: Callable[[], float] = boottime,
                 boot_id: Callable[[], str] = read_boot_id) -> None:
        self._wall, self._boot, self._boot_id = wall, boot, boot_id
        self.boot_id = ""
        self.anchor_ms: int | None = None

    def start(self, db: sqlite3.Connection) -> None:
        """Anchor the clock (at open, after any recovery): the stored anchor of this boot, else the wall
        clock, never behind the newest stored row."""
        self.boot_id = self._boot_id()
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('clock.boot', 'clock.anchor')"))
        boot_ms = int(self._boot() * 1000)
        if self.boot_id and meta.get("clock.boot") == self.boot_id and isinstance(meta.get("clock.anchor"), int):
            anchor = int(meta["clock.anchor"])
        else:
            anchor = int(self._wall() * 1000) - boot_ms
        top = db.execute("SELECT created FROM messages ORDER BY seq DESC LIMIT 1").fetchone()
        if top is not None and isinstance(top[0], int) and anchor + boot_ms < top[0]:
            anchor = top[0] - boot_ms
        self.anchor_ms = anchor

    def now_ms(self) -> int:
        if self.anchor_ms is None:  # not opened yet: the wall clock
            return int(self._wall() * 1000)
        return self.anchor_ms + int(self._boot() * 1000)

    def now(self) -> float:
        return self.now_ms() / 1000.0

    def meta_rows(self) -> list[tuple[str, object]]:
        """Stored with every commit: a restart within this boot continues this clock."""
        return [] if self.anchor_ms is None else [("clock.boot", self.boot_id), ("clock.anchor", self.anchor_ms)]


def reader_now(db: sqlite3.Connection) -> float:
    """The age clock as an out-of-process reader (``outbox stats``) sees it: the stored anchor when the
    agent runs in this boot, else the wall clock."""
    meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('clock.boot', 'clock.anchor')"))
    bid = read_boot_id()
    if bid and meta.get("clock.boot") == bid and isinstance(meta.get("clock.anchor"), int):
        return (int(meta["clock.anchor"]) + int(boottime() * 1000)) / 1000.0
    return time.time()
