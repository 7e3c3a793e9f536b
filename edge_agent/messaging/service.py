"""The messaging service: direct, group and stream messages, receipts, files and the history, on a Host.

It sees the agent only through :class:`edge_agent.host.Host`::

    send()/send_group()/publish()/send_file()
        --> host.put (seq) + history row "pending"          (tracking.py: every status after that)
    host.subscribe(inbox, receipts, subscribe()d)           (inbound.py: what arrives)
    join()/leave(), members, peers' status                  (groups.py, presence.py)
    files                                                   (transfers.py: chunks, assembly, re-sends)
    on_message / on_message_status / on_connection_status   (dispatch.py: one thread calls the app)

Lifecycle: the constructor only stores. :meth:`open` opens ``history.db``, registers the outbox and ack
callbacks, reconciles with the outbox and re-sends receipts lost at the last stop; after it, messages can
be sent. :meth:`start` opens if needed, subscribes (inbox, receipts, groups) and starts the callback, ack
and sweep threads; the host must call
it before its transport connects, so the persistent session's queued messages find their handlers.
:meth:`stop` stops the threads and closes the history, after the outbox drained (a later ack is lost: the
message stays "queued" until a receipt or its TTL). Subscriptions live in the persistent MQTT session.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edge_agent.host import ConnectionStatus, Disposition, Host, InMessage, Outgoing
from edge_agent.message import MESSAGE_CLASSES
from edge_agent.messaging.authn import Authenticator, make_authenticator
from edge_agent.messaging.dispatch import Dispatcher, Listener
from edge_agent.messaging.envelope import (
    DATA_MAX,
    MessagingError,
    check_data,
    check_filter,
    check_id,
    json_safe,
    topic_matches,
)
from edge_agent.messaging.groups import Groups
from edge_agent.messaging.history import HISTORY_FILE, STATUSES, History, HistoryError, Message
from edge_agent.messaging.inbound import Inbound
from edge_agent.messaging.presence import PresenceBook
from edge_agent.messaging.tracking import RECEIPT_BATCH, Tracker
from edge_agent.messaging.transfers import TRANSFERS_DIR, FileTransfers, Ttl
from edge_agent.roster import RosterError, roster_topic
from edge_agent.transfer import ChunkAssembler
from edge_agent.transport.topics import group_msg_topic, inbox_topic, receipts_topic, stream_topic, valid_level

log = logging.getLogger("edge_agent.messaging")

RESERVED_STREAMS = ("inbox", "receipts", "cmd", "cmd-reply", "status")
MAX_DATA = DATA_MAX
QUERY_FILTERS = frozenset(
    {"peer", "group", "stream", "sender", "since", "until", "search", "unread", "kind", "limit", "newest_first"})
_PRUNE_EVERY = 600.0  # seconds between full retention passes (history age/size, stale transfers)


def _exactly(topic: str) -> Callable[[str], bool]:
    return topic.__eq__


@dataclass
class _Parts:
    """What :meth:`MessagingService.open` makes."""
    history: History
    tracker: Tracker
    transfers: FileTransfers
    inbound: Inbound
    auth: Authenticator
    groups: Groups
    presence: PresenceBook


class MessagingService:
    name = "messaging"
    stops_after_drain = True

    def __init__(self, host: Host) -> None:
        self.host = host
        cfg = host.config
        self.cfg = cfg.messaging
        self.dev = cfg.device.id
        self.prefix = cfg.mqtt.topic_prefix
        self.default_ttl = self.cfg.default_ttl or cfg.storage.max_age
        self._sync = cfg.storage.sync
        self._dispatcher = Dispatcher()
        self._parts: _Parts | None = None
        self._state = "new"  # new -> open -> started -> closed
        self._life = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subs: list[str] = []  # subscribe()d filters

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open the history and the transfers directory, hook into the outbox; idempotent."""
        with self._life:
            if self._state == "closed":
                raise MessagingError("the messaging service was stopped; make a new one")
            if self._parts is None:
                self._parts = self._make_parts()
                self._state = "open"

    def _make_parts(self) -> _Parts:
        auth = make_authenticator(self.cfg, self.host.config.commands.keys, self.prefix, self.host.state_dir)
        h = History(self.host.state_dir / HISTORY_FILE, max_age=self.cfg.history_max_age,
                    max_bytes=self.cfg.history_max_bytes, sync=self._sync)
        try:
            tracker = Tracker(self.host, h, prefix=self.prefix, emit=self._emitter(h), seal=auth.extra,
                              report=self._dispatcher.status)
            h.open_journal(tracker.wake)  # rows a killed process journaled: stored before reconcile()
            transfers = FileTransfers(self.host, h, tracker, ChunkAssembler(self.host.state_dir / TRANSFERS_DIR),
                                      dev=self.dev, prefix=self.prefix, chunk_size=self.cfg.chunk_size,
                                      receipt=tracker.send_receipt, received=self._dispatcher.wake, seal=auth.extra)
            inbound = Inbound(h, tracker, transfers, auth, dev=self.dev, emit=self._emitter(h),
                              received=self._dispatcher.received, unstored=self._dispatcher.unstored)
            self.host.on_committed(tracker.on_committed)
            self.host.on_dropped(tracker.on_dropped)
            self.host.on_ack(tracker.on_ack)
            self.host.on_connection(self._on_connection)
            tracker.reconcile()
            presence = PresenceBook(self.host, dev=self.dev, prefix=self.prefix,
                                    notify=lambda peer, pr: self._dispatcher.event("presence", (peer, pr)))
            groups = Groups(self.host, auth, dev=self.dev, prefix=self.prefix,
                            configured=list(self.host.config.device.groups), handler=inbound.group,
                            on_member=presence.watch)
            groups.open()
        except BaseException:
            h.close()
            raise
        return _Parts(h, tracker, transfers, inbound, auth, groups, presence)

    def _emitter(self, h: History) -> Callable[[str], None]:
        """``emit(mid)``: report the message's status as it is now (a snapshot, queued for the callbacks)."""
        return lambda mid: self._dispatcher.status(h.get(mid))

    def start(self) -> None:
        """Open if needed, subscribe, start the callback and sweep threads."""
        self.open()
        with self._life:
            if self._state != "open":
                return
            self._state = "started"
            p = self._need()
            if p.auth.book is not None:  # before the inbox: the retained roster comes first on a new session
                topic = roster_topic(self.prefix)
                self.host.subscribe(topic, _exactly(topic), self._on_roster, qos=1)
            self.host.subscribe(self._inbox, _exactly(self._inbox), p.inbound.inbox, qos=1)
            self.host.subscribe(self._receipts, _exactly(self._receipts), p.inbound.receipts, qos=1)
            p.groups.start()
            p.presence.start()
            for full in self._subs:
                self._subscribe_stream(full)
            p.tracker.start()
            for name, fn in (("messaging-callbacks", self._dispatch), ("messaging-sweep", self._sweep)):
                t = threading.Thread(target=fn, name=name, daemon=True)
                t.start()
                self._threads.append(t)
        self._dispatcher.wake()  # messages stored but not yet seen by the app before a restart

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until the PUBACKs received so far are in the history (batched on a thread); False on timeout."""
        return self._parts is None or self._parts.tracker.settle(timeout)

    def stop(self) -> None:
        """Stop the callback and sweep threads and close the history (from a callback, too)."""
        self._stop.set()
        self._dispatcher.wake()
        for t in [t for t in self._threads if t is not threading.current_thread()]:
            t.join(5.0)
        self._threads.clear()
        if self._parts is not None:
            self._parts.tracker.stop()
        self.close()

    def close(self) -> None:
        """Close the history (idempotent); :meth:`stop` does it too."""
        with self._life:
            self._state = "closed"
            if self._parts is not None:
                self._parts.history.close()

    def _need(self) -> _Parts:
        if self._parts is None:
            raise MessagingError("the messaging service is not open yet (start() or open() it first)")
        return self._parts

    @property
    def _inbox(self) -> str:
        return inbox_topic(self.prefix, self.dev)

    @property
    def _receipts(self) -> str:
        return receipts_topic(self.prefix, self.dev)

    @property
    def history(self) -> History:
        """The local history (open once the service is)."""
        return self._need().history

    @property
    def assembler(self) -> ChunkAssembler:
        """Incoming file transfers."""
        return self._need().transfers.assembler

    @property
    def public_key(self) -> str | None:
        """This device's Ed25519 public key (base64), for the fleet roster; None when signing is off."""
        return self._need().auth.public_key

    @property
    def roster_version(self) -> int | None:
        """The version of the fleet roster held (None: no verified roster yet)."""
        book = self._need().auth.book
        r = book.current if book is not None else None
        return r.version if r is not None else None

    def refused(self) -> dict[str, int]:
        """Inbound envelopes refused as not authentic since start, by reason."""
        return self._need().auth.counts()

    groups = property(lambda self: self._need().groups, doc="Live groups (groups.py), once open.")
    presence = property(lambda self: self._need().presence, doc="Peers' presence (presence.py), once open.")

    def _on_roster(self, msg: InMessage) -> Disposition:
        book = self._need().auth.book
        if book is None or not msg.payload:
            return Disposition.ACK
        try:
            book.offer(msg.payload)
        except RosterError as e:
            log.warning("roster on %s refused: %s", msg.topic, e)
        return Disposition.ACK

    # ------------------------------------------------------------------ listeners (user side)
    def add_listener(self, kind: str, fn: Listener) -> None:
        """``fn(arg)`` on the callback thread: kind message (Message), status (Message) or connection."""
        self._dispatcher.add(kind, fn)

    def _on_connection(self, st: ConnectionStatus) -> None:
        if self._parts is not None:
            self._parts.inbound.on_connection(st)
        self._dispatcher.connection(st)

    # ------------------------------------------------------------------ sending
    def send(self, to: str, data: Any, *, ttl: float | None = None) -> Message:
        check_id(to, "recipient")
        if to == self.dev:
            raise MessagingError(f"cannot send a message to myself ({to!r})")
        m = self._put(inbox_topic(self.prefix, to), "msg", data, kind="msg", ttl=ttl, peer=to,
                      extra={"to": to, "kind": "msg"})
        self._need().presence.watch(to)
        return m

    def send_group(self, group: str, data: Any, *, ttl: float | None = None) -> Message:
        check_id(group, "group")
        m = self._put(group_msg_topic(self.prefix, group), "msg", data, kind="msg", ttl=ttl, group=group,
                      extra={"group": group, "kind": "msg"})
        self._need().groups.sent(m.id, group)
        return m

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

    def send_file(self, to: str, path: str | os.PathLike[str], *, name: str | None = None,
                  ttl: float | None = None) -> Message:
        """Send a file in chunks; the returned message's status covers the whole file."""
        check_id(to, "recipient")
        if to == self.dev:
            raise MessagingError(f"cannot send a file to myself ({to!r})")
        ttl_ = self._ttl(ttl)
        return self._message(self._need().transfers.send(to, path, name, ttl_))

    def _ttl(self, ttl: float | None) -> Ttl:
        if ttl is None:
            return Ttl(self.default_ttl, bool(self.cfg.default_ttl))
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0 or not math.isfinite(ttl):
            raise MessagingError(f"ttl must be a positive number of seconds, got {ttl!r}")
        return Ttl(float(ttl), True)

    def _put(self, topic: str, stream: str, data: Any, *, kind: str, ttl: float | None, extra: dict[str, Any],
             peer: str | None = None, group: str | None = None, cls: str = "event") -> Message:
        size = check_data(data)
        if size > MAX_DATA:
            raise MessagingError(f"message data is {size} bytes encoded, over {MAX_DATA}; use send_file()")
        t = self._ttl(ttl)
        p = self._need()
        extra = {**extra, **t.extra(), **p.auth.extra(topic)}

        def build(ts: float) -> Outgoing:
            return Outgoing(topic=topic, stream=stream, data=data, cls=cls, ts=ts, ttl=t.seconds, props=t.props(),
                            extra=extra or None)

        def record(seq: int, ts: float) -> Message:
            mid = f"{self.dev}:{seq}"
            return p.history.add_later(mid=mid, sender=self.dev, seq=seq, kind=kind, data=data, ts=ts,
                                       status="pending", peer=peer, group=group,
                                       stream=stream if kind == "stream" else None, expires=ts + t.seconds,
                                       outseqs=[seq], cls=cls)

        return p.tracker.put_message(build, record)

    def _message(self, mid: str) -> Message:
        m = self.history.get(mid)
        if m is None:  # retention cannot have removed a row this young: the history is broken
            raise HistoryError(f"message {mid} is not in the history right after it was stored")
        return m

    # ------------------------------------------------------------------ receiving
    def subscribe(self, topic_filter: str, *, share: str | None = None) -> str:
        """Also receive envelopes published on ``topic_filter`` (e.g. ``edge/+/inference/#``); with
        ``share``, as an MQTT 5 shared subscription ``$share/<share>/<filter>`` so copies split the load."""
        full = check_filter(topic_filter, share)
        with self._life:
            if full in self._subs:
                return full
            self._subs.append(full)
            if self._state == "started":  # else start() subscribes it
                self._subscribe_stream(full)
        return full

    def _subscribe_stream(self, full: str) -> None:
        self.host.subscribe(full, lambda topic: topic_matches(full, topic), self._need().inbound.stream, qos=1)

    # ------------------------------------------------------------------ history (user side)
    def mark_read(self, ids: Iterable[str] | None = None, *, peer: str | None = None, group: str | None = None,
                  stream: str | None = None) -> int:
        """Mark received messages read and send read receipts to their senders; return how many."""
        if ids is None and peer is None and group is None and stream is None:
            raise MessagingError("mark_read: give message ids, peer=, group= or stream= (all=... is not implied)")
        p = self._need()
        by_sender = p.history.mark_read(ids, peer=peer, group=group, stream=stream)
        for sender, mids in by_sender.items():
            for i in range(0, len(mids), RECEIPT_BATCH):
                p.tracker.send_receipt(sender, mids[i:i + RECEIPT_BATCH], "read")
        return sum(len(v) for v in by_sender.values())

    def history_query(self, **filters: Any) -> list[dict[str, Any]]:
        """The ``history.query`` command: filters as for :meth:`History.query` (default: newest 100 first);
        JSON-safe rows (bytes as base64)."""
        unknown = sorted(set(filters) - QUERY_FILTERS)
        if unknown:
            raise HistoryError(f"unknown history filter(s) {', '.join(unknown)} "
                               f"(known: {', '.join(sorted(QUERY_FILTERS))})")
        filters.setdefault("limit", 100)
        filters.setdefault("newest_first", True)
        if not isinstance(filters["limit"], int) or not 0 <= filters["limit"] <= 10000:
            raise HistoryError(f"limit must be an integer in 0..10000, got {filters['limit']!r}")
        return [json_safe(m.as_dict()) for m in self.history.query(**filters)]

    # ------------------------------------------------------------------ threads
    def _dispatch(self) -> None:
        self._dispatcher.run(self._need().history, self._stop)

    def _sweep(self) -> None:
        """Every second: expire what outlived its TTL, retry deferred inbound messages, apply retention."""
        p = self._need()
        next_prune = time.monotonic()  # the first pass right away: stale transfers from before a restart
        while not self._stop.wait(1.0):
            try:
                for mid in p.history.expire_due():
                    p.tracker.forget(mid)
                    self._dispatcher.status(p.history.get(mid))
                p.inbound.retry()
                p.history.maybe_trim()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + _PRUNE_EVERY
                    p.history.trim()
                    p.transfers.prune(self.cfg.transfer_max_age)
            except (HistoryError, OSError) as e:
                log.warning("messaging sweep: %s", e)
            except Exception:
                log.exception("messaging sweep failed")


__all__ = ["STATUSES", "MessagingError", "MessagingService", "json_safe", "topic_matches"]
