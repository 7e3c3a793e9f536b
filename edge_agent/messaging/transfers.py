"""Files between devices: sent as numbered chunks, assembled and sha256-verified by the recipient.

``send`` puts the file as chunks of ``messaging.chunk_size`` bytes carrying the file's sha256; each
chunk is an outbox message (durable, in order, resent after any disconnect) and the history keeps one
"file" message whose status covers the whole file (it moves only once every chunk has). The receiver
assembles the chunks with :class:`edge_agent.transfer.ChunkAssembler` (persisted across restarts),
verifies the sha256 and only then stores the file message and returns "delivered". If the last chunk
arrives while earlier ones are missing (e.g. evicted from an outbox), the receiver reports the missing
indices in a receipt and the sender re-sends just those, from the file if it is unchanged.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.host import Host, Outgoing
from edge_agent.messaging.envelope import MessagingError
from edge_agent.messaging.history import History
from edge_agent.messaging.tracking import Tracker
from edge_agent.transfer import (
    MAX_CHUNKS,
    ChecksumMismatch,
    ChunkAssembler,
    TransferError,
    TransferState,
    file_name_problem,
    file_sha256,
)
from edge_agent.transport.topics import inbox_topic

log = logging.getLogger("edge_agent.messaging")

TRANSFERS_DIR = "transfers"
# File chunks are bulk data: class telemetry, so after an outage they drain throttled (mqtt.max_rate) and
# behind messages and alarms, and are the first evicted under capacity pressure (then re-sent on request).
FILE_CLASS = "telemetry"
_FILL_BATCH_BYTES = 4 * 1024 * 1024  # flush the outbox this often while putting chunks: bounds memory
_MAX_MISSING_REPORTED = 10000
_REFUSED_KEPT = 1000


@dataclass(frozen=True)
class Ttl:
    """A message's time-to-live in seconds; ``explicit`` if the sender chose it (then it travels along)."""

    seconds: float
    explicit: bool

    def props(self) -> dict[str, Any] | None:
        return {"message_expiry": math.ceil(self.seconds)} if self.explicit else None

    def extra(self) -> dict[str, Any]:
        return {"ttl": self.seconds} if self.explicit else {}


class FileTransfers:
    """Both sides of file transfer for one messaging service."""

    def __init__(self, host: Host, history: History, tracker: Tracker, assembler: ChunkAssembler, *,
                 dev: str, prefix: str, chunk_size: int,
                 receipt: Callable[..., None], received: Callable[[], None],
                 seal: Callable[[str], dict[str, Any]]) -> None:
        self._host = host
        self._seal = seal  # topic -> the envelope extra that signs it
        self._history = history
        self._tracker = tracker
        self.assembler = assembler
        self._dev = dev
        self._prefix = prefix
        self._chunk_size = chunk_size
        self._receipt = receipt  # receipt(to, mids, status, **more)
        self._received = received  # a new file is in the history
        self._asm_lock = threading.Lock()  # chunk writes fsync: kept apart from the tracker's lock
        self._refused_ids: dict[str, None] = {}  # transfers already answered "failed" (insertion order)

    # ------------------------------------------------------------------ sending
    def send(self, to: str, path: str | os.PathLike[str], name: str | None, ttl: Ttl) -> str:
        """Put the file at ``path`` for ``to`` as chunks; return the id of its history message."""
        p = Path(path)
        if not p.is_file():
            raise MessagingError(f"send_file: {p} is not a readable file")
        name = name or p.name
        problem = file_name_problem(name)  # the receiver's own check: what it would refuse is refused here
        if problem is not None:
            raise MessagingError(f"send_file: {problem}")
        size = p.stat().st_size
        total = max(1, math.ceil(size / self._chunk_size))
        if total > MAX_CHUNKS:
            raise MessagingError(f"send_file: {p} is {size} bytes, {total} chunks of {self._chunk_size}: more than "
                                 f"the {MAX_CHUNKS} a receiver takes (raise messaging.chunk_size)")
        info = {"name": name, "size": size, "sha256": file_sha256(p), "chunks": total,
                "chunk_size": self._chunk_size, "path": str(p.resolve())}
        mid = ""
        try:
            with open(p, "rb") as f:
                batch_bytes = 0
                for i in range(total):
                    chunk = f.read(self._chunk_size)
                    mid = self._put_chunk(to, info, i, chunk, mid, ttl)
                    batch_bytes += len(chunk)
                    if batch_bytes >= _FILL_BATCH_BYTES:
                        self._host.flush()  # chunks wait in the outbox, not in RAM
                        batch_bytes = 0
        except BaseException as e:
            if mid:  # some chunks are on their way, not all: the file as a whole has failed
                self._tracker.end_fill(mid, failure=f"interrupted while being queued: {e!r}"[:500])
            raise
        self._tracker.end_fill(mid)
        return mid

    def _put_chunk(self, to: str, info: dict[str, Any], i: int, chunk: bytes, mid: str, ttl: Ttl) -> str:
        """Put chunk ``i``; the first one's seq names the transfer (and the history message)."""
        # The transfer id is the global id of the first chunk, known once it has its seq: the first chunk
        # carries "transfer": None and the receiver derives "<dev>:<seq>" from it.
        data = {"transfer": mid or None, "i": i, "n": info["chunks"], "sha256": info["sha256"],
                "name": info["name"], "size": info["size"], "chunk": chunk}

        topic = inbox_topic(self._prefix, to)

        def build(ts: float) -> Outgoing:
            return Outgoing(topic=topic, stream="file", data=data, cls=FILE_CLASS, ts=ts, ttl=ttl.seconds,
                            props=ttl.props(), extra={"to": to, "kind": "file", **ttl.extra(), **self._seal(topic)})

        def record(seq: int, ts: float) -> str:
            if mid:
                self._history.add_outseqs(mid, [seq])
                return mid
            first = f"{self._dev}:{seq}"
            self._tracker.begin_fill(first)
            self._history.add(mid=first, sender=self._dev, seq=seq, outgoing=True, kind="file", data=info, ts=ts,
                              status="pending", peer=to, expires=ts + ttl.seconds, outseqs=[seq], cls=FILE_CLASS)
            return first

        return self._tracker.put(build, record, announce=not mid)

    def resend(self, mid: str, missing: list[int]) -> None:
        """The recipient reports chunks ``missing``: put them again, from the file if it is unchanged."""
        m = self._history.get(mid)
        if m is None or m.kind != "file" or not isinstance(m.data, dict) or m.to is None:
            return
        info, to = m.data, m.to
        p = Path(str(info.get("path", "")))
        try:
            if not p.is_file() or file_sha256(p) != info.get("sha256"):
                log.warning("file %s: receiver misses %d chunk(s) but %s changed or is gone; cannot resend",
                            mid, len(missing), p)
                self._tracker.advance(mid, "failed", f"receiver misses {len(missing)} chunk(s) and {p} changed")
                return
            total, csize = int(info["chunks"]), int(info["chunk_size"])
            with open(p, "rb") as f:
                for i in (i for i in missing if 0 <= i < total):
                    f.seek(i * csize)
                    self._put_again(to, mid, info, i, f.read(csize))
            log.info("file %s: re-sent %d missing chunk(s)", mid, len(missing))
        except OSError as e:
            log.warning("file %s: cannot resend chunks: %s", mid, e)

    def _put_again(self, to: str, mid: str, info: dict[str, Any], i: int, chunk: bytes) -> None:
        data = {"transfer": mid, "i": i, "n": int(info["chunks"]), "sha256": info["sha256"], "name": info["name"],
                "size": info["size"], "chunk": chunk}

        def record(seq: int, _ts: float) -> str:
            self._history.add_outseqs(mid, [seq])
            return mid

        topic = inbox_topic(self._prefix, to)
        self._tracker.put(lambda ts: Outgoing(topic=topic, stream="file", data=data, cls=FILE_CLASS, ts=ts,
                                              extra={"to": to, "kind": "file", **self._seal(topic)}),
                          record, announce=False)

    # ------------------------------------------------------------------ receiving
    def on_chunk(self, env: dict[str, Any]) -> None:
        """One chunk from ``env["dev"]``. Raises HistoryUnavailable or OSError when it cannot be kept now
        (the message is then not acknowledged); a bad chunk is logged and answered, never raised."""
        dev, seq, d = env["dev"], env["seq"], env.get("data")
        if not isinstance(d, dict) or not isinstance(d.get("chunk"), bytes):
            log.warning("file chunk %s:%s dropped: malformed", dev, seq)
            tid = d.get("transfer") if isinstance(d, dict) else None
            self._refused(dev, tid if isinstance(tid, str) and tid.startswith(f"{dev}:") else f"{dev}:{seq}",
                          "malformed file chunk")
            return
        tid = d.get("transfer") or f"{dev}:{seq}"
        if not isinstance(tid, str) or not tid.startswith(f"{dev}:"):
            log.warning("file chunk %s:%s dropped: transfer id %r is not the sender's", dev, seq, tid)
            return
        st = self._add(dev, tid, d)
        if st is None:
            return
        if not st.complete:
            if d.get("i") == st.total - 1 and st.missing:
                self._receipt(dev, [tid], "missing", missing=st.missing[:_MAX_MISSING_REPORTED])
            return
        info = {"name": d.get("name"), "size": st.size, "sha256": st.sha256, "path": str(st.path)}
        rowid = self._history.add(mid=tid, sender=dev, seq=int(tid.rsplit(":", 1)[1]), outgoing=False, kind="file",
                                  data=info, ts=float(env["ts"]), status="received", peer=dev, notified=False,
                                  cls=env.get("cls"))
        self._receipt(dev, [tid], "delivered")
        if rowid is not None:
            self._received()

    def _add(self, dev: str, tid: str, d: dict[str, Any]) -> TransferState | None:
        with self._asm_lock:
            try:
                return self.assembler.add(tid, d.get("i"), d.get("n"), d["chunk"], d.get("sha256"),  # type: ignore[arg-type]
                                          name=d.get("name"))
            except ChecksumMismatch as e:
                log.warning("file %s from %s failed: %s", tid, dev, e)
                self._receipt(dev, [tid], "failed", reason=str(e))  # the sender must send it again
            except TransferError as e:
                log.warning("file %s from %s: chunk refused: %s", tid, dev, e)
                self._refused(dev, tid, str(e))
            return None

    def _refused(self, dev: str, tid: str, reason: str) -> None:
        """Tell the sender its file failed (once per transfer: its other chunks are refused alike)."""
        if tid in self._refused_ids:
            return
        self._refused_ids[tid] = None
        while len(self._refused_ids) > _REFUSED_KEPT:
            del self._refused_ids[next(iter(self._refused_ids))]
        self._receipt(dev, [tid], "failed", reason=f"refused by {self._dev}: {reason}"[:500])

    def prune(self, max_age: float) -> int:
        """Remove incoming transfers still incomplete after ``max_age`` seconds."""
        with self._asm_lock:
            return self.assembler.prune(max_age)
