"""The paho client with one hot path shortened, and paho property building (the MQTT transport's paho part).

For every PUBACK paho 2.2 builds a ``ReasonCode`` and a ``Properties`` object even when the packet is the
plain 2-byte success ack Mosquitto sends, about a fifth of the agent's GIL time at full rate (measured with
``py-spy --gil``, see bench/throughput.py); and with ``max_inflight`` set, every ack scans paho's whole
out-message dict. :class:`FastAckClient` decodes 2- and 3-byte PUBACKs itself (anything longer, i.e. with
properties, takes paho's own path); paho's inflight limit is off because ``MqttTransport.publish`` already
enforces the window (``WindowFull``).
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class AckCounts:
    fast = 0  # PUBACKs decoded by FastAckClient's fast path, all connections together


class FastAckClient(paho.Client):
    """paho's client with one hot path shortened: PUBACKs without properties are decoded here.

    Relies on paho internals (``_in_packet``, ``_out_messages``, ``_out_message_mutex``,
    ``_do_on_publish``); if a paho upgrade renames one of them, the stock path is used (checked on each
    new client, see :meth:`fast_ack_supported`). ``counts.fast`` counts the PUBACKs it decoded.
    """

    fast_ack = False
    counts: AckCounts

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

    def fast_ack_supported(self) -> bool:
        """Whether this paho has every internal the fast path uses (on the instance: some are set in
        ``__init__``)."""
        return all(hasattr(self, a) for a in ("_in_packet", "_out_messages", "_out_message_mutex",
                                              "_do_on_publish"))


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
