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
from pathlib import Path

from edge_agent.messaging.history.db import Database
from edge_agent.messaging.history.delivery import Delivery
from edge_agent.messaging.history.query import Query, fts_query, to_epoch
from edge_agent.messaging.history.records import (
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
from edge_agent.messaging.history.store import SCHEMA, Store

__all__ = ["FINAL", "HISTORY_FILE", "KINDS", "READ", "RECEIVED", "SCHEMA", "STATUSES", "ConvSummary", "History",
           "HistoryError", "HistoryUnavailable", "Message", "body_text", "can_move", "conv_key", "fts_query",
           "to_epoch"]


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

    def close(self) -> None:
        self.db.close()
