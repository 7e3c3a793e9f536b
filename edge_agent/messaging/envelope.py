"""Checks the messaging service applies at its edges (no I/O): addresses, topic filters, inbound envelopes."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

from edge_agent import codec
from edge_agent.errors import DecodeError, EdgeAgentError
from edge_agent.ids import is_id
from edge_agent.transport.topics import valid_level
from edge_agent.transport.types import InMessage

log = logging.getLogger("edge_agent.messaging")

# limits for untrusted inbound envelopes: a message's data is at most 1 MiB encoded (bigger goes as a file)
DATA_MAX = 1024 * 1024  # encoded message data; bigger things go through send_file
_DECODE = {"max_bytes": 2 * 1024 * 1024, "max_bin": 1024 * 1024 + 1024, "max_str": 1024 * 1024}


class MessagingError(EdgeAgentError, ValueError):
    """A message cannot be sent as asked (bad address, data that cannot be encoded, too large...)."""


def check_id(value: Any, what: str) -> str:
    if not is_id(value):
        raise MessagingError(f"{what} must be a device/app id (letters, digits and . _ : -, 1-64 characters), "
                             f"got {value!r}")
    return value


def check_filter(topic_filter: Any, share: str | None) -> str:
    """The subscription for ``topic_filter`` (``$share/<share>/<filter>`` with ``share``); MessagingError
    for a filter MQTT would refuse."""
    if not isinstance(topic_filter, str) or not topic_filter or topic_filter.startswith("$share/"):
        raise MessagingError(f"topic filter must be a plain MQTT filter (pass share= for a shared "
                             f"subscription), got {topic_filter!r}")
    parts = topic_filter.split("/")
    if any(("#" in p and (p != "#" or i != len(parts) - 1)) or ("+" in p and p != "+")
           for i, p in enumerate(parts)):
        raise MessagingError(f"bad topic filter {topic_filter!r}: '+' must be a whole level, '#' the last")
    if share is None:
        return topic_filter
    check_id(share, "share group")
    return f"$share/{share}/{topic_filter}"


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


def check_data(data: Any) -> int:
    """The encoded size of a message's ``data``; MessagingError if it cannot be encoded, or if a receiver
    would refuse it (decoded with the receiver's own limits: map keys must be strings, at most 1,000 keys
    per map and 10,000 items per array), so what cannot arrive is refused at send() instead of lost."""
    try:
        raw = codec.encode(data)
    except (TypeError, ValueError, OverflowError) as e:
        raise MessagingError(f"message data cannot be encoded with msgpack: {e}") from None
    if len(raw) > DATA_MAX:
        return len(raw)  # the caller refuses it as too big (send_file is the way)
    try:
        codec.decode(raw, **_DECODE)
    except DecodeError as e:
        why = str(e)
        if "map key" in why:
            why = f"map keys must be strings ({why})"
        raise MessagingError(f"message data would be refused by the recipient: {why}") from None
    return len(raw)


def decode_envelope(msg: InMessage) -> dict[str, Any] | None:
    """The edge-agent envelope (dev, seq, ts, stream, data) in ``msg``, or None (logged) if it is not one."""
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


def expired(env: dict[str, Any]) -> bool:
    """Whether the sender's time-to-live of this envelope has run out."""
    ttl = env.get("ttl")
    return isinstance(ttl, int | float) and env["ts"] + ttl < time.time()
