"""The local message history: ``history.db`` in the state dir (SQLite, WAL, FTS5). Owned by messaging only.

Every message this device sends or receives is one row; the row of an outgoing message also carries its
delivery status, so a restart of either side loses no status. The outbox is a separate database (it is
a queue that empties; this is a record that stays).

* :mod:`.records`: :class:`Message`, :class:`ConvSummary`, the statuses (no I/O)
* :mod:`.db`: the connection, its lock and transactions
* :mod:`.store`: the schema and the writes (messages, statuses, receipts, read marks, retention)
* :mod:`.delivery`: the messaging service's bookkeeping (outbox seqs, receipts owed, notified)
* :mod:`.query`: reading (filters, full text, last message per conversation, unread counts)
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_agent import codec
from edge_agent.messaging.history.db import Database
from edge_agent.messaging.history.delivery import Delivery
from edge_agent.messaging.history.pending import PendingAdds
from edge_agent.messaging.history.query import Query, fts_query, to_epoch
from edge_agent.messaging.history.records import (
    DATA_LIMITS,
    FINAL,
    HISTORY_FILE,
    KINDS,
    READ,
    RECEIVED,
    STATUSES,
    ConvSummary,
    HistoryError,
    HistoryUnavailable,
    Message,
    body_text,
    can_move,
    conv_key,
)
from edge_agent.messaging.history.store import SCHEMA, Store, insert_row, make_row, mark_queued, mark_sent

__all__ = ["DATA_LIMITS", "FINAL", "HISTORY_FILE", "KINDS", "READ", "RECEIVED", "SCHEMA", "STATUSES", "ConvSummary",
           "History", "HistoryError", "HistoryUnavailable", "Message", "as_stored", "body_text", "can_move",
           "conv_key", "fts_query", "to_epoch"]


def as_stored(row: list[Any]) -> Message:
    """The message of a row made by :func:`.store.make_row`, as :meth:`History.get` would read it back."""
    (mid, sender, seq, outgoing, kind, peer, grp, stream, cls, _conv, ts, stored, blob, _body, status, expires,
     unread, _notified, updated, _outseqs) = row
    return Message(id=mid, sender=sender, seq=seq, outgoing=bool(outgoing), kind=kind,
                   data=codec.decode(blob, **DATA_LIMITS), ts=ts, status=status, to=peer, group=grp, stream=stream,
                   expires=expires, unread=bool(unread), stored=stored, updated=updated, cls=cls)


class History(Store, Delivery, Query):
    """The history database. Thread-safe (one connection behind a lock); ``readonly`` for the CLI.

    Opening it opens (and if needed creates) the file: this is a database handle, made when its owner
    starts, not a service.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_age: float = 30 * 86400.0,
                 max_bytes: int = 64 * 1024 * 1024, sync: str = "normal", readonly: bool = False) -> None:
        self.db = Database(path, schema=SCHEMA, sync=sync, readonly=readonly)
        self.max_age = max_age
        self.max_bytes = max_bytes
        self._inserts_since_trim = 0
        self._journal: PendingAdds | None = None

    @property
    def path(self) -> Path:
        return self.db.path

    @property
    def readonly(self) -> bool:
        return self.db.readonly

    @property
    def closed(self) -> bool:
        return self.db.closed

    def batch(self) -> contextlib.AbstractContextManager[object]:
        """``with history.batch():`` every write inside is one transaction (one commit)."""
        return self.db.tx()

    # ------------------------------------------------------------------ storing later (pending.py)
    def open_journal(self, wake: Callable[[], None] | None = None) -> int:
        """Store what a killed process left in the journal (before anything reads the history); return how
        many rows were new. After this, :meth:`store_later` can turn on :meth:`add_later`."""
        j = PendingAdds(self.db.path, wake)
        left = j.open()
        self._journal = j
        n = 0
        if left:
            with self.db.tx() as conn:
                n = sum(insert_row(conn, r) is not None for r in left)
        j.clear()
        return n

    def store_later(self, on: bool) -> None:
        """Turn :meth:`add_later` on (rows journaled, stored in batches) or off (what waits is stored now).
        Never on with ``sync = "full"``: there every message is committed (and synced) before send() returns."""
        if on and self._journal is not None and self.db.sync != "full":
            self.db.pending = self._journal
        elif not on and self.db.pending is not None:
            with self.db.tx():
                pass
            self.db.pending = None

    def add_later(self, *, mid: str, sender: str, seq: int, kind: str, data: Any, ts: float, status: str,
                  peer: str | None = None, group: str | None = None, stream: str | None = None,
                  expires: float | None = None, outseqs: Sequence[int] = (), cls: str | None = None) -> Message:
        """Store an outgoing message: journaled now, in the database with the next transaction (every read
        comes after it); as :meth:`add` when storing later is off. Return it as :meth:`get` would."""
        blob = codec.encode(data)
        row = make_row(mid=mid, sender=sender, seq=seq, outgoing=True, kind=kind, blob=blob, body=body_text(data),
                       ts=ts, status=status, peer=peer, group=group, stream=stream, expires=expires, notified=True,
                       now=time.time(), outseqs=outseqs, cls=cls, unread=None)
        if self.db.pending is None or self._journal is None:
            with self.db.tx() as conn:
                if insert_row(conn, row) is not None:
                    self._inserts_since_trim += 1
        else:
            self._journal.add(row)
            self._inserts_since_trim += 1
        return as_stored(row)

    def set_sent(self, mids: Sequence[str], now: float, then: Callable[[], None] | None = None) -> None:
        """The messages ``mids`` (one outbox seq each, pending or queued) are sent; their seqs are over. With
        the next transaction when storing later (every read comes after it), else now; ``then()`` once
        committed."""
        self._later(lambda conn: mark_sent(conn, mids, now), then)

    def _later(self, fn: Callable[[Any], None], then: Callable[[], None] | None) -> None:
        if self.db.pending is None or self._journal is None:
            with self.db.tx() as conn:
                fn(conn)
            if then is not None:
                then()
        else:
            self._journal.later(fn, then)

    def set_queued(self, seqs: Sequence[int], mids: Sequence[str], now: float,
                   then: Callable[[], None] | None = None) -> None:
        """The outbox committed ``seqs``, of the pending messages ``mids`` (one seq each): they are queued.
        As :meth:`set_sent`."""
        self._later(lambda conn: mark_queued(conn, seqs, mids, now), then)

    @property
    def waiting(self) -> int:
        """Rows accepted by :meth:`add_later` and not yet in the database."""
        p = self.db.pending
        return len(p) if p is not None else 0

    def close(self) -> None:
        self.db.close()
        if self._journal is not None:
            self._journal.close()
