"""A database file that vanishes (or is replaced) under the running outbox: noticed by the writer at each
maintenance pass (st_ino of the path), answered by moving to a fresh file at the same path. The rows are
carried over from the still-open connection to the unlinked file (an open file outlives its name), so
nothing is lost when that read succeeds; what cannot be read is reported lost (``"db_lost"``). Seqs
continue where they were (the writer's ``last_seq``, never below the sidecar's reservation): the agent
never keeps writing into an unlinked file.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from edge_agent.outbox.continuity import FileWatch, ensure_identity, quarantine
from edge_agent.outbox.recovery import Salvage, SeqSidecar, copy_into, read_salvage
from edge_agent.outbox.schema import open_db

log = logging.getLogger("edge_agent.outbox")


class Reopener:
    def __init__(self, path: Path, sync: str, sidecar: SeqSidecar) -> None:
        self.path = path
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
        closed); a -wal/-shm still at the path belongs to the old file and is moved to quarantine first,
        so SQLite never applies it to the new one."""
        leftovers = tuple(s for s in ("-wal", "-shm") if Path(f"{self.path}{s}").exists())
        if leftovers and not self.path.exists():
            quarantine(self.path, leftovers)
        new = open_db(self.path, self.sync)
        seqs = copy_into(new, rows)
        ensure_identity(new, self.sidecar)
        self.watch.reset()
        return new, seqs
