"""The history schema and its writes: store a message, move its status, receipts, read marks, retention.

::

    messages   id (rowid) | mid "dev:seq" UNIQUE | sender, seq | outgoing | kind msg/file/stream
               peer (direct) | grp (group) | stream | conv "peer:x"/"group:g"/"stream:s" | ts | data
               body (searchable text) | status, reason | expires | unread | notified | rcpt
    messages_fts   FTS5 over body (external content, kept by triggers)
    convs      conv -> last message (summary() without a scan of the history)
    receipts   (mid, peer) -> delivered/read  (per member of a group)
    outseq     outbox seq -> mid, for outgoing messages not yet acknowledged by the broker

Incoming duplicates (QoS 1 redelivery) are dropped by the UNIQUE mid, which is the sender's device
id and outbox seq. Retention (age and size) deletes the oldest rows; ``auto_vacuum=INCREMENTAL``
lets the file shrink without a blocking VACUUM.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from edge_agent import codec
from edge_agent.messaging.history.db import Database
from edge_agent.messaging.history.records import FINAL, OPEN, RANK, READ, body_text, can_move, conv_key

log = logging.getLogger("edge_agent.messaging.history")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id       INTEGER PRIMARY KEY,
    mid      TEXT    NOT NULL UNIQUE,
    sender   TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    outgoing INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    peer     TEXT,
    grp      TEXT,
    stream   TEXT,
    cls      TEXT,
    conv     TEXT    NOT NULL,
    ts       REAL    NOT NULL,
    stored   REAL    NOT NULL,
    data     BLOB,
    body     TEXT    NOT NULL DEFAULT '',
    status   TEXT    NOT NULL,
    reason   TEXT    NOT NULL DEFAULT '',
    expires  REAL,
    unread   INTEGER NOT NULL DEFAULT 0,
    notified INTEGER NOT NULL DEFAULT 1,
    rcpt     INTEGER NOT NULL DEFAULT 0,
    updated  REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ts     ON messages (ts, id);
CREATE INDEX IF NOT EXISTS messages_peer   ON messages (peer, ts, id) WHERE peer IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_grp    ON messages (grp, ts, id) WHERE grp IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_stream ON messages (stream, ts, id) WHERE stream IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender, ts, id);
CREATE INDEX IF NOT EXISTS messages_unread ON messages (conv) WHERE unread = 1;
CREATE INDEX IF NOT EXISTS messages_notify ON messages (id) WHERE notified = 0;
CREATE INDEX IF NOT EXISTS messages_rcpt   ON messages (id) WHERE outgoing = 0 AND kind != 'stream' AND rcpt < 2;
CREATE INDEX IF NOT EXISTS messages_open   ON messages (expires)
    WHERE outgoing = 1 AND status IN ('pending', 'queued', 'sent');
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(body, content='messages', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER IF NOT EXISTS messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
END;
CREATE TABLE IF NOT EXISTS convs (
    conv    TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL,
    last_ts REAL    NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    mid    TEXT NOT NULL,
    peer   TEXT NOT NULL,
    status TEXT NOT NULL,
    ts     REAL NOT NULL,
    PRIMARY KEY (mid, peer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outseq (
    seq   INTEGER PRIMARY KEY,
    mid   TEXT    NOT NULL,
    state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outseq_mid ON outseq (mid);
"""

_OPEN_SQL = ",".join(f"'{s}'" for s in OPEN)
_INSERT = ("INSERT OR IGNORE INTO messages (mid, sender, seq, outgoing, kind, peer, grp, stream, cls, conv, ts, "
           "stored, data, body, status, expires, unread, notified, updated) "
           "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")

_ROW_MARKS = "(" + ",".join("?" * 19) + ")"
_PART = 200  # rows per multi-row INSERT (19 parameters each: well under SQLite's 32,766)

#: One message as stored: the 19 columns of :data:`_INSERT` in order, then its outbox seqs (a list).
Row = list[Any]


def make_row(*, mid: str, sender: str, seq: int, outgoing: bool, kind: str, blob: bytes, body: str, ts: float,
             status: str, peer: str | None, group: str | None, stream: str | None, expires: float | None,
             notified: bool, now: float, outseqs: Sequence[int], cls: str | None, unread: bool | None) -> Row:
    """The row :func:`insert_row` stores (plain values: it also goes into the journal, see pending.py)."""
    conv = conv_key(peer, group, stream, sender, outgoing)
    unread_flag = int(not outgoing) if unread is None else int(unread)
    return [mid, sender, seq, int(outgoing), kind, peer, group, stream, cls, conv, ts, now, blob, body, status,
            expires, unread_flag, int(notified), now, list(outseqs)]


def insert_row(db: sqlite3.Connection, row: Row) -> int | None:
    """Insert one message (in the caller's transaction); its row id, or None for a duplicate ``mid``."""
    cur = db.execute(_INSERT, row[:19])
    if cur.rowcount == 0:
        return None
    rowid = cur.lastrowid
    db.execute("INSERT INTO convs VALUES (?,?,?) ON CONFLICT (conv) DO UPDATE SET "
               "last_id=excluded.last_id, last_ts=excluded.last_ts "
               "WHERE excluded.last_ts >= convs.last_ts", (row[9], rowid, row[10]))
    if row[19]:
        db.executemany("INSERT OR REPLACE INTO outseq (seq, mid, state) VALUES (?,?,0)",
                       ((s, row[0]) for s in row[19]))
    return rowid


def insert_rows(db: sqlite3.Connection, rows: Sequence[Row]) -> int:
    """:func:`insert_row` for many outgoing rows of one outbox seq each (``outseqs == [seq]``), with a few
    statements per :data:`_PART` rows instead of three per row (every statement lets go of the GIL and
    takes it back); the same rows, conversation pointers and seqs result. Return how many were new."""
    n = 0
    for i in range(0, len(rows), _PART):
        part = rows[i:i + _PART]
        before = db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]
        db.execute(_INSERT.replace("VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                   "VALUES " + ",".join([_ROW_MARKS] * len(part))),
                   [v for r in part for v in r[:19]])
        added = db.execute("SELECT COUNT(*) FROM messages WHERE id > ?", (before,)).fetchone()[0]
        if not added:
            continue
        n += added
        db.execute("INSERT INTO convs SELECT conv, id, ts FROM messages WHERE id > ? ORDER BY id "
                   "ON CONFLICT (conv) DO UPDATE SET last_id=excluded.last_id, last_ts=excluded.last_ts "
                   "WHERE excluded.last_ts >= convs.last_ts", (before,))
        db.execute("INSERT OR REPLACE INTO outseq (seq, mid, state) SELECT seq, mid, 0 FROM messages "
                   "WHERE id > ? AND outgoing = 1", (before,))
    return n


def mark_sent(db: sqlite3.Connection, mids: Sequence[str], now: float) -> None:
    """The outgoing messages ``mids`` (pending or queued; one outbox seq each) are sent: their seqs are over."""
    for i in range(0, len(mids), _PART * 10):
        part = list(mids[i:i + _PART * 10])
        marks = ",".join("?" * len(part))
        db.execute(f"UPDATE messages SET status='sent', reason='', updated=? WHERE mid IN ({marks}) AND "
                   "status IN ('pending','queued')", (now, *part))
        db.execute(f"DELETE FROM outseq WHERE mid IN ({marks})", part)


def mark_queued(db: sqlite3.Connection, seqs: Sequence[int], mids: Sequence[str], now: float) -> None:
    """The outbox committed ``seqs``: the pending messages ``mids`` (one seq each) are queued."""
    for i in range(0, len(mids), _PART * 10):
        ps, pm = list(seqs[i:i + _PART * 10]), list(mids[i:i + _PART * 10])
        db.execute(f"UPDATE outseq SET state=1 WHERE state<1 AND seq IN ({','.join('?' * len(ps))})", ps)
        db.execute(f"UPDATE messages SET status='queued', updated=? WHERE status='pending' AND "
                   f"mid IN ({','.join('?' * len(pm))})", (now, *pm))


class Store:
    """The writing half of :class:`~edge_agent.messaging.history.History` (on ``self.db``)."""

    db: Database
    max_age: float
    max_bytes: int
    _inserts_since_trim: int

    def add(self, *, mid: str, sender: str, seq: int, outgoing: bool, kind: str, data: Any, ts: float,
            status: str, peer: str | None = None, group: str | None = None, stream: str | None = None,
            expires: float | None = None, notified: bool = True, now: float | None = None,
            outseqs: Sequence[int] = (), cls: str | None = None, unread: bool | None = None,
            stored: Callable[[int], None] | None = None) -> int | None:
        """Insert one message; return its row id, or None if ``mid`` is already there (a duplicate).
        ``stored(rowid)`` is called for a new message once that is known, before it is inserted and
        committed (either may still fail)."""
        with self.db.tx() as db:
            if stored is not None:  # one statement: is it new, and the row id it will get
                dup, nxt = db.execute("SELECT EXISTS (SELECT 1 FROM messages WHERE mid=?), "
                                      "(SELECT COALESCE(MAX(id), 0) + 1 FROM messages)", (mid,)).fetchone()
                if dup:
                    return None
                stored(nxt)
            rowid = insert_row(db, make_row(
                mid=mid, sender=sender, seq=seq, outgoing=outgoing, kind=kind, blob=codec.encode(data),
                body=body_text(data), ts=ts, status=status, peer=peer, group=group, stream=stream, expires=expires,
                notified=notified, now=time.time() if now is None else now, outseqs=outseqs, cls=cls, unread=unread))
        if rowid is not None:
            self._inserts_since_trim += 1
        return rowid

    def set_status(self, mid: str, status: str, reason: str = "", *, now: float | None = None) -> bool:
        """Move an outgoing message to ``status`` if that is a step forward; True if it moved."""
        now = time.time() if now is None else now
        with self.db.tx() as db:
            row = db.execute("SELECT status FROM messages WHERE mid=? AND outgoing=1", (mid,)).fetchone()
            if row is None or not can_move(row[0], status):
                return False
            db.execute("UPDATE messages SET status=?, reason=?, updated=? WHERE mid=?", (status, reason, now, mid))
            if status in ("sent", "delivered", "read", *FINAL):
                db.execute("DELETE FROM outseq WHERE mid=?", (mid,))
        return True

    def apply_receipt(self, mid: str, by: str, status: str, *, now: float | None = None) -> tuple[bool, str]:
        """A delivered/read receipt from ``by`` for our message ``mid``: record it and return
        (news, current status). A direct message accepts receipts only from its recipient."""
        now = time.time() if now is None else now
        with self.db.tx() as db:
            row = db.execute("SELECT peer, grp, status FROM messages WHERE mid=? AND outgoing=1", (mid,)).fetchone()
            if row is None:
                return False, ""
            peer, grp, cur = row
            if grp is None and peer != by:
                log.warning("receipt for %s from %s ignored: the message was sent to %s", mid, by, peer)
                return False, cur
            old = db.execute("SELECT status FROM receipts WHERE mid=? AND peer=?", (mid, by)).fetchone()
            if old is not None and RANK.get(old[0], 0) >= RANK[status]:
                return False, cur
            db.execute("INSERT OR REPLACE INTO receipts VALUES (?,?,?,?)", (mid, by, status, now))
        return True, cur

    def mark_read(self, ids: Iterable[str] | None = None, *, peer: str | None = None, group: str | None = None,
                  stream: str | None = None, now: float | None = None) -> dict[str, list[str]]:
        """Mark unread incoming messages read; return {sender: [mid, ...]} of those that changed."""
        now = time.time() if now is None else now
        where, args = ["unread=1", "outgoing=0"], []
        if ids is not None:
            id_list = list(ids)
            if not id_list:
                return {}
            where.append(f"mid IN ({','.join('?' * len(id_list))})")
            args += id_list
        for clause, val in (("peer=? AND grp IS NULL", peer), ("grp=?", group), ("stream=?", stream)):
            if val is not None:
                where.append(clause)
                args.append(val)
        out: dict[str, list[str]] = {}
        with self.db.tx() as db:
            rows = db.execute(f"SELECT id, mid, sender FROM messages WHERE {' AND '.join(where)}", args).fetchall()
            for _, mid, sender in rows:
                out.setdefault(sender, []).append(mid)
            db.executemany("UPDATE messages SET unread=0, status=?, updated=? WHERE id=?",
                           ((READ, now, r[0]) for r in rows))
        return out

    def expire_due(self, now: float | None = None) -> list[str]:
        """Outgoing messages past their TTL that were never delivered: mark them expired; return mids."""
        now = time.time() if now is None else now
        with self.db.tx() as db:
            mids = [r[0] for r in db.execute(
                f"SELECT mid FROM messages WHERE outgoing=1 AND status IN ({_OPEN_SQL}) AND expires < ?", (now,))]
            for mid in mids:
                db.execute("UPDATE messages SET status='expired', reason=?, updated=? WHERE mid=?",
                           ("not delivered before its time-to-live ran out", now, mid))
                db.execute("DELETE FROM outseq WHERE mid=?", (mid,))
        return mids

    # ------------------------------------------------------------------ retention
    def trim(self, now: float | None = None) -> int:
        """Apply retention: drop rows older than max_age, then the oldest until under max_bytes."""
        now = time.time() if now is None else now
        with self.db:  # one trim at a time; the lock is re-entrant
            self._inserts_since_trim = 0
            with self.db.tx() as db:
                removed = db.execute("DELETE FROM messages WHERE stored < ?", (now - self.max_age,)).rowcount
            removed += self._trim_to_size()
            if removed:
                self._tidy_after_trim()
                log.info("history retention: removed %d message(s)", removed)
        return removed

    def _trim_to_size(self) -> int:
        removed = 0
        for _ in range(50):
            if self.size_bytes() <= self.max_bytes:
                break
            with self.db.tx() as db:
                total = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
                if total == 0:
                    break
                removed += db.execute("DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id "
                                      "LIMIT ?)", (max(1, total // 10),)).rowcount
            with self.db as conn:
                conn.executescript("PRAGMA incremental_vacuum;")  # sqlite3_exec steps to the end
        return removed

    def _tidy_after_trim(self) -> None:
        """Receipts and conversation pointers of removed rows go too; free pages go back to the disk."""
        with self.db.tx() as db:
            db.execute("DELETE FROM receipts WHERE mid NOT IN (SELECT mid FROM messages)")
            db.execute("DELETE FROM convs WHERE conv NOT IN (SELECT DISTINCT conv FROM messages)")
            db.execute("UPDATE convs SET (last_id, last_ts) = (SELECT id, ts FROM messages m WHERE "
                       "m.conv = convs.conv ORDER BY ts DESC, id DESC LIMIT 1) "
                       "WHERE last_id NOT IN (SELECT id FROM messages)")
        with self.db as conn:
            conn.executescript("PRAGMA incremental_vacuum;")  # sqlite3_exec steps to the end
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the file shrinks at a checkpoint

    def maybe_trim(self, every: int = 1000) -> int:
        """After ``every`` inserts: the size limit only (cheap while under it). The age limit needs a scan of
        the whole table (``stored`` has no index: one more per insert would cost more), so it is left to the
        full :meth:`trim` the service runs every few minutes."""
        if self._inserts_since_trim < every:
            return 0
        with self.db:
            self._inserts_since_trim = 0
            removed = self._trim_to_size()
            if removed:
                self._tidy_after_trim()
                log.info("history retention: removed %d message(s) over the size limit", removed)
        return removed

    def size_bytes(self) -> int:
        with self.db as conn:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            count = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((count - free) * page)
