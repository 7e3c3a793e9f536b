"""Crash and power-cut accounting: ``outbox.db.run`` says whether the last run stopped cleanly.

Seqs are never assigned twice. ``put()`` may hand a seq to the forwarder before it is stored (write-behind),
and the seq sidecar (:class:`~edge_agent.outbox.recovery.SeqSidecar`) always holds a reservation >= every
seq handed out. At open this file is written ``{"state": "running", "boot_id": ...}`` (atomically,
fsynced); a clean stop records the last assigned seq in the database and then writes ``"stopped"``.

At the next open, a ``"running"`` file means the last run did not stop cleanly: every seq after the last
stored one up to the reservation may have been assigned and lost (held in memory, in an uncommitted
batch, or, after a power cut with ``sync = "normal"``, in WAL frames that never reached the disk). They
are reported in one ``events/dropped`` range, reason ``"crash"``, or ``"power_cut"`` when the boot id
(``/proc/sys/kernel/random/boot_id``) changed too, and seqs continue after the reservation. A consumer
that received some of them keeps them: the report only says they may be missing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fsutil import atomic_write

log = logging.getLogger("edge_agent.outbox")

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id(path: Path = BOOT_ID) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Unclean:
    """The last run did not stop cleanly: seqs ``first..last`` are unaccounted (reported as ``reason``)."""

    reason: str
    first: int
    last: int


class RunState:
    def __init__(self, path: Path, boot: Path = BOOT_ID) -> None:
        self.path = path
        self.boot = boot

    def previous(self, last_stored: int, reserved: int) -> Unclean | None:
        """What the file says about the last run, given the last stored seq and the sidecar's reservation."""
        try:
            d = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None  # first start (or a version without it): nothing to say
        except (OSError, ValueError) as e:
            log.warning("outbox: cannot read %s (%s): treating the last stop as a crash", self.path, e)
            d = {"state": "running"}
        if not isinstance(d, dict) or d.get("state") != "running":
            return None
        now = boot_id(self.boot)
        reason = "power_cut" if d.get("boot_id") and now and d.get("boot_id") != now else "crash"
        if reserved <= last_stored:
            return Unclean(reason, last_stored + 1, last_stored)  # nothing could be lost
        log.warning("outbox: the last run did not stop cleanly (%s): seqs %d..%d reported as dropped",
                    reason, last_stored + 1, reserved)
        return Unclean(reason, last_stored + 1, reserved)

    def running(self) -> None:
        self._write("running")

    def stopped(self) -> None:
        self._write("stopped")

    def _write(self, state: str) -> None:
        try:
            atomic_write(self.path, json.dumps({"state": state, "boot_id": boot_id(self.boot)}))
        except OSError as e:
            log.warning("outbox: cannot write %s: %s", self.path, e)
