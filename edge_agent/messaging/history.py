"""The local message history: ``history.db`` in the state dir (SQLite, WAL, FTS5). Owned by messaging only.

Every message this device sends or receives is one row of ``messages``; the row of an outgoing
message also carries its delivery status, so a restart of either side loses no status. The outbox
is a separate database (it is a queue that empties; this is a record that stays)::

    messages   id (rowid) | mid "dev:seq" UNIQUE | sender, seq | outgoing | kind msg/file/stream
               peer (direct) | grp (group) | stream | conv "peer:x"/"group:g"/"stream:s" | ts | data
               body (searchable text) | status, reason | expires | unread | notified
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
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent import codec
from edge_agent.errors import EdgeAgentError

log = logging.getLogger("edge_agent.messaging.history")

HISTORY_FILE = "history.db"

# Status of an outgoing message. Ranks order the normal path; failed/expired end it (but a later
# delivered/read receipt is evidence that wins: the recipient has the message).
STATUSES = ("pending", "queued", "sent", "delivered", "read", "failed", "expired")
_RANK = {s: i for i, s in enumerate(STATUSES)}
FINAL = ("failed", "expired")
# Status of an incoming message.
RECEIVED, READ = "received", "read"
KINDS = ("msg", "file", "stream")  # direct/group message, file, telemetry-style stream message

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

_COLS = ("id, mid, sender, seq, outgoing, kind, peer, grp, stream, conv, ts, stored, data, status, reason, "
         "expires, unread, updated, cls")


class HistoryError(EdgeAgentError, ValueError):
    """A history query is invalid, or the history database cannot be used."""


@dataclass
class Message:
    """One message, sent or received, as kept in the history.

    ``id`` is global: ``"<sender device>:<sender outbox seq>"``. ``status`` for an outgoing message is
    pending, queued, sent, delivered, read, failed or expired; for an incoming one received or read.
    ``receipts`` maps each recipient that answered (several for a group) to delivered/read.
    """

    id: str
    sender: str
    seq: int
    outgoing: bool
    kind: str
    data: Any
    ts: float
    status: str
    to: str | None = None
    group: str | None = None
    stream: str | None = None
    reason: str = ""
    expires: float | None = None
    unread: bool = False
    stored: float = 0.0
    updated: float = 0.0
    receipts: dict[str, str] = field(default_factory=dict)
    cls: str | None = None

    @property
    def peer(self) -> str | None:
        """The other side of a direct conversation (recipient if outgoing, sender if incoming)."""
        return self.to

    @property
    def text(self) -> str:
        return self.data if isinstance(self.data, str) else body_text(self.data)

    def as_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "sender": self.sender, "seq": self.seq, "outgoing": self.outgoing,
             "kind": self.kind, "peer": self.to, "group": self.group, "stream": self.stream,
             "ts": self.ts, "status": self.status, "reason": self.reason, "expires": self.expires,
             "unread": self.unread, "cls": self.cls, "data": self.data}
        if self.receipts:
            d["receipts"] = dict(self.receipts)
        return d


@dataclass
class ConvSummary:
    """The last message of one conversation (``kind`` peer, group or stream) and its unread count."""

    conv: str
    kind: str
    name: str
    last: Message
    unread: int

    def as_dict(self) -> dict[str, Any]:
        return {"conv": self.conv, "kind": self.kind, "name": self.name, "unread": self.unread,
                "last": self.last.as_dict()}


def body_text(data: Any, limit: int = 8192) -> str:
    """The searchable text of a message: its string values (and file names), depth-first, bounded."""
    out: list[str] = []
    size = 0

    def walk(x: Any, depth: int) -> None:
        nonlocal size
        if size >= limit or depth > 8:
            return
        if isinstance(x, str):
            out.append(x)
            size += len(x) + 1
        elif isinstance(x, dict):
            for v in x.values():
                walk(v, depth + 1)
        elif isinstance(x, list | tuple):
            for v in x:
                walk(v, depth + 1)

    walk(data, 0)
    return " ".join(out)[:limit]


def conv_key(peer: str | None, group: str | None, stream: str | None, sender: str, outgoing: bool) -> str:
    if group:
        return f"group:{group}"
    if peer:
        return f"peer:{peer}"
    return f"stream:{stream}" if outgoing else f"stream:{sender}/{stream}"


_TOKEN = re.compile(r"\w+\*?", re.UNICODE)


def fts_query(text: str) -> str:
    """Plain words -> an FTS5 query (all words, each may end with * for a prefix). No FTS syntax leaks
    through, so user text such as ``AND (`` cannot produce a syntax error or a different query."""
    toks = _TOKEN.findall(text)
    if not toks:
        raise HistoryError(f"search text {text!r} has no words to search for")
    return " ".join(f'"{t[:-1]}"*' if t.endswith("*") else f'"{t}"' for t in toks)


def to_epoch(v: float | int | str | datetime | None, name: str) -> float | None:
    """since/until: epoch seconds, a datetime, an ISO 8601 string, or a relative age '90s', '15m', '2h', '3d'."""
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.timestamp()
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", v)
        if m:
            mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
            return time.time() - float(m.group(1)) * mult
        try:
            return float(v)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(v).timestamp()
        except ValueError:
            pass
    raise HistoryError(f"{name}: expected epoch seconds, an ISO 8601 date/time or an age like '2h' / '3d', "
                       f"got {v!r}")


class History:
    """The history database. Thread-safe (one connection behind a lock); ``readonly`` for the CLI."""

    def __init__(self, path: str | os.PathLike[str], *, max_age: float = 30 * 86400.0,
                 max_bytes: int = 64 * 1024 * 1024, sync: str = "normal", readonly: bool = False) -> None:
        self.path = Path(path)
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.readonly = readonly
        self._lock = threading.RLock()
        self._inserts_since_trim = 0
        try:
            if readonly:
                if not self.path.exists():
                    raise HistoryError(f"{self.path}: no message history here (has an agent with messaging "
                                       "run with this storage.dir?)")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10,
                                           check_same_thread=False, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only effective on a new file
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
                self._db.execute("PRAGMA journal_size_limit=8388608")
                self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise HistoryError(f"{self.path}: cannot open history database: {e}") from e
        self._closed = False

    # ------------------------------------------------------------------ writing
    def _tx(self) -> _Tx:
        return _Tx(self)

    def add(self, *, mid: str, sender: str, seq: int, outgoing: bool, kind: str, data: Any, ts: float,
            status: str, peer: str | None = None, group: str | None = None, stream: str | None = None,
            expires: float | None = None, notified: bool = True, now: float | None = None,
            outseqs: Sequence[int] = (), cls: str | None = None, unread: bool | None = None) -> int | None:
        """Insert one message; return its row id, or None if ``mid`` is already there (a duplicate)."""
        now = time.time() if now is None else now
        conv = conv_key(peer, group, stream, sender, outgoing)
        unread_flag = int(not outgoing) if unread is None else int(unread)
        blob = codec.encode(data)
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO messages (mid, sender, seq, outgoing, kind, peer, grp, stream, cls, conv, ts, "
                "stored, data, body, status, expires, unread, notified, updated) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (mid, sender, seq, int(outgoing), kind, peer, group, stream, cls, conv, ts, now, blob,
                 body_text(data), status, expires, unread_flag, int(notified), now))
            if cur.rowcount == 0:
                return None
            rowid = cur.lastrowid
            db.execute("INSERT INTO convs VALUES (?,?,?) ON CONFLICT (conv) DO UPDATE SET "
                       "last_id=excluded.last_id, last_ts=excluded.last_ts "
                       "WHERE excluded.last_ts >= convs.last_ts", (conv, rowid, ts))
            if outseqs:
                db.executemany("INSERT OR REPLACE INTO outseq (seq, mid, state) VALUES (?,?,0)",
                               ((s, mid) for s in outseqs))
        self._inserts_since_trim += 1
        return rowid

    def set_status(self, mid: str, status: str, reason: str = "", *, now: float | None = None) -> bool:
        """Move an outgoing message to ``status`` if that is a step forward; True if it moved."""
        now = time.time() if now is None else now
        with self._tx() as db:
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
        with self._tx() as db:
            row = db.execute("SELECT peer, grp, status FROM messages WHERE mid=? AND outgoing=1", (mid,)).fetchone()
            if row is None:
                return False, ""
            peer, grp, cur = row
            if grp is None and peer != by:
                log.warning("receipt for %s from %s ignored: the message was sent to %s", mid, by, peer)
                return False, cur
            old = db.execute("SELECT status FROM receipts WHERE mid=? AND peer=?", (mid, by)).fetchone()
            if old is not None and _RANK.get(old[0], 0) >= _RANK[status]:
                return False, cur
            db.execute("INSERT OR REPLACE INTO receipts VALUES (?,?,?,?)", (mid, by, status, now))
        return True, cur

    def add_outseqs(self, mid: str, seqs: Sequence[int]) -> None:
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO outseq (seq, mid, state) VALUES (?,?,0)", ((s, mid) for s in seqs))

    def min_outseq_state(self, mid: str) -> int | None:
        with self._lock:
            return self._db.execute("SELECT MIN(state) FROM outseq WHERE mid=?", (mid,)).fetchone()[0]

    def outseq_count(self, mid: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outseq WHERE mid=?", (mid,)).fetchone()[0])

    def forget_mid(self, mid: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outseq WHERE mid=?", (mid,))

    def mark_outseqs(self, seqs: Iterable[int], state: int) -> dict[str, int]:
        """Raise the per-seq state of tracked outgoing seqs (1 queued, 2 sent); return {mid: min state}
        for the messages touched, so a file message moves only when all its chunks have."""
        seqs = list(seqs)
        out: dict[str, int] = {}
        with self._tx() as db:
            mids: set[str] = set()
            for i in range(0, len(seqs), 500):
                part = seqs[i:i + 500]
                marks = ",".join("?" * len(part))
                db.execute(f"UPDATE outseq SET state=? WHERE state<? AND seq IN ({marks})", (state, state, *part))
                mids.update(r[0] for r in db.execute(f"SELECT mid FROM outseq WHERE seq IN ({marks})", part))
            for mid in mids:
                out[mid] = db.execute("SELECT MIN(state) FROM outseq WHERE mid=?", (mid,)).fetchone()[0]
        return out

    def outseq_mids(self, seqs: Iterable[int]) -> dict[int, str]:
        seqs = list(seqs)
        out: dict[int, str] = {}
        with self._lock:
            for i in range(0, len(seqs), 500):
                part = seqs[i:i + 500]
                out.update(self._db.execute(f"SELECT seq, mid FROM outseq WHERE seq IN ({','.join('?' * len(part))})",
                                            part).fetchall())
        return out

    def tracked_seqs(self) -> dict[int, tuple[str, int]]:
        with self._lock:
            return {s: (m, st) for s, m, st in self._db.execute("SELECT seq, mid, state FROM outseq")}

    def forget_outseqs(self, seqs: Iterable[int]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM outseq WHERE seq=?", ((s,) for s in seqs))

    def rename(self, mid: str, new_mid: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE messages SET mid=? WHERE mid=?", (new_mid, mid))
            db.execute("UPDATE outseq SET mid=? WHERE mid=?", (new_mid, mid))

    def set_receipt_stored(self, mids: Sequence[str], level: int) -> None:
        """The receipt for these received messages is committed in the outbox (1 delivered, 2 read)."""
        with self._tx() as db:
            for i in range(0, len(mids), 500):
                part = list(mids[i:i + 500])
                db.execute(f"UPDATE messages SET rcpt=? WHERE rcpt<? AND mid IN ({','.join('?' * len(part))})",
                           (level, level, *part))

    def receipts_owed(self) -> list[tuple[str, str, str]]:
        """(mid, sender, 'delivered'|'read') for received messages whose receipt never reached the outbox
        (the agent died within a group commit of storing the message or marking it read)."""
        with self._lock:
            rows = self._db.execute("SELECT mid, sender, status, rcpt FROM messages WHERE outgoing=0 AND "
                                    "kind != 'stream' AND rcpt < 2 ORDER BY id").fetchall()
        out = []
        for mid, sender, status, rcpt in rows:
            if status == READ:
                out.append((mid, sender, "read"))
            elif rcpt < 1:
                out.append((mid, sender, "delivered"))
        return out

    def set_notified(self, mids: Iterable[str]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE messages SET notified=1 WHERE mid=?", ((m,) for m in mids))

    def unnotified(self, limit: int = 100) -> list[Message]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM messages WHERE notified=0 ORDER BY id LIMIT ?",
                                    (limit,)).fetchall()
        return [self._message(r) for r in rows]

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
        if peer is not None:
            where.append("peer=? AND grp IS NULL")
            args.append(peer)
        if group is not None:
            where.append("grp=?")
            args.append(group)
        if stream is not None:
            where.append("stream=?")
            args.append(stream)
        out: dict[str, list[str]] = {}
        with self._tx() as db:
            rows = db.execute(f"SELECT id, mid, sender FROM messages WHERE {' AND '.join(where)}", args).fetchall()
            for _, mid, sender in rows:
                out.setdefault(sender, []).append(mid)
            db.executemany("UPDATE messages SET unread=0, status=?, updated=? WHERE id=?",
                           ((READ, now, r[0]) for r in rows))
        return out

    def expire_due(self, now: float | None = None) -> list[str]:
        """Outgoing messages past their TTL that were never delivered: mark them expired; return mids."""
        now = time.time() if now is None else now
        with self._tx() as db:
            mids = [r[0] for r in db.execute(
                "SELECT mid FROM messages WHERE outgoing=1 AND status IN ('pending','queued','sent') "
                "AND expires < ?", (now,))]
            for mid in mids:
                db.execute("UPDATE messages SET status='expired', reason=?, updated=? WHERE mid=?",
                           ("not delivered before its time-to-live ran out", now, mid))
                db.execute("DELETE FROM outseq WHERE mid=?", (mid,))
        return mids

    def trim(self, now: float | None = None) -> int:
        """Apply retention: drop rows older than max_age, then the oldest until under max_bytes."""
        now = time.time() if now is None else now
        removed = 0
        with self._lock:
            self._inserts_since_trim = 0
            with self._tx() as db:
                removed += db.execute("DELETE FROM messages WHERE stored < ?", (now - self.max_age,)).rowcount
            for _ in range(50):
                if self.size_bytes() <= self.max_bytes:
                    break
                total = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
                if total == 0:
                    break
                n = max(1, total // 10)
                with self._tx() as db:
                    removed += db.execute("DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id "
                                          "LIMIT ?)", (n,)).rowcount
                self._db.executescript("PRAGMA incremental_vacuum;")  # sqlite3_exec steps to the end
            if removed:
                with self._tx() as db:
                    db.execute("DELETE FROM receipts WHERE mid NOT IN (SELECT mid FROM messages)")
                    db.execute("DELETE FROM convs WHERE conv NOT IN (SELECT DISTINCT conv FROM messages)")
                    db.execute("UPDATE convs SET (last_id, last_ts) = (SELECT id, ts FROM messages m WHERE "
                               "m.conv = convs.conv ORDER BY ts DESC, id DESC LIMIT 1) "
                               "WHERE last_id NOT IN (SELECT id FROM messages)")
                self._db.executescript("PRAGMA incremental_vacuum;")  # sqlite3_exec steps to the end
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the file shrinks at a checkpoint
                log.info("history retention: removed %d message(s)", removed)
        return removed

    def maybe_trim(self, every: int = 1000) -> int:
        return self.trim() if self._inserts_since_trim >= every else 0

    def size_bytes(self) -> int:
        with self._lock:
            page = self._db.execute("PRAGMA page_size").fetchone()[0]
            count = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((count - free) * page)

    # ------------------------------------------------------------------ reading
    def get(self, mid: str) -> Message | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLS} FROM messages WHERE mid=?", (mid,)).fetchone()
            return None if row is None else self._message(row, receipts=True)

    def query(self, *, peer: str | None = None, group: str | None = None, stream: str | None = None,
              sender: str | None = None, since: Any = None, until: Any = None, search: str | None = None,
              unread: bool | None = None, kind: str | None = None, limit: int | None = None,
              newest_first: bool = False, page: int = 500) -> Iterator[Message]:
        """Messages matching every filter given, ordered by time (then arrival). Lazy: rows are read
        ``page`` at a time (keyset pagination), so iterating a large history does not load it all."""
        where, args = self._filters(peer=peer, group=group, stream=stream, sender=sender, since=since,
                                    until=until, search=search, unread=unread, kind=kind)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise HistoryError(f"limit must be a non-negative integer, got {limit!r}")
        order = "DESC" if newest_first else "ASC"
        cmp = "<" if newest_first else ">"
        left = limit
        cursor: tuple[float, int] | None = None
        while left is None or left > 0:
            n = page if left is None else min(page, left)
            w, a = list(where), list(args)
            if cursor is not None:
                w.append(f"(ts, id) {cmp} (?, ?)")
                a += cursor
            sql = (f"SELECT {_COLS} FROM messages WHERE {' AND '.join(w) or '1'} "
                   f"ORDER BY ts {order}, id {order} LIMIT ?")
            with self._lock:
                try:
                    rows = self._db.execute(sql, (*a, n)).fetchall()
                except sqlite3.OperationalError as e:
                    raise HistoryError(f"history query failed: {e}") from e
            for r in rows:
                yield self._message(r)
            if len(rows) < n:
                return
            cursor = (rows[-1][10], rows[-1][0])
            if left is not None:
                left -= len(rows)

    def _filters(self, *, peer: str | None, group: str | None, stream: str | None, sender: str | None,
                 since: Any, until: Any, search: str | None, unread: bool | None,
                 kind: str | None = None) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        for col, val, name in (("peer", peer, "peer"), ("grp", group, "group"), ("stream", stream, "stream"),
                               ("sender", sender, "sender")):
            if val is not None:
                if not isinstance(val, str) or not val:
                    raise HistoryError(f"{name} must be a non-empty string, got {val!r}")
                where.append(f"{col} = ?")
                args.append(val)
        if peer is not None:
            where.append("grp IS NULL")
        if kind is not None:
            if kind not in KINDS:
                raise HistoryError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
            where.append("kind = ?")
            args.append(kind)
        lo, hi = to_epoch(since, "since"), to_epoch(until, "until")
        if lo is not None:
            where.append("ts >= ?")
            args.append(lo)
        if hi is not None:
            where.append("ts < ?")
            args.append(hi)
        if lo is not None and hi is not None and hi < lo:
            raise HistoryError(f"until ({hi}) is before since ({lo})")
        if unread is not None:
            where.append("unread = ?")
            args.append(int(bool(unread)))
        if search is not None:
            if not isinstance(search, str):
                raise HistoryError(f"search must be a string, got {search!r}")
            where.append("id IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?)")
            args.append(fts_query(search))
        return where, args

    def summary(self) -> list[ConvSummary]:
        """Last message of every conversation (newest first) with its unread count."""
        with self._lock:
            unread = dict(self._db.execute("SELECT conv, COUNT(*) FROM messages WHERE unread=1 GROUP BY conv"))
            rows = self._db.execute(f"SELECT c.conv, {', '.join('m.' + c.strip() for c in _COLS.split(','))} "
                                    "FROM convs c JOIN messages m ON m.id = c.last_id "
                                    "ORDER BY c.last_ts DESC").fetchall()
        out = []
        for r in rows:
            conv = r[0]
            kind, _, name = conv.partition(":")
            out.append(ConvSummary(conv, kind, name, self._message(r[1:]), unread.get(conv, 0)))
        return out

    def unread_count(self, conv: str | None = None) -> int:
        with self._lock:
            if conv is None:
                return int(self._db.execute("SELECT COUNT(*) FROM messages WHERE unread=1").fetchone()[0])
            return int(self._db.execute("SELECT COUNT(*) FROM messages WHERE unread=1 AND conv=?",
                                        (conv,)).fetchone()[0])

    def open_outgoing(self) -> list[tuple[str, str, int]]:
        """(mid, status, seq) of outgoing messages not yet sent (for reconciliation at start)."""
        with self._lock:
            return list(self._db.execute("SELECT mid, status, seq FROM messages WHERE outgoing=1 AND "
                                         "status IN ('pending','queued')"))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def _message(self, r: Sequence[Any], receipts: bool = False) -> Message:
        (_rowid, mid, sender, seq, outgoing, kind, peer, grp, stream, _conv, ts, stored, data, status, reason,
         expires, unread, updated, cls) = r
        try:
            obj = codec.decode(data, max_bytes=64 * 1024 * 1024, max_str=16 * 1024 * 1024,
                               max_bin=16 * 1024 * 1024) if data is not None else None
        except Exception as e:
            obj = None
            log.warning("history: message %s has undecodable data: %s", mid, e)
        m = Message(id=mid, sender=sender, seq=seq, outgoing=bool(outgoing), kind=kind, data=obj, ts=ts,
                    status=status, to=peer, group=grp, stream=stream, reason=reason, expires=expires,
                    unread=bool(unread), stored=stored, updated=updated, cls=cls)
        if receipts:
            m.receipts = dict(self._db.execute("SELECT peer, status FROM receipts WHERE mid=?", (mid,)).fetchall())
        return m

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self.readonly:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as e:
                    log.debug("history checkpoint at close failed: %s", e)
            self._db.close()

    @property
    def closed(self) -> bool:
        return self._closed


class _Tx:
    """``with history._tx() as db``: one IMMEDIATE transaction under the history lock."""

    def __init__(self, h: History) -> None:
        self.h = h

    def __enter__(self) -> sqlite3.Connection:
        self.h._lock.acquire()
        if self.h._closed:
            self.h._lock.release()
            raise HistoryError(f"{self.h.path}: history is closed")
        try:
            self.h._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.h._lock.release()
            raise
        return self.h._db

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        try:
            if et is None:
                self.h._db.execute("COMMIT")
            elif self.h._db.in_transaction:
                self.h._db.execute("ROLLBACK")
        finally:
            self.h._lock.release()


def can_move(old: str, new: str) -> bool:
    """Whether an outgoing message may go from ``old`` to ``new`` (statuses only move forward)."""
    if old == new or new not in _RANK or old not in _RANK:
        return False
    if new in FINAL:
        return old in ("pending", "queued", "sent")
    if old in FINAL:
        return new in ("delivered", "read")
    return _RANK[new] > _RANK[old]
