"""What the history holds: :class:`Message`, :class:`ConvSummary`, the statuses and their order (no I/O)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent import codec
from edge_agent.errors import EdgeAgentError

log = logging.getLogger("edge_agent.messaging.history")

HISTORY_FILE = "history.db"

# Status of an outgoing message. Ranks order the normal path; failed/expired end it (but a later
# delivered/read receipt is evidence that wins: the recipient has the message).
STATUSES = ("pending", "queued", "sent", "delivered", "read", "failed", "expired")
RANK = {s: i for i, s in enumerate(STATUSES)}
FINAL = ("failed", "expired")
OPEN = ("pending", "queued", "sent")  # outgoing and not yet known to be delivered
# Status of an incoming message.
RECEIVED, READ = "received", "read"
KINDS = ("msg", "file", "stream")  # direct/group message, file, telemetry-style stream message

# The columns every row read selects, in the order :func:`message_from_row` unpacks them.
COLS = ("id, mid, sender, seq, outgoing, kind, peer, grp, stream, conv, ts, stored, data, status, reason, "
        "expires, unread, updated, cls")
TS_COL = 10  # index of ts in COLS (the keyset cursor of a paged query)
DATA_LIMITS = {"max_bytes": 64 * 1024 * 1024, "max_str": 16 * 1024 * 1024, "max_bin": 16 * 1024 * 1024}


class HistoryError(EdgeAgentError, ValueError):
    """A history query is invalid, or the history database cannot be used."""


class HistoryUnavailable(HistoryError):
    """The history cannot store or read right now: it is closed, the disk is full, the file cannot be
    written. Not the message's fault: whoever was storing a message should keep it and try again."""


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


def message_from_row(r: Sequence[Any], receipts: dict[str, str] | None = None) -> Message:
    """A :class:`Message` from one row selected with :data:`COLS`."""
    (_rowid, mid, sender, seq, outgoing, kind, peer, grp, stream, _conv, ts, stored, data, status, reason,
     expires, unread, updated, cls) = r
    try:
        obj = codec.decode(data, **DATA_LIMITS) if data is not None else None
    except Exception as e:
        obj = None
        log.warning("history: message %s has undecodable data: %s", mid, e)
    return Message(id=mid, sender=sender, seq=seq, outgoing=bool(outgoing), kind=kind, data=obj, ts=ts,
                   status=status, to=peer, group=grp, stream=stream, reason=reason, expires=expires,
                   unread=bool(unread), stored=stored, updated=updated, cls=cls, receipts=receipts or {})


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


def can_move(old: str, new: str) -> bool:
    """Whether an outgoing message may go from ``old`` to ``new`` (statuses only move forward)."""
    if old == new or new not in RANK or old not in RANK:
        return False
    if new in FINAL:
        return old in OPEN
    if old in FINAL:
        return new in ("delivered", "read")
    return RANK[new] > RANK[old]
