"""What arrives: direct and group messages, files, stream messages, receipts for what we sent.

::

    <prefix>/<me>/inbox, <prefix>/group/<g>/msg  --> dedupe by "<dev>:<seq>" in history.db (committed)
        --> dispatcher thread --> on_message (as it is stored: once per message unless the app dies
            before the commit or mid-callback)
        --> receipt "delivered" through the outbox --> Disposition.ACK --> the router PUBACKs
    <prefix>/<me>/receipts                        --> delivered | read | missing chunks | failed
    subscribe()d filters                          --> stream messages in the history

Handlers run on the network thread and return once what must be kept is committed. A message that is
not an envelope, or that is refused for good, is acknowledged (a poison message must never hold the
receive window). When the history or the disk cannot take it right now (full, closed while stopping),
the handler returns :attr:`Disposition.DEFER` (only for a *transient* condition, :func:`transient`: any
other OSError, e.g. a chunk whose file name collides with a directory, is the message's fault and is
raised, so the router acknowledges and counts it): the message is kept here, handled again by
:meth:`Inbound.retry` (the service's sweep, every second) and acknowledged once stored. Later messages
queue behind it, so the app still sees them in order. If the link drops meanwhile, the deferred messages
are let go: the broker sends them again on the next connection.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from edge_agent.host import ConnectionStatus, Disposition, InMessage
from edge_agent.messaging.authn import Authenticator, message_id
from edge_agent.messaging.envelope import decode_envelope, expired
from edge_agent.messaging.history import History, HistoryError, HistoryUnavailable, Message
from edge_agent.messaging.tracking import Tracker
from edge_agent.messaging.transfers import FileTransfers
from edge_agent.transfer import TransferError

log = logging.getLogger("edge_agent.messaging")

Route = Callable[[dict[str, Any]], None]
MAX_DEFERRED = 1000  # the broker's in-flight window is far smaller; past this, the broker redelivers
#: OSErrors a later retry can get past (a full disk, a busy file); any other one would fail for ever.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ENOMEM})


def transient(e: BaseException) -> bool:
    """Whether storing may succeed later: the message may then wait unacknowledged (bounded)."""
    return isinstance(e, HistoryUnavailable) or (isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS)


class Inbound:
    """The inbound handlers of one messaging service (see the module docstring)."""

    def __init__(self, history: History, tracker: Tracker, transfers: FileTransfers, auth: Authenticator, *,
                 dev: str, emit: Callable[[str], None], received: Callable[[int, Message | None], None],
                 unstored: Callable[[str], None] = lambda mid: None) -> None:
        self._history = history
        self._auth = auth
        self._tracker = tracker
        self._transfers = transfers
        self._dev = dev
        self._emit = emit  # a status changed without a step (a new group receipt)
        self._received = received  # (rowid, message as stored) is in the history (Dispatcher.received)
        self._unstored = unstored  # ... or storing it failed after all (Dispatcher.unstored)
        self._lock = threading.Lock()
        self._deferred: deque[tuple[InMessage, Route, dict[str, Any]]] = deque()

    # ------------------------------------------------------------------ handlers (host.subscribe)
    def inbox(self, msg: InMessage) -> Disposition:
        return self._handle(msg, lambda env: self._incoming(env, None), verify="answer")

    def group(self, name: str) -> Callable[[InMessage], Disposition]:
        return lambda msg: self._handle(msg, lambda env: self._incoming(env, name), verify="answer")

    def receipts(self, msg: InMessage) -> Disposition:
        return self._handle(msg, self._receipt, verify="silent")

    def stream(self, msg: InMessage) -> Disposition:
        return self._handle(msg, self._stream, verify="")  # streams are not authenticated (docs/messaging.md)

    def _handle(self, msg: InMessage, route: Route, verify: str) -> Disposition:
        env = decode_envelope(msg)
        if env is None:
            return Disposition.ACK
        if verify and not (verify == "answer" and env["dev"] == self._dev):  # our own group echo: ignored anyway
            why = self._auth.check(msg.topic, env)
            if why is not None:  # never stored: it cannot be shown as the sender's nor displace the real one
                self._refuse(msg, env, why, answer=verify == "answer")
                return Disposition.ACK
        with self._lock:
            if self._deferred:  # keep the order: behind the ones waiting
                return self._defer(msg, route, env)
            try:
                route(env)
            except (HistoryUnavailable, OSError) as e:
                if not transient(e):
                    raise  # refused for good: the router acknowledges it, counts and logs it
                log.warning("message on %s from %s kept for later: %s", msg.topic, env["dev"], e)
                return self._defer(msg, route, env)
            except (HistoryError, TransferError) as e:
                log.warning("message on %s from %s not handled: %s", msg.topic, env["dev"], e)
        return Disposition.ACK

    def _refuse(self, msg: InMessage, env: dict[str, Any], why: str, *, answer: bool) -> None:
        dev, seq = env["dev"], env["seq"]
        n = sum(self._auth.counts().values())
        if n <= 20 or n % 100 == 0:
            log.warning("message on %s claiming to be %s:%s refused (%s); %d refused so far", msg.topic, dev, seq,
                        why, n)
        if not answer or dev == self._dev or not self._auth.may_answer(dev):
            return
        sig = env.get("sig")  # the sender applies the answer only if this is the signature it made
        self._tracker.send_receipt(dev, [message_id(env)], "failed", reason=f"refused by {self._dev}: {why}",
                                   refused=True, sig=sig if isinstance(sig, bytes) else b"")

    def _defer(self, msg: InMessage, route: Route, env: dict[str, Any]) -> Disposition:
        if len(self._deferred) < MAX_DEFERRED:
            self._deferred.append((msg, route, env))
        return Disposition.DEFER

    # ------------------------------------------------------------------ deferred messages
    def retry(self) -> int:
        """Handle deferred messages again, oldest first, until one still cannot be kept; return how many
        were acknowledged."""
        done = 0
        with self._lock:
            while self._deferred:
                msg, route, env = self._deferred[0]
                try:
                    route(env)
                except (HistoryUnavailable, OSError) as e:
                    if transient(e):
                        break
                    log.warning("message on %s from %s refused: %s", msg.topic, env["dev"], e)
                except (HistoryError, TransferError) as e:
                    log.warning("message on %s from %s not handled: %s", msg.topic, env["dev"], e)
                self._deferred.popleft()
                msg.ack()
                done += 1
        if done:
            log.info("%d deferred message(s) stored and acknowledged", done)
        return done

    @property
    def deferred(self) -> int:
        return len(self._deferred)

    def on_connection(self, st: ConnectionStatus) -> None:
        if st.state != "online":
            with self._lock:
                if self._deferred:
                    log.info("link down: %d deferred message(s) will be redelivered by the broker",
                             len(self._deferred))
                self._deferred.clear()

    # ------------------------------------------------------------------ routes
    def _incoming(self, env: dict[str, Any], group: str | None) -> None:
        dev, seq = env["dev"], env["seq"]
        if dev == self._dev:
            return  # our own group message, already in the history as sent
        if env["stream"] == "file":
            self._transfers.on_chunk(env)
            return
        mid = f"{dev}:{seq}"
        if expired(env):
            log.info("message %s arrived after its time-to-live; dropped", mid)
            return
        now = time.time()
        data, ts, peer = env.get("data"), float(env["ts"]), None if group else dev

        def stored(rowid: int) -> None:
            """To on_message as stored (nothing read back) while it is inserted and committed: the PUBACK
            still waits for the commit; if that fails, the message waits (DEFER) and is not handed over
            again once stored (a crash before the commit: the broker sends it again, on_message sees it
            twice)."""
            self._received(rowid, Message(id=mid, sender=dev, seq=seq, outgoing=False, kind="msg", data=data, ts=ts,
                                          status="received", to=peer, group=group, unread=True, stored=now,
                                          updated=now, cls=env.get("cls")))

        try:
            self._history.add(mid=mid, sender=dev, seq=seq, outgoing=False, kind="msg", data=data, ts=ts,
                              status="received", peer=peer, group=group, notified=False, cls=env.get("cls"), now=now,
                              stored=stored)
        except BaseException:
            self._unstored(mid)
            raise
        # also for a duplicate: the first receipt may have been lost with a crash
        self._tracker.send_receipt(dev, [mid], "delivered")

    def _stream(self, env: dict[str, Any]) -> None:
        dev, seq = env["dev"], env["seq"]
        mine = dev == self._dev
        rowid = self._history.add(mid=f"{dev}:{seq}", sender=dev, seq=seq, outgoing=mine, kind="stream",
                                  data=env.get("data"), ts=float(env["ts"]), status="received", stream=env["stream"],
                                  notified=mine, cls=env.get("cls") or "telemetry", unread=False)
        if rowid is not None and not mine:
            self._received(0, None)  # read from the history by the dispatcher

    def _receipt(self, env: dict[str, Any]) -> None:
        by, d = env["dev"], env.get("data")
        if not isinstance(d, dict) or not isinstance(d.get("ids"), list):
            log.warning("receipt from %s dropped: malformed", by)
            return
        status = d.get("status")
        mine = f"{self._dev}:"
        for mid in d["ids"]:
            if not isinstance(mid, str) or not mid.startswith(mine):
                continue
            if status in ("delivered", "read"):
                news, _ = self._history.apply_receipt(mid, by, status)
                if news and not self._tracker.advance(mid, status):
                    self._emit(mid)  # a new receipt (another group member) without a status change
            elif status == "missing" and isinstance(d.get("missing"), list):
                self._transfers.resend(mid, [i for i in d["missing"] if isinstance(i, int)])
            elif status == "failed":
                if d.get("refused") and self._auth.signed(d.get("sig")) != mid:
                    log.info("%s refused an envelope claiming to be %s that we did not sign (a forgery)", by, mid)
                    continue
                self._tracker.advance(mid, "failed", f"{by}: {str(d.get('reason', ''))[:500]}")
