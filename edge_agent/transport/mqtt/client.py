"""The paho client with two hot paths shortened, and paho property building (the MQTT transport's paho part).

For every PUBACK paho 2.2 builds a ``ReasonCode`` and a ``Properties`` object even when the packet is the
plain 2-byte success ack Mosquitto sends, about a fifth of the agent's GIL time at full rate (measured with
``py-spy --gil``, see bench/throughput.py); and with ``max_inflight`` set, every ack scans paho's whole
out-message dict. :class:`FastAckClient` decodes 2- and 3-byte PUBACKs itself (anything longer, i.e. with
properties, takes paho's own path); paho's inflight limit is off because ``MqttTransport.publish`` already
enforces the window (``WindowFull``).

For every QoS 1 publish paho builds an ``MQTTMessage``, an ``MQTTMessageInfo`` with its own
``threading.Condition``, re-encodes and re-checks the topic, and wakes its network thread through a socket
pair even when the publish comes from that very thread (the forwarder publishes the next row from the
PUBACK callback). :meth:`FastAckClient.fast_publish` builds the plain PUBLISH (QoS 1, not retained, no
properties) itself, with the topic's encoded header cached, and wakes the loop only from another thread;
paho's bookkeeping (``_out_messages``, the inflight count) is kept, so paho's own PUBACK path still finds
the message.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import MqttConfig
from edge_agent.transport.types import Will


class AckCounts:
    fast = 0  # PUBACKs decoded by FastAckClient's fast path, all connections together
    published = 0  # PUBLISHes built by its fast_publish


class FastAckClient(paho.Client):
    """paho's client with one hot path shortened: PUBACKs without properties are decoded here.

    Relies on paho internals (``_in_packet``, ``_out_messages``, ``_out_message_mutex``,
    ``_do_on_publish``); if a paho upgrade renames one of them, the stock path is used (checked on each
    new client, see :meth:`fast_ack_supported`). ``counts.fast`` counts the PUBACKs it decoded.
    """

    fast_ack = False
    fast_pub = False
    counts: AckCounts

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heads: dict[str, bytes] = {}  # topic -> its encoded length-prefixed header (fast_publish)

    def _handle_pubackcomp(self, cmd: Any) -> Any:
        if self.fast_ack and cmd == "PUBACK":
            packet = self._in_packet["packet"]
            n = len(packet)
            if n == 2 or n == 3:  # mid (+ reason code), no properties
                mid = (packet[0] << 8) | packet[1]
                code = packet[2] if n == 3 else 0
                self.counts.fast += 1
                with self._out_message_mutex:
                    if mid in self._out_messages:
                        # on_publish gets the reason code as an int (our callback accepts both)
                        return self._do_on_publish(mid, code, None)  # type: ignore[arg-type]
                return paho.MQTT_ERR_SUCCESS
        return super()._handle_pubackcomp(cmd)

    def fast_publish(self, topic: str, payload: bytes) -> tuple[int, int]:
        """Queue a QoS 1 PUBLISH without properties, not retained: returns (paho's error code, message id).

        ``ValueError`` for a topic paho would refuse (wildcards, too long), like ``publish``."""
        head = self._heads.get(topic)
        if head is None:
            tb = topic.encode("utf-8")
            self._raise_for_invalid_topic(tb)
            head = len(tb).to_bytes(2, "big") + tb
            if len(self._heads) < 4096:  # a bound for agents that publish to ever new topics
                self._heads[topic] = head
        if self._sock is None:
            return paho.MQTT_ERR_NO_CONN, 0
        mid = self._mid_generate()
        n = len(head) + 3 + len(payload)  # topic, message id, empty property length, payload
        if n > 268_435_455:
            raise ValueError("Payload too large.")
        packet = bytearray(b"\x32")  # PUBLISH, QoS 1
        while True:  # the remaining length, 7 bits a byte
            if n < 0x80:
                packet.append(n)
                break
            packet.append((n & 0x7F) | 0x80)
            n >>= 7
        packet += head
        packet += mid.to_bytes(2, "big")
        packet += b"\x00"
        packet += payload
        with self._out_message_mutex:
            held = self._out_messages
            if mid in held or 0 < self._max_queued_messages <= len(held):  # as paho's publish() refuses
                return paho.MQTT_ERR_QUEUE_SIZE, mid
            held[mid] = _PLACEHOLDER  # paho's PUBACK paths look the mid up here
            self._inflight_messages += 1
        self.counts.published += 1
        self._out_packet.append({"command": paho.PUBLISH, "mid": mid, "qos": 1, "pos": 0,
                                 "to_process": len(packet), "packet": packet, "info": None})
        wake = self._sockpairW  # read once: paho sets it to None when it closes the pair
        if wake is not None and self._thread is not threading.current_thread():
            try:  # wake paho's select(); its own thread writes the packet on its next pass anyway
                wake.send(b"0")
            except OSError:  # full (a wake-up is pending anyway), or closed with the connection: the
                pass         # transport then reports the message lost and it is sent again
        return paho.MQTT_ERR_SUCCESS, mid

    def fast_publish_supported(self) -> bool:
        """Whether this paho has every internal :meth:`fast_publish` uses (on the instance)."""
        return all(hasattr(self, a) for a in (
            "_sock", "_mid_generate", "_raise_for_invalid_topic", "_out_messages", "_out_message_mutex",
            "_inflight_messages", "_max_queued_messages", "_out_packet", "_sockpairW", "_thread"))

    def fast_ack_supported(self) -> bool:
        """Whether this paho has every internal the fast path uses (on the instance: some are set in
        ``__init__``)."""
        return all(hasattr(self, a) for a in ("_in_packet", "_out_messages", "_out_message_mutex",
                                              "_do_on_publish"))


# the value paho finds in ``_out_messages`` for a fast-published mid: its PUBACK path pops it, marks its
# info published and counts the inflight message down (qos 1); nothing else reads it in a connection's life
_PLACEHOLDER = paho.MQTTMessage(0, b"")
_PLACEHOLDER.qos = 1


def publish_props(d: dict[str, Any] | None) -> Properties | None:
    if not d:
        return None
    p = Properties(PacketTypes.PUBLISH)
    if d.get("response_topic"):
        p.ResponseTopic = d["response_topic"]
    if d.get("correlation_data") is not None:
        p.CorrelationData = bytes(d["correlation_data"])
    if d.get("content_type"):
        p.ContentType = d["content_type"]
    if d.get("message_expiry"):
        p.MessageExpiryInterval = int(d["message_expiry"])
    if d.get("user_properties"):
        p.UserProperty = [tuple(x) for x in d["user_properties"]]
    return p


def make_client(cfg: MqttConfig, client_id: str, will: Will | None, manual_ack: bool,
                counts: AckCounts) -> FastAckClient:
    """A client for one connection: MQTT 5, TLS, credentials, will and the fast paths as configured (the
    caller sets the callbacks)."""
    c = FastAckClient(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                      reconnect_on_failure=False, manual_ack=manual_ack)
    c.fast_ack = cfg.fast_ack and c.fast_ack_supported()
    c.fast_pub = cfg.fast_publish and c.fast_publish_supported()
    c.counts = counts
    # 0 = no paho limit: the transport's publish() enforces the window itself and refuses with WindowFull,
    # so paho never queues (its queue would re-send on its own terms and scan all messages on every ack)
    c.max_inflight_messages_set(0)
    c.max_queued_messages_set(0)
    c.connect_timeout = cfg.connect_timeout
    if cfg.username:
        c.username_pw_set(cfg.username, cfg.password or None)
    if cfg.tls is not None:
        ctx = ssl.create_default_context(cafile=cfg.tls.ca or None)
        if cfg.tls.cert:
            ctx.load_cert_chain(cfg.tls.cert, cfg.tls.key or None)
        c.tls_set_context(ctx)
    if will is not None:
        c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    c.on_socket_open = _no_delay
    return c


def _no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """TCP_NODELAY: Nagle held a PUBLISH behind a small PUBACK (send() -> on_message 26 ms, not 0.8 ms)."""
    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (e.g. a websocket wrapper)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
