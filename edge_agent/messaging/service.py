"""The messaging service: direct, group and stream messages, receipts, files and the history, on top of App.

::

    send()/send_group()/publish()/send_file()
        --> outbox.put (seq) + history row "pending"  (one lock, so no outbox callback can miss the seq)
    outbox.on_committed(seqs)          --> queued
    forwarder.ack_listeners(seq, ok)   --> sent | failed (broker refused it)
    outbox.on_dropped(seqs, reason)    --> expired | failed     (when the outbox offers it)
    TTL sweep (1 s)                    --> expired (never delivered in time)
    <prefix>/<me>/receipts             --> delivered | read   (from the recipient's agent)

    <prefix>/<me>/inbox, <prefix>/group/<g>/msg  --> dedupe by "<dev>:<seq>" in history.db (committed)
        --> receipt "delivered" through the outbox --> handler returns --> App PUBACKs
        --> dispatcher thread --> on_message (at most once per message unless the app dies mid-callback)

The inbox and group subscriptions live in the agent's persistent MQTT session, so messages sent while
this device is offline wait at the broker. Every callback to user code runs on one dispatcher thread,
never on the MQTT network thread, so a slow app cannot stall keepalives or PUBACKs.

File transfer: ``send_file`` puts the file as numbered chunks (``messaging.chunk_size``) carrying the
file's sha256; each chunk is an outbox message (durable, in order, resent after any disconnect). The
receiver assembles them with :class:`edge_agent.transfer.ChunkAssembler` (persisted across restarts),
verifies the sha256 and only then stores the file message and returns "delivered". If the last chunk
arrives while earlier ones are missing (e.g. evicted from an outbox), the receiver reports the missing
indices in a receipt and the sender re-sends just those, from the file if it is unchanged.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import codec
from edge_agent.config import ID_PATTERN
from edge_agent.errors import DecodeError, EdgeAgentError
from edge_agent.message import MESSAGE_CLASSES, Outgoing
from edge_agent.messaging.history import FINAL, HISTORY_FILE, STATUSES, History, HistoryError, Message
from edge_agent.transfer import ChunkAssembler, TransferError, file_sha256
from edge_agent.transport.mqtt import ConnectionStatus, InMessage
from edge_agent.transport.topics import (
    group_msg_topic,
    inbox_topic,
    receipts_topic,
    stream_topic,
    valid_level,
)
from edge_agent.transport.types import Accepted

if TYPE_CHECKING:
    from edge_agent.app import App

log = logging.getLogger("edge_agent.messaging")

TRANSFERS_DIR = "transfers"
RESERVED_STREAMS = ("inbox", "receipts", "cmd", "cmd-reply", "status")
MAX_DATA = 1024 * 1024  # encoded message data; bigger things go through send_file
_DECODE = {"max_bytes": 2 * 1024 * 1024, "max_bin": 1024 * 1024 + 1024, "max_str": 1024 * 1024}
_NORMAL_PATH = ("pending", "queued", "sent", "delivered", "read")
_FILL_BATCH_BYTES = 4 * 1024 * 1024
# File chunks are bulk data: class telemetry, so after an outage they drain throttled (mqtt.max_rate) and
# behind messages and alarms, and are the first evicted under capacity pressure (then re-sent on request).
FILE_CLASS = "telemetry"


class MessagingError(EdgeAgentError, ValueError):
    """A message cannot be sent as asked (bad address, data that cannot be encoded, too large...)."""


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not re.match(ID_PATTERN, value):
        raise MessagingError(f"{what} must be a device/app id (letters, digits and . _ : -, 1-64 characters), "
                             f"got {value!r}")
    return value


def topic_matches(flt: str, topic: str) -> bool:
    """MQTT topic filter matching (``+``, ``#``; a ``$share/<group>/`` prefix is ignored)."""
    if flt.startswith("$share/"):
        flt = flt.split("/", 2)[2] if flt.count("/") >= 2 else ""
    f, t = flt.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


def json_safe(obj: Any) -> Any:
    """bytes -> base64 text (for JSON views of history rows: CLI --json, history.query)."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(obj)).decode()}
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


Listener = Callable[[Any], None]


class MessagingService:
    name = "messaging"

    def __init__(self, app: App) -> None:
        self.app = app
        cfg = app.cfg
        self.cfg = cfg.messaging
        self.dev = cfg.device.id
        self.prefix = app.prefix
        self.groups = list(cfg.device.groups)
        self.default_ttl = self.cfg.default_ttl or cfg.storage.max_age
        self.history = History(app.state_dir / HISTORY_FILE, max_age=self.cfg.history_max_age,
                               max_bytes=self.cfg.history_max_bytes, sync=cfg.storage.sync)
        self.assembler = ChunkAssembler(app.state_dir / TRANSFERS_DIR)
        self.message_listeners: list[Listener] = []
        self.status_listeners: list[Listener] = []
        self.connection_listeners: list[Listener] = []
        self._lock = threading.RLock()
        self._asm_lock = threading.Lock()  # chunk writes fsync: kept apart from the status lock
        self._tracked: dict[int, str] = {}
        self._receipt_seqs: dict[int, tuple[list[str], int]] = {}  # outbox seq of a receipt -> (mids, level)
        self._filling: set[str] = set()
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subs: list[str] = []
        self._inbox = inbox_topic(self.prefix, self.dev)
        self._receipts = receipts_topic(self.prefix, self.dev)
        self._group_topics = {group_msg_topic(self.prefix, g): g for g in self.groups}
        app.outbox.on_committed(self._on_committed)
        self._reconcile()
        on_dropped = getattr(app.outbox, "on_dropped", None)
        if on_dropped is not None:
            on_dropped(self._on_dropped)
        else:
            log.debug("outbox has no on_dropped(): TTL expiry is detected by the messaging sweep only")
        # typed ack -> (ok, rc), rc -1 = link lost (until the messaging rewrite takes Host.on_ack); untracked
        # rows (all telemetry) cost one set lookup, as before
        app.forwarder.add_ack_listener(lambda seq, ack: seq in self._tracked and self._on_ack(
            seq, isinstance(ack, Accepted), getattr(ack, "code", -1)))
        app.status_listeners.append(self._on_connection)
        app.add_message_handler(self._match, self._handle)
        for t in (self._inbox, self._receipts, *self._group_topics):
            app.transport.subscribe(t, qos=1)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._stop.clear()
        for name, fn in (("messaging-callbacks", self._dispatch_loop), ("messaging-sweep", self._sweep_loop)):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._wake.set()

    def stop(self) -> None:
        """Stop the callback and sweep threads. The history stays open: acks and receipts that arrive
        while App drains the outbox are still recorded; :meth:`close` closes it (Agent.stop does)."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            if t is not threading.current_thread():  # stop() called from a callback
                t.join(5.0)
        self._threads.clear()

    def close(self) -> None:
        self.history.close()

    def _reconcile(self) -> None:
        """At start: a seq we recorded but the outbox never committed was lost with the process (and
        will be reused by the outbox), so its message failed; committed ones are queued."""
        last = self.app.outbox.last_seq
        for seq, (mid, state) in self.history.tracked_seqs().items():
            if seq > last:
                log.warning("message %s was lost before the outbox stored it (agent stopped); marked failed", mid)
                self.history.set_status(mid, "failed", "lost: the agent stopped before the outbox stored it")
                self.history.forget_mid(mid)
                self.history.rename(mid, f"{mid}~lost{int(time.time())}")
                continue
            self._tracked[seq] = mid
            if state == 0:
                self.history.mark_outseqs([seq], 1)
        for mid, status, _seq in self.history.open_outgoing():
            m = self.history.get(mid)
            if m is not None and m.kind == "file" and isinstance(m.data, dict):
                have = self.history.outseq_count(mid)
                if have < int(m.data.get("chunks", 0)):
                    log.warning("file %s was interrupted while being queued (%d of %s chunks); marked failed",
                                mid, have, m.data.get("chunks"))
                    self.history.set_status(mid, "failed", "interrupted while being queued: send it again")
                    continue
            if status == "pending" and (self.history.min_outseq_state(mid) or 0) >= 1:
                self.history.set_status(mid, "queued")
        # receipts lost with the process (the history commit is synchronous, the outbox's group commit
        # is not): send them again; the sender ignores what it already knows
        owed: dict[tuple[str, str], list[str]] = {}
        for mid, sender, status in self.history.receipts_owed():
            owed.setdefault((sender, status), []).append(mid)
        for (sender, status), mids in owed.items():
            log.info("re-sending %d %s receipt(s) to %s lost at the last stop", len(mids), status, sender)
            for i in range(0, len(mids), 500):
                self._receipt(sender, mids[i:i + 500], status)

    # ------------------------------------------------------------------ listeners (user side)
    def add_listener(self, kind: str, fn: Listener) -> None:
        lists = {"message": self.message_listeners, "status": self.status_listeners,
                 "connection": self.connection_listeners}
        if kind not in lists:
            raise MessagingError(f"unknown listener kind {kind!r} (message, status, connection)")
        lists[kind].append(fn)
        self._wake.set()

    # ------------------------------------------------------------------ sending
    def send(self, to: str, data: Any, *, ttl: float | None = None) -> Message:
        _check_id(to, "recipient")
        if to == self.dev:
            raise MessagingError(f"cannot send a message to myself ({to!r})")
        return self._put(inbox_topic(self.prefix, to), "msg", data, kind="msg", ttl=ttl, peer=to,
                         extra={"to": to, "kind": "msg"})

    def send_group(self, group: str, data: Any, *, ttl: float | None = None) -> Message:
        _check_id(group, "group")
        return self._put(group_msg_topic(self.prefix, group), "msg", data, kind="msg", ttl=ttl, group=group,
                         extra={"group": group, "kind": "msg"})

    def publish(self, stream: str, data: Any, *, cls: str = "telemetry", ttl: float | None = None) -> Message:
        if not isinstance(stream, str) or not all(valid_level(p) for p in stream.split("/")):
            raise MessagingError(f"stream must be topic levels without '+', '#' or empty parts, got {stream!r}")
        if stream.split("/")[0] in RESERVED_STREAMS:
            raise MessagingError(f"stream {stream!r} is reserved (inbox, receipts, cmd, status); "
                                 "use send()/send_group() for messages")
        if cls not in MESSAGE_CLASSES:
            raise MessagingError(f"cls must be one of {', '.join(MESSAGE_CLASSES)}, got {cls!r}")
        return self._put(stream_topic(self.prefix, self.dev, stream), stream, data, kind="stream", ttl=ttl,
                         cls=cls, extra={})

    def _ttl(self, ttl: float | None) -> tuple[float, bool]:
        if ttl is None:
            return self.default_ttl, bool(self.cfg.default_ttl)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0 or not math.isfinite(ttl):
            raise MessagingError(f"ttl must be a positive number of seconds, got {ttl!r}")
        return float(ttl), True

    def _put(self, topic: str, stream: str, data: Any, *, kind: str, ttl: float | None, extra: dict[str, Any],
             peer: str | None = None, group: str | None = None, cls: str = "event") -> Message:
        try:
            size = len(codec.encode(data))
        except (TypeError, ValueError, OverflowError) as e:
            raise MessagingError(f"message data cannot be encoded with msgpack: {e}") from None
        if size > MAX_DATA:
            raise MessagingError(f"message data is {size} bytes encoded, over {MAX_DATA}; use send_file()")
        ttl_s, explicit = self._ttl(ttl)
        props = {"message_expiry": math.ceil(ttl_s)} if explicit else None
        if explicit:
            extra = {**extra, "ttl": ttl_s}
        with self._lock:
            ts = time.time()
            seq = self.app.outbox.put(Outgoing(topic=topic, stream=stream, data=data, cls=cls, ts=ts, ttl=ttl_s,
                                               props=props, extra=extra or None))
            mid = f"{self.dev}:{seq}"
            self._tracked[seq] = mid
            self.history.add(mid=mid, sender=self.dev, seq=seq, outgoing=True, kind=kind, data=data, ts=ts,
                             status="pending", peer=peer, group=group, stream=stream if kind == "stream" else None,
                             expires=ts + ttl_s, outseqs=[seq], cls=cls)
            self._emit(mid)  # under the lock: "pending" is reported before any later status
        m = self.history.get(mid)
        assert m is not None
        return m

    def send_file(self, to: str, path: str | os.PathLike[str], *, name: str | None = None,
                  ttl: float | None = None) -> Message:
        """Send a file in chunks; the returned message's status covers the whole file."""
        _check_id(to, "recipient")
        if to == self.dev:
            raise MessagingError(f"cannot send a file to myself ({to!r})")
        p = Path(path)
        if not p.is_file():
            raise MessagingError(f"send_file: {p} is not a readable file")
        name = name or p.name
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.+@-]{0,254}$", name):
            raise MessagingError(f"send_file: file name {name!r} must be letters, digits and _ . + @ - (no '/')")
        ttl_s, explicit = self._ttl(ttl)
        sha = file_sha256(p)
        size = p.stat().st_size
        csize = self.cfg.chunk_size
        total = max(1, math.ceil(size / csize))
        info = {"name": name, "size": size, "sha256": sha, "chunks": total, "chunk_size": csize,
                "path": str(p.resolve())}
        topic = inbox_topic(self.prefix, to)
        mid = ""
        with open(p, "rb") as f:
            batch_bytes = 0
            for i in range(total):
                chunk = f.read(csize)
                with self._lock:
                    ts = time.time()
                    # The transfer id is the global id of the first chunk, known once it has its seq: the
                    # first chunk carries "transfer": None and the receiver derives "<dev>:<seq>" from it.
                    data = {"transfer": mid or None, "i": i, "n": total, "sha256": sha, "name": name,
                            "size": size, "chunk": chunk}
                    seq = self.app.outbox.put(Outgoing(
                        topic=topic, stream="file", data=data, cls=FILE_CLASS, ts=ts, ttl=ttl_s,
                        props={"message_expiry": math.ceil(ttl_s)} if explicit else None,
                        extra={"to": to, "kind": "file", **({"ttl": ttl_s} if explicit else {})}))
                    if not mid:
                        mid = f"{self.dev}:{seq}"
                        self._filling.add(mid)
                        self.history.add(mid=mid, sender=self.dev, seq=seq, outgoing=True, kind="file", data=info,
                                         ts=ts, status="pending", peer=to, expires=ts + ttl_s, outseqs=[seq],
                                         cls=FILE_CLASS)
                        self._emit(mid)
                    else:
                        self.history.add_outseqs(mid, [seq])
                    self._tracked[seq] = mid
                batch_bytes += len(chunk)
                if batch_bytes >= _FILL_BATCH_BYTES:
                    self.app.outbox.flush()  # bounds memory: chunks wait in the outbox, not in RAM
                    batch_bytes = 0
        with self._lock:
            self._filling.discard(mid)
        self._reevaluate(mid)
        m = self.history.get(mid)
        assert m is not None
        return m

    def _resend_chunks(self, mid: str, missing: list[int]) -> None:
        m = self.history.get(mid)
        if m is None or m.kind != "file" or not isinstance(m.data, dict) or m.to is None:
            return
        info = m.data
        p = Path(str(info.get("path", "")))
        try:
            if not p.is_file() or file_sha256(p) != info.get("sha256"):
                log.warning("file %s: receiver misses %d chunk(s) but %s changed or is gone; cannot resend",
                            mid, len(missing), p)
                self._advance(mid, "failed", f"receiver misses {len(missing)} chunk(s) and {p} changed")
                return
            total, csize = int(info["chunks"]), int(info["chunk_size"])
            with open(p, "rb") as f:
                for i in missing:
                    if not 0 <= i < total:
                        continue
                    f.seek(i * csize)
                    chunk = f.read(csize)
                    data = {"transfer": mid, "i": i, "n": total, "sha256": info["sha256"], "name": info["name"],
                            "size": info["size"], "chunk": chunk}
                    with self._lock:
                        seq = self.app.outbox.put(Outgoing(topic=inbox_topic(self.prefix, m.to), stream="file",
                                                           data=data, cls=FILE_CLASS,
                                                           extra={"to": m.to, "kind": "file"}))
                        self._tracked[seq] = mid
                        self.history.add_outseqs(mid, [seq])
            log.info("file %s: re-sent %d missing chunk(s)", mid, len(missing))
        except OSError as e:
            log.warning("file %s: cannot resend chunks: %s", mid, e)

    # ------------------------------------------------------------------ status machinery
    def _emit(self, mid: str) -> None:
        """Queue a status callback with a snapshot taken now, so each transition is reported as it was."""
        m = self.history.get(mid)
        if m is not None:
            self._events.put(("status", m))
            self._wake.set()

    def _advance(self, mid: str, target: str, reason: str = "") -> bool:
        """Move ``mid`` to ``target``, recording (and reporting) every intermediate step of the normal path,
        so a listener sees queued, sent, delivered, read in order even when evidence arrives out of order
        (a receipt can overtake the PUBACK)."""
        with self._lock:
            if mid in self._filling:
                return False
            m = self.history.get(mid)
            if m is None or not m.outgoing:
                return False
            moved = False
            steps = [target]
            if target in _NORMAL_PATH and m.status in _NORMAL_PATH:
                steps = [s for s in _NORMAL_PATH if _NORMAL_PATH.index(m.status) < _NORMAL_PATH.index(s)
                         <= _NORMAL_PATH.index(target)]
            for s in steps:
                if self.history.set_status(mid, s, reason if s == target else ""):
                    self._emit(mid)
                    moved = True
            if target in ("sent", "delivered", "read", *FINAL):
                for seq in [s for s, x in self._tracked.items() if x == mid]:
                    self._tracked.pop(seq, None)
            return moved

    def _reevaluate(self, mid: str) -> None:
        state = self.history.min_outseq_state(mid)
        if state is not None and state >= 1:
            self._advance(mid, "sent" if state >= 2 else "queued")

    def _on_committed(self, seqs: list[int]) -> None:
        with self._lock:
            if self._receipt_seqs:
                for s in seqs:
                    rc = self._receipt_seqs.pop(s, None)
                    if rc is not None:
                        try:
                            self.history.set_receipt_stored(*rc)
                        except HistoryError as e:
                            log.debug("receipt commit not recorded: %s", e)
            hits = [s for s in seqs if s in self._tracked]
            if not hits:
                return
            try:
                states = self.history.mark_outseqs(hits, 1)
            except HistoryError as e:
                log.debug("committed: %s", e)
                return
            for mid, st in states.items():
                if st is not None and st >= 1:
                    self._advance(mid, "queued")

    def _on_ack(self, seq: int, ok: bool, rc: int) -> None:
        if seq not in self._tracked:  # telemetry and other rows: no lock on the PUBACK hot path
            return
        with self._lock:
            mid = self._tracked.get(seq)
            if mid is None or rc == -1:
                return  # not ours, or released for a resend after the link dropped
            try:
                if ok:
                    states = self.history.mark_outseqs([seq], 2)
                    self._tracked.pop(seq, None)
                    st = states.get(mid)
                    if st is not None and st >= 2:
                        self._advance(mid, "sent")
                        self.history.forget_mid(mid)
                    elif st is not None:
                        self._advance(mid, "queued")
                else:
                    self._advance(mid, "failed", f"the broker refused the message (reason code 0x{rc:02x})")
            except HistoryError as e:
                log.debug("ack for %s not recorded: %s", mid, e)

    def _on_dropped(self, seqs: Iterable[int], reason: str) -> None:
        with self._lock:
            for seq in seqs:
                mid = self._tracked.get(seq)
                if mid is None:
                    continue
                try:
                    if reason == "expired":
                        self._advance(mid, "expired", "the outbox dropped it: time-to-live ran out")
                    else:
                        self._advance(mid, "failed", f"the outbox dropped it: {reason}")
                except HistoryError as e:
                    log.debug("drop of %s not recorded: %s", mid, e)

    def _on_connection(self, st: ConnectionStatus) -> None:
        self._events.put(("connection", st))
        self._wake.set()

    # ------------------------------------------------------------------ receiving
    def subscribe(self, topic_filter: str, *, share: str | None = None) -> str:
        """Also receive envelopes published on ``topic_filter`` (e.g. ``edge/+/inference/#``); with
        ``share``, as an MQTT 5 shared subscription ``$share/<share>/<filter>`` so copies split the load."""
        if not isinstance(topic_filter, str) or not topic_filter or topic_filter.startswith("$share/"):
            raise MessagingError(f"topic filter must be a plain MQTT filter (pass share= for a shared "
                                 f"subscription), got {topic_filter!r}")
        parts = topic_filter.split("/")
        if any(("#" in p and (p != "#" or i != len(parts) - 1)) or ("+" in p and p != "+")
               for i, p in enumerate(parts)):
            raise MessagingError(f"bad topic filter {topic_filter!r}: '+' must be a whole level, '#' the last")
        if share is not None:
            _check_id(share, "share group")
        full = f"$share/{share}/{topic_filter}" if share else topic_filter
        with self._lock:
            if full not in self._subs:
                self._subs.append(full)
        self.app.transport.subscribe(full, qos=1)
        return full

    def _match(self, topic: str) -> bool:
        if topic in (self._inbox, self._receipts) or topic in self._group_topics:
            return True
        return any(topic_matches(f, topic) for f in self._subs)

    def _decode(self, msg: InMessage) -> dict[str, Any] | None:
        try:
            env = codec.decode(msg.payload, **_DECODE)
        except DecodeError as e:
            log.warning("message on %s dropped: %s", msg.topic, e)
            return None
        if (not isinstance(env, dict) or not isinstance(env.get("dev"), str) or not valid_level(env["dev"])
                or not isinstance(env.get("seq"), int) or isinstance(env.get("seq"), bool) or env["seq"] < 1
                or not isinstance(env.get("ts"), int | float) or not isinstance(env.get("stream"), str)):
            log.warning("message on %s dropped: not an edge-agent envelope (dev, seq, ts, stream, data)", msg.topic)
            return None
        return env

    def _handle(self, msg: InMessage) -> None:
        """Runs on the MQTT network thread; returns once what must be kept is committed (then App acks)."""
        env = self._decode(msg)
        if env is None:
            return
        try:
            if msg.topic == self._receipts:
                self._on_receipt(env)
            elif msg.topic == self._inbox or msg.topic in self._group_topics:
                self._on_incoming(env, self._group_topics.get(msg.topic))
            else:
                self._on_stream(env)
        except (HistoryError, TransferError) as e:
            log.warning("message on %s from %s not handled: %s", msg.topic, env.get("dev"), e)

    def _expired(self, env: dict[str, Any]) -> bool:
        ttl = env.get("ttl")
        return isinstance(ttl, int | float) and env["ts"] + ttl < time.time()

    def _on_incoming(self, env: dict[str, Any], group: str | None) -> None:
        dev, seq = env["dev"], env["seq"]
        if dev == self.dev:
            return  # our own group message, already in the history as sent
        if env["stream"] == "file":
            self._on_chunk(env)
            return
        mid = f"{dev}:{seq}"
        if self._expired(env):
            log.info("message %s arrived after its time-to-live; dropped", mid)
            return
        rowid = self.history.add(mid=mid, sender=dev, seq=seq, outgoing=False, kind="msg", data=env.get("data"),
                                 ts=float(env["ts"]), status="received", peer=None if group else dev, group=group,
                                 notified=False, cls=env.get("cls"))
        # also for a duplicate: the first receipt may have been lost with a crash
        self._receipt(dev, [mid], "delivered")
        if rowid is not None:
            self._wake.set()

    def _on_chunk(self, env: dict[str, Any]) -> None:
        dev, seq, d = env["dev"], env["seq"], env.get("data")
        if not isinstance(d, dict) or not isinstance(d.get("chunk"), bytes):
            log.warning("file chunk %s:%s dropped: malformed", dev, seq)
            return
        tid = d.get("transfer") or f"{dev}:{seq}"
        if not isinstance(tid, str) or not tid.startswith(f"{dev}:"):
            log.warning("file chunk %s:%s dropped: transfer id %r is not the sender's", dev, seq, tid)
            return
        with self._asm_lock:
            try:
                st = self.assembler.add(tid, d.get("i"), d.get("n"), d["chunk"], d.get("sha256"),  # type: ignore[arg-type]
                                        name=d.get("name"))
            except TransferError as e:
                log.warning("file %s from %s failed: %s", tid, dev, e)
                if "sha256 mismatch" in str(e):
                    self._receipt(dev, [tid], "failed", reason=str(e))
                return
        if not st.complete:
            if d.get("i") == st.total - 1 and st.missing:
                self._receipt(dev, [tid], "missing", missing=st.missing[:10000])
            return
        info = {"name": d.get("name"), "size": st.size, "sha256": st.sha256, "path": str(st.path)}
        rowid = self.history.add(mid=tid, sender=dev, seq=int(tid.rsplit(":", 1)[1]), outgoing=False, kind="file",
                                 data=info, ts=float(env["ts"]), status="received", peer=dev, notified=False,
                                 cls=env.get("cls"))
        self._receipt(dev, [tid], "delivered")
        if rowid is not None:
            self._wake.set()

    def _on_stream(self, env: dict[str, Any]) -> None:
        dev, seq = env["dev"], env["seq"]
        rowid = self.history.add(mid=f"{dev}:{seq}", sender=dev, seq=seq, outgoing=dev == self.dev, kind="stream",
                                 data=env.get("data"), ts=float(env["ts"]), status="received", stream=env["stream"],
                                 notified=dev == self.dev, cls=env.get("cls") or "telemetry", unread=False)
        if rowid is not None:
            self._wake.set()

    def _receipt(self, to: str, mids: list[str], status: str, **more: Any) -> None:
        level = {"delivered": 1, "read": 2}.get(status)
        with self._lock:  # so the commit callback cannot run before the seq is recorded
            try:
                seq = self.app.outbox.put(Outgoing(topic=receipts_topic(self.prefix, to), stream="receipts",
                                                   data={"status": status, "ids": mids, **more}, cls="event"))
            except EdgeAgentError as e:
                log.warning("receipt %s for %d message(s) to %s not queued: %s", status, len(mids), to, e)
                return
            if level is not None:
                self._receipt_seqs[seq] = (list(mids), level)

    def _on_receipt(self, env: dict[str, Any]) -> None:
        by, d = env["dev"], env.get("data")
        if not isinstance(d, dict) or not isinstance(d.get("ids"), list):
            log.warning("receipt from %s dropped: malformed", by)
            return
        status = d.get("status")
        mine = f"{self.dev}:"
        for mid in d["ids"]:
            if not isinstance(mid, str) or not mid.startswith(mine):
                continue
            if status in ("delivered", "read"):
                news, _ = self.history.apply_receipt(mid, by, status)
                if news and not self._advance(mid, status):
                    self._emit(mid)  # a new receipt (another group member) without a status change
            elif status == "missing" and isinstance(d.get("missing"), list):
                self._resend_chunks(mid, [i for i in d["missing"] if isinstance(i, int)])
            elif status == "failed":
                self._advance(mid, "failed", f"{by}: {str(d.get('reason', ''))[:500]}")

    # ------------------------------------------------------------------ history (user side)
    def mark_read(self, ids: Iterable[str] | None = None, *, peer: str | None = None, group: str | None = None,
                  stream: str | None = None) -> int:
        """Mark received messages read and send read receipts to their senders; return how many."""
        if ids is None and peer is None and group is None and stream is None:
            raise MessagingError("mark_read: give message ids, peer=, group= or stream= (all=... is not implied)")
        by_sender = self.history.mark_read(ids, peer=peer, group=group, stream=stream)
        for sender, mids in by_sender.items():
            for i in range(0, len(mids), 500):
                self._receipt(sender, mids[i:i + 500], "read")
        return sum(len(v) for v in by_sender.values())

    def history_query(self, **filters: Any) -> list[dict[str, Any]]:
        """The ``history.query`` command: filters as for :meth:`History.query` (default: newest 100 first);
        JSON-safe rows (bytes as base64)."""
        allowed = {"peer", "group", "stream", "sender", "since", "until", "search", "unread", "kind", "limit",
                   "newest_first"}
        unknown = sorted(set(filters) - allowed)
        if unknown:
            raise HistoryError(f"unknown history filter(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
        filters.setdefault("limit", 100)
        filters.setdefault("newest_first", True)
        if not isinstance(filters["limit"], int) or not 0 <= filters["limit"] <= 10000:
            raise HistoryError(f"limit must be an integer in 0..10000, got {filters['limit']!r}")
        return [json_safe(m.as_dict()) for m in self.history.query(**filters)]

    # ------------------------------------------------------------------ threads
    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while True:
                try:
                    kind, item = self._events.get_nowait()
                except queue.Empty:
                    break
                if kind == "status":
                    self._call(self.status_listeners, item)
                elif kind == "connection":
                    self._call(self.connection_listeners, item)
            if self.message_listeners and not self.history.closed:
                try:
                    batch = self.history.unnotified(100)
                except HistoryError:
                    continue
                for m in batch:
                    if self._stop.is_set():
                        return
                    self._call(self.message_listeners, m)
                    try:
                        self.history.set_notified([m.id])
                    except HistoryError:  # closed by a stop() from inside the callback
                        return
                if len(batch) == 100:
                    self._wake.set()

    def _call(self, listeners: list[Listener], arg: Any) -> None:
        for fn in list(listeners):
            try:
                fn(arg)
            except Exception:
                log.exception("messaging listener %r failed", getattr(fn, "__name__", fn))

    def _sweep_loop(self) -> None:
        last_prune = 0.0
        while not self._stop.wait(1.0):
            try:
                for mid in self.history.expire_due():
                    with self._lock:
                        for seq in [s for s, x in self._tracked.items() if x == mid]:
                            self._tracked.pop(seq, None)
                    self._emit(mid)
                self.history.maybe_trim()
                if time.monotonic() - last_prune > 600:
                    last_prune = time.monotonic()
                    self.history.trim()
                    self.assembler.prune(self.cfg.transfer_max_age)
            except (HistoryError, OSError) as e:
                log.warning("messaging sweep: %s", e)
            except Exception:
                log.exception("messaging sweep failed")


__all__ = ["STATUSES", "MessagingError", "MessagingService", "topic_matches"]
