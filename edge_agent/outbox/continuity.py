"""Files that are healthy but not the ones the outbox left: emptied, removed, rewound, another outbox's
database or WAL, a WAL lost after an unclean stop. SQLite opens all of these without complaint (it even
applies a WAL copied from another database: WAL salts tie frames to their WAL header, not to the
database file), so the outbox recognises them itself:

* a random ``db_id`` lives in the database's ``meta`` (the meta page is written by every commit, so any
  WAL of an outbox carries it) and in the seq sidecar; a mismatch means the file or its WAL is foreign;
* a complete stop checkpoints the WAL into the database (SQLite then removes it) and leaves the marker
  ``outbox.db.clean`` (an empty file is enough: it can be created on a full disk); after any other stop
  the WAL must exist and be non-empty, since every open commits a small ``meta`` row.

What is found is answered with a :class:`Gap`: seqs continue above the sidecar's reservation (they never
go back) and every seq possibly lost is reported (``"db_lost"`` / ``"wal_lost"``). Foreign files are
moved to ``quarantine/`` beside the database, never applied or salvaged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.outbox.schema import meta_int

if TYPE_CHECKING:
    from edge_agent.outbox.recovery import SeqSidecar

log = logging.getLogger("edge_agent.outbox")

QUARANTINE_DIR = "quarantine"
QUARANTINE_KEEP = 5  # storage.quarantine_keep's default
WAL_LIMIT = 8 * 1024 * 1024  # PRAGMA journal_size_limit (schema.open_db)


@dataclass
class Gap:
    reason: str  # the events/dropped reason: "db_lost" or "wal_lost"
    error: str
    foreign_db: bool = False  # the database file itself is not ours: quarantine it, start fresh


def meta_str(db: sqlite3.Connection, key: str) -> str | None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row and row[0] is not None else None


def _set_pattern(path: Path, stamp: str = r"\d{8}T\d{6}Z") -> re.Pattern[str]:
    """The names :func:`quarantine` gives: ``<name>.[corrupt-]<stamp>[.n][-wal|-shm]``."""
    return re.compile(rf"^{re.escape(path.name)}\.(?:corrupt-)?({stamp})(?:\.(\d+))?(?:-wal|-shm)?$")


def quarantine(path: Path, suffixes: tuple[str, ...], tag: str = "") -> Path:
    """Move ``path + suffix`` (those that exist) to ``quarantine/<name>.<tag><UTC stamp>[.n]<suffix>``;
    the base. ``tag`` is ``"corrupt-"`` for a damaged database, empty for a foreign or replaced one.
    Within one second ``n`` counts up past every set of that second still there, so a newer set never
    sorts below an older one (:func:`prune_quarantine` relies on it)."""
    qdir = path.parent / QUARANTINE_DIR
    qdir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    same = _set_pattern(path, stamp)
    taken = [int(m.group(2) or 1) for f in qdir.iterdir() if (m := same.match(f.name))]
    n = max(taken) + 1 if taken else 1
    base = qdir / (f"{path.name}.{tag}{stamp}" if n == 1 else f"{path.name}.{tag}{stamp}.{n}")
    for suffix in suffixes:
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{base}{suffix}")
            log.error("outbox: quarantined %s as %s%s", src, base, suffix)
    return base


def prune_quarantine(path: Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` sets in ``quarantine/`` (a set: one base with its -wal/-shm;
    newest by the UTC stamp in the name), so that repeated damage cannot fill the disk; the files
    removed. ``protect`` (the set just made) is kept whatever its stamp says: a Pi without a real-time
    clock may stamp it in 1970. Also takes in the ``<name>.corrupt-*`` sets that earlier builds left
    beside the database. Files whose names the outbox did not make are never touched."""
    pattern = _set_pattern(path)
    sets: dict[tuple[str, int], list[Path]] = {}
    qdir = path.parent / QUARANTINE_DIR
    try:
        candidates = list(qdir.iterdir()) if qdir.is_dir() else []
        candidates += path.parent.glob(f"{path.name}.corrupt-*")
    except OSError as e:  # never a reason not to start
        log.warning("outbox: cannot list %s to prune it: %s", qdir, e)
        return []
    for f in candidates:
        m = pattern.match(f.name)
        if m and f.is_file():
            sets.setdefault((m.group(1), int(m.group(2) or 1)), []).append(f)
    order = sorted(sets, reverse=True)
    m = pattern.match(protect.name) if protect is not None else None
    if m and (kept := (m.group(1), int(m.group(2) or 1))) in sets:
        order.remove(kept)
        order.insert(0, kept)
    removed: list[Path] = []
    for key in order[max(keep, 1):]:
        for f in sets[key]:
            try:
                f.unlink()
            except OSError as e:
                log.warning("outbox: cannot remove the old quarantined file %s: %s", f, e)
            else:
                removed.append(f)
    if removed:
        log.warning("outbox: quarantine keeps the newest %d set(s) (storage.quarantine_keep); removed %s",
                    keep, ", ".join(str(f) for f in removed))
    return removed


def wal_state(path: Path) -> str:
    """``"missing"``, ``"empty"`` or ``"present"``."""
    try:
        return "present" if os.path.getsize(f"{path}-wal") > 0 else "empty"
    except OSError:
        return "missing"


def foreign_wal(path: Path, sidecar: SeqSidecar) -> str | None:
    """If the WAL beside ``path`` makes the database another outbox's (its ``db_id`` differs from the
    sidecar's), move it (and its -shm) to quarantine before SQLite applies it; what was found."""
    if sidecar.db_id is None or wal_state(path) != "present" or not path.exists():
        return None
    try:  # read-only: it reads through the WAL but never checkpoints it into the database
        ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return None
    try:
        found = meta_str(ro, "db_id")
        readable = ro.execute("SELECT COUNT(*) FROM meta").fetchone() is not None
    except sqlite3.Error:
        return None  # damage: the corruption checks decide
    finally:
        ro.close()
    if not readable or found == sidecar.db_id:
        return None
    base = quarantine(path, ("-wal", "-shm"))
    return (f"foreign write-ahead log (db id {found!r}, expected {sidecar.db_id!r}) moved to {base}-wal; "
            "commits since the last checkpoint are lost")


def find_gap(db: sqlite3.Connection, sc: SeqSidecar, wal: str, wal_note: str | None,
             clean: int | None = None) -> Gap | None:
    """Compare the opened database with the sidecar (and the clean-stop marker's last seq, ``clean``);
    None when it is the one the outbox left."""
    if not sc.known or sc.reserved <= 0:
        return None  # first start (or the sidecar is gone too: nothing to compare with)
    db_id = meta_str(db, "db_id")
    db_last = meta_int(db, "last_seq")
    if db_id is None and db_last == 0 and db.execute("SELECT 1 FROM messages LIMIT 1").fetchone() is None:
        return Gap("db_lost", f"database file missing or empty (seqs up to {sc.reserved} were reserved)")
    if sc.db_id is not None and db_id != sc.db_id:
        return Gap("db_lost", f"database belongs to another outbox (db id {db_id!r}, expected {sc.db_id!r})",
                   foreign_db=True)
    if wal_note:
        return Gap("wal_lost", wal_note)
    if clean is not None and clean > db_last:
        return Gap("db_lost", f"database rewound (an old copy?): last_seq {db_last} < {clean} at the last clean stop")
    if sc.db_id is not None and wal in ("missing", "empty"):
        return Gap("wal_lost", f"write-ahead log {wal} after an unclean stop: commits after the last "
                               f"checkpoint (last_seq {db_last}) are lost")
    return None


def ensure_identity(db: sqlite3.Connection, sc: SeqSidecar) -> None:
    """Give the database a ``db_id`` (kept if it has one) and note the open in ``meta`` (so the WAL is
    never empty while the outbox runs); the sidecar takes the id (written with its next write)."""
    db_id = meta_str(db, "db_id") or secrets.token_hex(8)
    try:
        db.execute("INSERT OR REPLACE INTO meta VALUES ('db_id', ?), ('opened_ms', ?)",
                   (db_id, int(time.time() * 1000)))
    except sqlite3.Error as e:
        log.warning("outbox: cannot record the database id: %s", e)
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        sc.db_id = meta_str(db, "db_id")  # None: the next open adopts whatever it finds
        return
    sc.db_id = db_id


class CleanMarker:
    """``outbox.db.clean``: present after a complete stop (holding the last seq when it could be written)."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".clean")

    def set(self, last_seq: int) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            log.warning("outbox: cannot write %s: %s", self.path, e)
            return
        try:
            os.write(fd, str(last_seq).encode())
            os.fsync(fd)
        except OSError:
            pass  # the empty file marks the stop as clean all the same
        finally:
            os.close(fd)

    def peek(self) -> int | None:
        """The marker's seq (-1 when empty), or None after an unclean stop."""
        try:
            text = self.path.read_text()
        except OSError:
            return None
        try:
            return int(text)
        except ValueError:
            return -1

    def clear(self) -> None:
        """Once the database is open (and running again): the next stop must leave a new marker."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("outbox: cannot remove %s: %s (a crash would look like a clean stop)", self.path, e)


class FileWatch:
    """Notices the database file vanishing or being replaced under a running outbox (st_ino of the path
    differs from the file opened, or the path is gone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ino: int | None = None
        self.sizes = (0, 0)
        self.reset()

    def _stat(self) -> tuple[int | None, int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None, 0, 0
        try:
            wal = os.path.getsize(f"{self.path}-wal")
        except OSError:
            wal = 0
        return st.st_ino, st.st_size, wal

    def moved(self) -> str | None:
        """None while the path still names the opened file, whole; else what happened. In WAL mode the
        database file never shrinks while open, and SQLite truncates the WAL only to the journal size
        limit: anything smaller was done to the files from outside."""
        ino, size, wal = self._stat()
        if ino is None:
            return "database file removed while running"
        if ino != self.ino:
            return "database file replaced while running"
        if size < self.sizes[0]:
            return f"database file truncated while running ({self.sizes[0]} -> {size} bytes)"
        if wal < self.sizes[1] and wal < WAL_LIMIT:
            return f"write-ahead log truncated while running ({self.sizes[1]} -> {wal} bytes)"
        self.sizes = (size, wal)
        return None

    def reset(self) -> None:
        ino, size, wal = self._stat()
        self.ino, self.sizes = ino, (size, wal)
