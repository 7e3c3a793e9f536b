"""A database file that vanishes (or is replaced) under the running outbox: noticed by the writer at each
maintenance pass (st_ino of the path), answered by moving to a fresh file at the same path. The rows are
carried over from the still-open connection to the unlinked file (an open file outlives its name), so
nothing is lost when that read succeeds; what cannot be read is reported lost (``"db_lost"``). Seqs
continue where they were (the writer's ``last_seq``, never below the sidecar's reservation): the agent
never keeps writing into an unlinked file.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

from edge_agent.outbox.continuity import FileWatch, ensure_identity
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

    def carry_over(self, old: sqlite3.Connection) -> tuple[sqlite3.Connection, list[int], str | None]:
        """A fresh database at the path holding every un-acked row ``old`` still reads; (the new
        connection, the seqs carried over, the read error if the old file could not be read whole).
        Raises sqlite3.Error when the fresh file cannot be created (the old connection is then kept)."""
        new = open_db(self.path, self.sync)
        found = Salvage()
        err = None
        try:
            read_salvage(old, found)
        except sqlite3.Error as e:
            err = str(e)
        with contextlib.suppress(sqlite3.Error):
            old.close()
        seqs = copy_into(new, found.rows)
        ensure_identity(new, self.sidecar)
        self.watch.reset()
        return new, seqs, err
