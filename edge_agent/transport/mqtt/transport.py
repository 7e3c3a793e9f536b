"""MqttTransport: connections, publishes with a bounded window, subscriptions, typed acks (see the package
docstring for the paho traps it avoids)."""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.config import MqttConfig
from edge_agent.errors import NotConnected, PublishRefused
from edge_agent.transport.backoff import backoff_delay
from edge_agent.transport.inflight import Inflight
from edge_agent.transport.mqtt.client import AckCounts, make_client, publish_props
from edge_agent.transport.types import ACCEPTED, LINK_LOST, Accepted, Ack, ConnectionStatus, InMessage, Refused, Will

log = logging.getLogger("edge_agent.transport")


AckCallback = Callable[[Any, Ack], None]  # (token, typed ack)

_AUTH_CODES = {134, 135, 138, 140}  # bad user/password, not authorized, banned, bad auth method


@functools.lru_cache(maxsize=64)
def refusal(code: int) -> Refused:
    """A PUBACK reason code >= 0x80 as :class:`Refused`, named from paho's MQTT 5 table (``0x87 not
    authorized``); a code outside the table (a broker's own) keeps only its number."""
    try:
        name = ReasonCode(PacketTypes.PUBACK, identifier=code).getName().lower()
    except ValueError:
        name = ""
    return Refused(code, name)


class MqttTransport:
    """A supervised MQTT 5 connection with bounded publishing and persistent subscriptions.

    Callbacks run on paho's network thread and must return quickly.
    """

    def __init__(self, cfg: MqttConfig, *, client_id: str | None = None, will: Will | None = None,
                 on_status: Callable[[ConnectionStatus], None] | None = None,
                 on_message: Callable[[InMessage], None] | None = None,
                 on_ack: AckCallback | None = None,
                 on_connected: Callable[[bool], None] | None = None,
                 persistent_session: bool = True, manual_ack: bool = False) -> None:
        self.cfg = cfg
        self.client_id = client_id or cfg.client_id
        self.will = will
        self._on_status = on_status or (lambda s: None)
        self._on_message = on_message or (lambda m: None)
        self._on_ack: AckCallback = on_ack or (lambda t, ack: None)
        self._on_connected = on_connected or (lambda sp: None)
        self.persistent_session = persistent_session
        self.manual_ack = manual_ack
        self._subs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._client: paho.Client | None = None
        self._gen = 0
        self._inflight = Inflight()  # guarded by _lock
        self._ack_counts = AckCounts()
        self._subs_sent_gen = -1  # the connection generation whose CONNACK re-sent every subscription
        self._online = threading.Event()
        self._subscribed = threading.Event()  # this connection's SUBACK for the subscriptions it re-sent
        self._sub_mid = -1
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.receive_maximum = 65535
        self.max_packet_size = 0
        self.reconnects = 0
        self.status = ConnectionStatus("offline", "not started")
        self.heartbeat: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ public API
    @property
    def connected(self) -> bool:
        return self._online.is_set()

    @property
    def receive_maximum(self) -> int:
        return self._receive_maximum

    @receive_maximum.setter
    def receive_maximum(self, value: int) -> None:
        self._receive_maximum = value
        # a plain attribute, not a property: the forwarder reads it for every message
        self.window = max(1, min(self.cfg.max_inflight, value))

    def inflight(self) -> int:
        """QoS>0 messages handed to the broker and not acknowledged (all publishers together).
        A lock-free read of one int (atomic in CPython): it is read for every message."""
        return self._inflight.reserved

    @property
    def peak_inflight(self) -> int:
        """The most QoS>0 messages ever awaiting PUBACK at once (never above ``window``)."""
        return self._inflight.peak

    @property
    def fast_acks(self) -> int:
        """PUBACKs decoded by the fast path (``mqtt.fast_ack``), all connections together."""
        return self._ack_counts.fast

    @property
    def fast_publishes(self) -> int:
        """PUBLISHes built by the fast path (``mqtt.fast_publish``), all connections together."""
        return self._ack_counts.published

    def set_ack_handler(self, fn: AckCallback) -> None:
        """Where acks go: ``fn(token, ack)`` on the network thread, ``ack`` an :data:`Ack`."""
        self._on_ack = fn

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, name="mqtt", daemon=True)
        self._thread.start()

    def wait_online(self, timeout: float) -> bool:
        """Wait for the CONNACK and then the SUBACK of the subscriptions: online *and* listening."""
        end = time.monotonic() + timeout
        return self._online.wait(timeout) and self._subscribed.wait(max(0.0, end - time.monotonic()))

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if online) and after every reconnect."""
        with self._lock:
            self._subs[topic] = qos
            # once this connection's CONNACK handler has taken its snapshot of _subs, a new
            # subscription must be sent now, or it would wait for the next reconnect
            client = self._client if self._subs_sent_gen == self._gen else None
        if client is not None:
            client.subscribe([(topic, SubscribeOptions(qos=qos))])

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._subs.pop(topic, None)
            client = self._client if self._online.is_set() else None
        if client is not None:
            client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                props: dict[str, Any] | None = None, token: Any = None) -> None:
        """Hand one message to the broker. The ack arrives via ``on_ack(token, ack)``.

        Raises NotConnected when offline, WindowFull when ``window`` QoS>0 messages are already
        unacknowledged (the broker's Receive Maximum is a hard limit, whoever publishes), and
        PublishRefused when paho refuses it.
        """
        with self._lock:
            client, gen = self._client, self._gen
            if client is None or not self._online.is_set():
                raise NotConnected("not connected to the broker")
            if qos > 0:
                self._inflight.reserve(self.window)
        try:
            if client.fast_pub and qos == 1 and not retain and not props:
                rc, mid = client.fast_publish(topic, payload)
            else:
                info = client.publish(topic, payload, qos=qos, retain=retain, properties=publish_props(props))
                rc, mid = info.rc, info.mid
        except BaseException:
            self._unreserve(gen, qos)
            raise
        if rc != paho.MQTT_ERR_SUCCESS:
            self._unreserve(gen, qos)
            if rc == paho.MQTT_ERR_NO_CONN:
                raise NotConnected("connection lost while publishing")
            raise PublishRefused(f"paho refused publish to {topic}: {paho.error_string(rc)}")
        if qos == 0:
            self._on_ack(token, ACCEPTED)
            return
        with self._lock:
            if gen != self._gen:
                raise NotConnected("connection replaced while publishing")
            code = self._inflight.sent(mid, token)
        if code is not None:
            self._deliver_ack(token, code)

    def _unreserve(self, gen: int, qos: int) -> None:
        if qos > 0:
            with self._lock:
                if gen == self._gen:
                    self._inflight.unreserve()

    def stop(self, timeout: float = 5.0, offline: Will | None = None) -> None:
        """Disconnect cleanly: publish ``offline`` (e.g. retained offline status) first if given."""
        self._stop.set()
        with self._lock:
            client = self._client
        if client is not None and self._online.is_set():
            try:
                if offline is not None:
                    info = client.publish(offline.topic, offline.payload, qos=offline.qos, retain=offline.retain)
                    if info.rc == paho.MQTT_ERR_SUCCESS:
                        info.wait_for_publish(timeout=min(2.0, timeout))
                client.disconnect()
            except (ValueError, RuntimeError, OSError) as e:
                log.debug("disconnect: %s", e)
        if self._thread is not None:
            self._thread.join(timeout)
        self._set_status(ConnectionStatus("stopped", "stop requested"))

    def drop_connection(self, reason: str) -> None:
        """Tear down the current link without DISCONNECT (the will is published); reconnect follows."""
        with self._lock:
            client = self._client
        if client is None:
            return
        log.warning("dropping MQTT connection: %s", reason)
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._lost.set()

    # ------------------------------------------------------------------ internals
    def _set_status(self, st: ConnectionStatus) -> None:
        self.status = st
        try:
            self._on_status(st)
        except Exception:
            log.exception("on_status callback failed")

    def _deliver_ack(self, token: Any, rc: int) -> None:
        ack = ACCEPTED if rc == 0 else Accepted(rc) if rc < 0x80 else refusal(rc)
        try:
            self._on_ack(token, ack)
        except Exception:
            log.exception("on_ack callback failed")

    def _make_client(self) -> paho.Client:
        c = make_client(self.cfg, self.client_id, self.will, self.manual_ack, self._ack_counts)
        gen = self._gen
        c.on_connect = lambda cl, ud, flags, rc, props: self._handle_connect(gen, cl, flags, rc, props)
        c.on_disconnect = lambda cl, ud, flags, rc, props: self._handle_disconnect(gen, rc)
        c.on_publish = functools.partial(self._handle_publish, gen)  # no lambda frame per PUBACK
        c.on_message = lambda cl, ud, msg: self._handle_message(cl, msg)
        c.on_subscribe = lambda cl, ud, mid, codes, props: (
            self._subscribed.set() if gen == self._gen and mid == self._sub_mid else None)
        return c

    def _handle_connect(self, gen: int, client: paho.Client, flags: Any, rc: Any, props: Any) -> None:
        if gen != self._gen:
            return
        if rc.is_failure:
            code = int(rc.value)
            state = "auth_failed" if code in _AUTH_CODES else "offline"
            self._set_status(ConnectionStatus(state, f"broker refused connection: {rc}"))
            self._lost.set()
            return
        rm = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self.receive_maximum = int(rm) if rm else 65535
        mps = getattr(props, "MaximumPacketSize", None) if props is not None else None
        self.max_packet_size = int(mps) if mps else 0
        with self._lock:
            subs = list(self._subs.items())
            self._subs_sent_gen = gen
        if subs:
            self._sub_mid = client.subscribe([(t, SubscribeOptions(qos=q)) for t, q in subs])[1]
        else:
            self._subscribed.set()
        session_present = bool(getattr(flags, "session_present", False))
        self._online.set()
        self._set_status(ConnectionStatus("online", f"connected to {self.cfg.host}:{self.cfg.port}",
                                          session_present=session_present))
        try:
            self._on_connected(session_present)
        except Exception:
            log.exception("on_connected callback failed")

    def _handle_disconnect(self, gen: int, rc: Any) -> None:
        if gen == self._gen:
            self._online.clear()
            self._lost.set()

    def _handle_publish(self, gen: int, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        """paho's on_publish (bound to its connection's ``gen``), once per PUBACK: keep it lean."""
        code = int(getattr(rc, "value", rc) or 0)
        with self._lock:
            if gen != self._gen:
                return
            entry = self._inflight.acked(mid, code)
        if entry is not None:
            self._deliver_ack(entry[0], code)

    def _handle_message(self, client: paho.Client, msg: paho.MQTTMessage) -> None:
        p = msg.properties
        ack = None
        if self.manual_ack and msg.qos > 0:
            mid, qos = msg.mid, msg.qos
            ack = lambda: client.ack(mid, qos)  # noqa: E731
        m = InMessage(topic=msg.topic, payload=msg.payload, qos=msg.qos, retain=bool(msg.retain),
                      response_topic=getattr(p, "ResponseTopic", None) if p else None,
                      correlation_data=getattr(p, "CorrelationData", None) if p else None,
                      content_type=getattr(p, "ContentType", None) if p else None,
                      user_properties=list(getattr(p, "UserProperty", []) or []) if p else [],
                      acker=ack)
        try:
            self._on_message(m)
        except Exception:
            log.exception("message handler failed for %s", msg.topic)

    def _connect_props(self) -> Properties:
        p = Properties(PacketTypes.CONNECT)
        if self.persistent_session and self.cfg.session_expiry:
            p.SessionExpiryInterval = self.cfg.session_expiry
        p.ReceiveMaximum = 1000
        return p

    def _supervise(self) -> None:
        attempt = 0
        keepalive = self.cfg.keepalive
        paho_keepalive = max(1, keepalive // 2)
        while not self._stop.is_set():
            with self._lock:
                self._gen += 1
                self._inflight.reset()
                client = self._client = self._make_client()
            self._lost.clear()
            self._set_status(ConnectionStatus("connecting", f"{self.cfg.host}:{self.cfg.port}", attempt=attempt))
            started = time.monotonic()
            try:
                client.connect(self.cfg.host, self.cfg.port, keepalive=paho_keepalive,
                               clean_start=not self.persistent_session, properties=self._connect_props())
            except (OSError, ssl.SSLError, ValueError) as e:
                self._set_status(ConnectionStatus("offline", f"cannot connect to {self.cfg.host}:"
                                                  f"{self.cfg.port}: {e}", attempt=attempt))
            else:
                client.loop_start()
                self._watch(client, started)
                client.loop_stop()
                self._online.clear()
                self._subscribed.clear()
                sock = client.socket()
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
                was_online = self.status.state == "online"
                if was_online:
                    self.reconnects += 1
                if self.status.state not in ("auth_failed",) and not self._stop.is_set():
                    self._set_status(ConnectionStatus("offline", "connection lost" if was_online else
                                                      self.status.reason or "no CONNACK", attempt=attempt))
                if time.monotonic() - started > 2 * keepalive:
                    attempt = 0
            self._drop_inflight()
            if self._stop.is_set():
                break
            delay = backoff_delay(attempt, self.cfg.reconnect_min, self.cfg.reconnect_max)
            attempt += 1
            self._stop.wait(delay)
        with self._lock:
            self._client = None

    def _watch(self, client: paho.Client, started: float) -> None:
        keepalive = self.cfg.keepalive
        while not self._stop.is_set() and not self._lost.is_set():
            self._lost.wait(0.2)
            self.heartbeat()
            if not self._online.is_set():
                if time.monotonic() - started > self.cfg.connect_timeout and not self._lost.is_set():
                    self._set_status(ConnectionStatus("offline", "no CONNACK within connect_timeout"))
                    self.drop_connection("no CONNACK")
                    return
                continue
            with self._lock:
                oldest = self._inflight.oldest()
            if oldest is not None and time.monotonic() - oldest > keepalive:
                self.drop_connection(f"no PUBACK for {keepalive} s (half-open link?)")
                return
        if self._stop.is_set() and client.is_connected():
            # stop(): give paho a moment to send DISCONNECT
            deadline = time.monotonic() + 1.0
            while client.is_connected() and time.monotonic() < deadline:
                time.sleep(0.02)

    def _drop_inflight(self) -> None:
        with self._lock:
            lost = self._inflight.reset()
        for tok in lost:
            try:
                self._on_ack(tok, LINK_LOST)
            except Exception:
                log.exception("on_ack callback failed")

