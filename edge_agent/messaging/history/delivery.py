"""The delivery bookkeeping the messaging service keeps in the history, so a restart loses no status.

* ``outseq``: each outbox seq of an outgoing message (a file has one per chunk) and how far it got:
  0 put, 1 committed in the outbox ("queued"), 2 acknowledged by the broker ("sent").
* ``rcpt`` of a received message: whether its delivered (1) / read (2) receipt is committed in the outbox.
* ``notified``: whether the app's on_message callback has seen a received message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from edge_agent.messaging.history.db import Database
from edge_agent.messaging.history.records import COLS, READ, Message, message_from_row

_PART = 500  # SQLite host parameters per statement, well under every build's limit
T = TypeVar("T")


def _parts(seq: Sequence[T]) -> Iterator[list[T]]:
    for i in range(0, len(seq), _PART):
        yield list(seq[i:i + _PART])


def _marks(part: Sequence[object]) -> str:
    return ",".join("?" * len(part))


class Delivery:
    """The bookkeeping half of :class:`~edge_agent.messaging.history.History` (on ``self.db``)."""

    db: Database

    # ------------------------------------------------------------------ outbox seqs of outgoing messages
    def add_outseqs(self, mid: str, seqs: Sequence[int]) -> None:
        with self.db.tx() as db:
            db.executemany("INSERT OR REPLACE INTO outseq (seq, mid, state) VALUES (?,?,0)", ((s, mid) for s in seqs))

    def mark_outseqs(self, seqs: Iterable[int], state: int) -> dict[str, int]:
        """Raise the per-seq state of tracked outgoing seqs (1 queued, 2 sent); return {mid: min state}
        for the messages touched, so a file message moves only when all its chunks have."""
        out: dict[str, int] = {}
        with self.db.tx() as db:
            mids: set[str] = set()
            for part in _parts(list(seqs)):
                db.execute(f"UPDATE outseq SET state=? WHERE state<? AND seq IN ({_marks(part)})",
                           (state, state, *part))
                mids.update(r[0] for r in db.execute(f"SELECT mid FROM outseq WHERE seq IN ({_marks(part)})", part))
            for mid in mids:
                out[mid] = db.execute("SELECT MIN(state) FROM outseq WHERE mid=?", (mid,)).fetchone()[0]
        return out

    def min_outseq_state(self, mid: str) -> int | None:
        with self.db as db:
            return db.execute("SELECT MIN(state) FROM outseq WHERE mid=?", (mid,)).fetchone()[0]

    def outseq_count(self, mid: str) -> int:
        with self.db as db:
            return int(db.execute("SELECT COUNT(*) FROM outseq WHERE mid=?", (mid,)).fetchone()[0])

    def outseq_mids(self, seqs: Iterable[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        with self.db as db:
            for part in _parts(list(seqs)):
                out.update(db.execute(f"SELECT seq, mid FROM outseq WHERE seq IN ({_marks(part)})", part).fetchall())
        return out

    def tracked_seqs(self) -> dict[int, tuple[str, int]]:
        """{seq: (mid, state)} of every outgoing seq not yet acknowledged."""
        with self.db as db:
            return {s: (m, st) for s, m, st in db.execute("SELECT seq, mid, state FROM outseq")}

    def forget_mid(self, mid: str) -> None:
        with self.db.tx() as db:
            db.execute("DELETE FROM outseq WHERE mid=?", (mid,))

    def forget_outseqs(self, seqs: Iterable[int]) -> None:
        with self.db.tx() as db:
            db.executemany("DELETE FROM outseq WHERE seq=?", ((s,) for s in seqs))

    def rename(self, mid: str, new_mid: str) -> None:
        with self.db.tx() as db:
            db.execute("UPDATE messages SET mid=? WHERE mid=?", (new_mid, mid))
            db.execute("UPDATE outseq SET mid=? WHERE mid=?", (new_mid, mid))

    def open_outgoing(self) -> list[tuple[str, str, int]]:
        """(mid, status, seq) of outgoing messages not yet sent (for reconciliation at start)."""
        with self.db as db:
            return list(db.execute("SELECT mid, status, seq FROM messages WHERE outgoing=1 AND "
                                   "status IN ('pending','queued')"))

    # ------------------------------------------------------------------ receipts we owe
    def set_receipt_stored(self, mids: Sequence[str], level: int) -> None:
        """The receipt for these received messages is committed in the outbox (1 delivered, 2 read)."""
        with self.db.tx() as db:
            for part in _parts(mids):
                db.execute(f"UPDATE messages SET rcpt=? WHERE rcpt<? AND mid IN ({_marks(part)})",
                           (level, level, *part))

    def receipts_owed(self) -> list[tuple[str, str, str]]:
        """(mid, sender, 'delivered'|'read') for received messages whose receipt never reached the outbox
        (the agent died within a group commit of storing the message or marking it read)."""
        with self.db as db:
            rows = db.execute("SELECT mid, sender, status, rcpt FROM messages WHERE outgoing=0 AND "
                              "kind != 'stream' AND rcpt < 2 ORDER BY id").fetchall()
        out = []
        for mid, sender, status, rcpt in rows:
            if status == READ:
                out.append((mid, sender, "read"))
            elif rcpt < 1:
                out.append((mid, sender, "delivered"))
        return out

    # ------------------------------------------------------------------ the app's on_message
    def unnotified(self, limit: int = 100) -> list[Message]:
        with self.db as db:
            rows = db.execute(f"SELECT {COLS} FROM messages WHERE notified=0 ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [message_from_row(r) for r in rows]

    def unnotified_rows(self, limit: int = 100) -> list[tuple[int, Message]]:
        """(row id, message) of received messages on_message has not seen, oldest first."""
        with self.db as db:
            rows = db.execute(f"SELECT {COLS} FROM messages WHERE notified=0 ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(r[0], message_from_row(r)) for r in rows]

    def set_notified(self, mids: Iterable[str]) -> None:
        with self.db.tx() as db:
            db.executemany("UPDATE messages SET notified=1 WHERE mid=?", ((m,) for m in mids))
