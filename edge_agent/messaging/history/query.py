"""Reading the history: one message, filtered queries (peer, group, stream, sender, time, full text,
unread, kind), the last message of every conversation, unread counts.

Filters combine (AND). ``since``/``until`` take epoch seconds, a datetime, ISO 8601 text or a relative
age (``'90s'``, ``'15m'``, ``'2h'``, ``'3d'``, ``'1w'``). ``search`` is plain words, all required, a
trailing ``*`` for a prefix; no FTS5 syntax from the caller reaches SQLite.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from edge_agent.messaging.history.db import Database
from edge_agent.messaging.history.records import (
    COLS,
    KINDS,
    TS_COL,
    ConvSummary,
    HistoryError,
    Message,
    message_from_row,
)

_TOKEN = re.compile(r"\w+\*?", re.UNICODE)
_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")
_AGE_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SUMMARY_COLS = ", ".join("m." + c.strip() for c in COLS.split(","))


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
        m = _AGE.fullmatch(v)
        if m:
            return time.time() - float(m.group(1)) * _AGE_UNIT[m.group(2)]
        for parse in (float, lambda s: datetime.fromisoformat(s).timestamp()):
            try:
                return float(parse(v))
            except ValueError:
                pass
    raise HistoryError(f"{name}: expected epoch seconds, an ISO 8601 date/time or an age like '2h' / '3d', "
                       f"got {v!r}")


def filters(*, peer: str | None = None, group: str | None = None, stream: str | None = None,
            sender: str | None = None, since: Any = None, until: Any = None, search: str | None = None,
            unread: bool | None = None, kind: str | None = None) -> tuple[list[str], list[Any]]:
    """SQL conditions and their arguments for the filters given; HistoryError for a bad one."""
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
        where.append("grp IS NULL")  # the direct conversation, not the peer's group messages
    if kind is not None:
        if kind not in KINDS:
            raise HistoryError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        where.append("kind = ?")
        args.append(kind)
    lo, hi = to_epoch(since, "since"), to_epoch(until, "until")
    if lo is not None and hi is not None and hi < lo:
        raise HistoryError(f"until ({hi}) is before since ({lo})")
    for cond, val in (("ts >= ?", lo), ("ts < ?", hi)):
        if val is not None:
            where.append(cond)
            args.append(val)
    if unread is not None:
        where.append("unread = ?")
        args.append(int(bool(unread)))
    if search is not None:
        if not isinstance(search, str):
            raise HistoryError(f"search must be a string, got {search!r}")
        where.append("id IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?)")
        args.append(fts_query(search))
    return where, args


class Query:
    """The reading half of :class:`~edge_agent.messaging.history.History` (on ``self.db``)."""

    db: Database

    def get(self, mid: str) -> Message | None:
        """One message by id, with its per-recipient receipts."""
        with self.db as db:
            row = db.execute(f"SELECT {COLS} FROM messages WHERE mid=?", (mid,)).fetchone()
            if row is None:
                return None
            receipts = dict(db.execute("SELECT peer, status FROM receipts WHERE mid=?", (mid,)).fetchall())
        return message_from_row(row, receipts)

    def query(self, *, peer: str | None = None, group: str | None = None, stream: str | None = None,
              sender: str | None = None, since: Any = None, until: Any = None, search: str | None = None,
              unread: bool | None = None, kind: str | None = None, limit: int | None = None,
              newest_first: bool = False, page: int = 500) -> Iterator[Message]:
        """Messages matching every filter given, ordered by time (then arrival). Lazy: rows are read
        ``page`` at a time (keyset pagination), so iterating a large history does not load it all."""
        where, args = filters(peer=peer, group=group, stream=stream, sender=sender, since=since, until=until,
                              search=search, unread=unread, kind=kind)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise HistoryError(f"limit must be a non-negative integer, got {limit!r}")
        order, cmp = ("DESC", "<") if newest_first else ("ASC", ">")
        left = limit
        cursor: tuple[float, int] | None = None
        while left is None or left > 0:
            n = page if left is None else min(page, left)
            w, a = list(where), list(args)
            if cursor is not None:
                w.append(f"(ts, id) {cmp} (?, ?)")
                a += cursor
            rows = self._rows(f"SELECT {COLS} FROM messages WHERE {' AND '.join(w) or '1'} "
                              f"ORDER BY ts {order}, id {order} LIMIT ?", (*a, n))
            yield from (message_from_row(r) for r in rows)
            if len(rows) < n:
                return
            cursor = (rows[-1][TS_COL], rows[-1][0])
            if left is not None:
                left -= len(rows)

    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self.db as db:
            try:
                return db.execute(sql, args).fetchall()
            except sqlite3.OperationalError as e:
                raise HistoryError(f"history query failed: {e}") from e

    def summary(self) -> list[ConvSummary]:
        """Last message of every conversation (peer, group, stream; newest first) with its unread count."""
        with self.db as db:
            unread = dict(db.execute("SELECT conv, COUNT(*) FROM messages WHERE unread=1 GROUP BY conv"))
            rows = db.execute(f"SELECT c.conv, {_SUMMARY_COLS} FROM convs c JOIN messages m ON m.id = c.last_id "
                              "ORDER BY c.last_ts DESC").fetchall()
        out = []
        for r in rows:
            conv = r[0]
            kind, _, name = conv.partition(":")
            out.append(ConvSummary(conv, kind, name, message_from_row(r[1:]), unread.get(conv, 0)))
        return out

    def unread_count(self, conv: str | None = None) -> int:
        with self.db as db:
            if conv is None:
                return int(db.execute("SELECT COUNT(*) FROM messages WHERE unread=1").fetchone()[0])
            return int(db.execute("SELECT COUNT(*) FROM messages WHERE unread=1 AND conv=?", (conv,)).fetchone()[0])

    def count(self) -> int:
        with self.db as db:
            return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
