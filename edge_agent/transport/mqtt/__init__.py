"""MQTT 5 transport: the only package that imports paho-mqtt.

paho's callbacks and return codes become plain Python callbacks, typed acks (:data:`Ack`: ``Accepted``,
``Refused``, ``LinkLost``) and exceptions here, and nowhere else.
Known paho 2.x traps and how this module avoids them:

* paho keeps its session in memory and re-sends all of it after a reconnect, ignoring ``max_inflight``
  (paho #492): every connection gets a **fresh paho Client**; the durable outbox, not paho, replays.
  Acks from an old connection are ignored (generation counter).
* ``on_publish`` can fire before ``publish()`` returns (paho #482/#361): early acks are parked by mid
  and matched when ``publish()`` returns (:mod:`.inflight`). No lock is held across a paho call.
* ``publish()`` returns ``MQTT_ERR_QUEUE_SIZE``/``MQTT_ERR_NO_CONN`` without raising (paho #856):
  every return code is checked and turned into :class:`PublishRefused`/:class:`NotConnected`.
* Message ids wrap at 65,535: the forwarder hands paho only a bounded window (``max_inflight``,
  further capped by the broker's Receive Maximum, :attr:`MqttTransport.window`).
* ``is_connected()`` stays True on a half-open link (paho #840): paho pings every ``keepalive/2`` and
  drops the link after ``keepalive`` without a byte from the broker; in addition an unacknowledged
  publish older than ``keepalive`` drops the link. A dead link is thus detected within ``keepalive``.
* Reconnects use exponential backoff with full jitter (:mod:`.backoff`).

The PUBACK hot path: :mod:`.client`.
"""

from edge_agent.transport.mqtt.transport import AckCallback, MqttTransport
from edge_agent.transport.types import ConnectionStatus, InMessage, Will

__all__ = ["AckCallback", "ConnectionStatus", "InMessage", "MqttTransport", "Will"]
