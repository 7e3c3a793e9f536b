"""The writer's care of its files: a periodic PASSIVE checkpoint and commit-time record (:class:`Upkeep`),
and a database file that vanishes (or is replaced) under the running outbox: noticed by the writer at each
maintenance pass (st_ino of the path), answered by moving to a fresh file at the same path. The rows are
carried over from the still-open connection to the unlinked file (an open file outlives its name), so
nothing is lost when that read succeeds; what cannot be read is reported lost (``"db_lost"``). Seqs
continue where they were (the writer's ``last_seq``, never below the sidecar's reservation): the agent
never keeps writing into an unlinked file.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge_agent.outbox.continuity import QUARANTINE_KEEP, FileWatch, ensure_identity, prune_quarantine, quarantine
from edge_agent.outbox.recovery import Salvage, SeqSidecar, copy_into, read_salvage
from edge_agent.outbox.schema import open_db

log = logging.getLogger("edge_agent.outbox")

CHECKPOINT_INTERVAL = 2.0  # s between PASSIVE checkpoints: a lost WAL loses at most about this much
STATS_REFRESH = 10.0  # s: an idle outbox still records ``committed_ms`` this often (``outbox stats`` age)


class Upkeep:
    """The writer's small periodic writes that keep the files honest (writer thread only)."""

    def __init__(self) -> None:
        self.last_ckpt = self.last_commit = time.monotonic()

    def committed(self, db: sqlite3.Connection) -> None:
        """After a commit: a PASSIVE checkpoint at most every CHECKPOINT_INTERVAL s, so the database file
        itself stays recent (SQLite's own auto-checkpoint waits for 1000 pages, i.e. 4 MiB of WAL) and
        losing the WAL loses little. PASSIVE never waits for the reader."""
        now = self.last_commit = time.monotonic()
        if now - self.last_ckpt < CHECKPOINT_INTERVAL:
            return
        self.last_ckpt = now
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:
            log.debug("outbox: checkpoint failed: %s", e)

    def idle(self, db: sqlite3.Connection) -> None:
        """Nothing to commit: still record ``committed_ms`` every STATS_REFRESH s, so the figures
        ``outbox stats`` reads are known current; a large age then means the writer cannot commit."""
        if time.monotonic() - self.last_commit < STATS_REFRESH:
            return
        self.last_commit = time.monotonic()
        try:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('committed_ms', ?)", (int(time.time() * 1000),))
        except sqlite3.Error as e:
            log.debug("outbox: cannot record committed_ms: %s", e)


class Reopener:
    def __init__(self, path: Path, sync: str, sidecar: SeqSidecar,
                 quarantine_keep: int = QUARANTINE_KEEP) -> None:
        self.path = path
        self.quarantine_keep = quarantine_keep
        self.sync = sync
        self.sidecar = sidecar
        self.watch = FileWatch(path)

    def moved(self) -> str | None:
        return self.watch.moved()

    def read(self, old: sqlite3.Connection) -> tuple[Salvage, str | None]:
        """Every un-acked row the old connection still reads (the unlinked file outlives its name)."""
        found = Salvage()
        try:
            read_salvage(old, found)
        except sqlite3.Error as e:
            return found, str(e)
        return found, None

    def fresh(self, rows: list[tuple[Any, ...]]) -> tuple[sqlite3.Connection, list[int]]:
        """A fresh database at the path holding ``rows`` (call with every connection to the old file
        closed). Whatever is at the path is not the file the outbox opened (a replacement, or a -wal/-shm
        of the old file): it is moved to quarantine first, never written to or applied."""
        there = tuple(s for s in ("", "-wal", "-shm") if Path(f"{self.path}{s}").exists())
        if there:
            prune_quarantine(self.path, self.quarantine_keep, protect=quarantine(self.path, there))
        new = open_db(self.path, self.sync)
        seqs = copy_into(new, rows)
        ensure_identity(new, self.sidecar)
        self.watch.reset()
        return new, seqs
