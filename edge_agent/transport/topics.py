"""Topic layout (pure functions, no I/O). ``<prefix>`` is ``mqtt.topic_prefix``.

========================================  ===========================================
``<prefix>/<dev>/telemetry/<sensor>``     readings (msgpack envelope, QoS 1)
``<prefix>/<dev>/events/<name>``          events and alarms (``events/dropped`` = accounted gaps)
``<prefix>/<dev>/inference/<model>``      inference results
``<prefix>/<dev>/status``                 retained presence + counters (JSON)
``<prefix>/<dev>/cmd/<name>``             commands to one device
``<prefix>/group/<group>/cmd/<name>``     commands to a group
``<prefix>/all/cmd/<name>``               commands to the whole fleet
``<prefix>/<dev>/cmd-reply/<name>``       replies when a command carries no Response Topic
``<prefix>/<dev>/inbox``                  direct messages to this device/app
``<prefix>/group/<group>/msg``            group messages
``<prefix>/<dev>/receipts``               delivered/read receipts for messages this device sent
``<prefix>/group/<group>/members/<dev>``  retained group membership (JSON; empty: left)
========================================  ===========================================

A stream is the part after ``<prefix>/<dev>/``: ``telemetry/s1``, ``events/dropped``.
"""

from __future__ import annotations

import re

_LEVEL = re.compile(r"^[^/+#\x00]+$")


def valid_level(s: str) -> bool:
    """A single topic level that is safe to embed (no '/', '+', '#', NUL, not empty)."""
    return bool(_LEVEL.fullmatch(s))


def stream_topic(prefix: str, dev: str, stream: str) -> str:
    return f"{prefix}/{dev}/{stream}"


def status_topic(prefix: str, dev: str) -> str:
    return f"{prefix}/{dev}/status"


def cmd_filters(prefix: str, dev: str, groups: list[str] | tuple[str, ...]) -> list[str]:
    return [f"{prefix}/{dev}/cmd/+", *(f"{prefix}/group/{g}/cmd/+" for g in groups), f"{prefix}/all/cmd/+"]


def cmd_reply_topic(prefix: str, dev: str, name: str) -> str:
    return f"{prefix}/{dev}/cmd-reply/{name}"


def inbox_topic(prefix: str, dev: str) -> str:
    return f"{prefix}/{dev}/inbox"


def group_msg_topic(prefix: str, group: str) -> str:
    return f"{prefix}/group/{group}/msg"


def group_members_topic(prefix: str, group: str, dev: str) -> str:
    return f"{prefix}/group/{group}/members/{dev}"


def group_members_filter(prefix: str, group: str) -> str:
    return f"{prefix}/group/{group}/members/+"


def receipts_topic(prefix: str, dev: str) -> str:
    return f"{prefix}/{dev}/receipts"


def parse_cmd_topic(prefix: str, topic: str) -> tuple[str, str, str] | None:
    """``(target_kind, target, name)`` for a command topic, e.g. ('group', 'lab', 'ping')."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != prefix:
        return None
    if len(parts) == 4 and parts[2] == "cmd":
        return ("all", "all", parts[3]) if parts[1] == "all" else ("device", parts[1], parts[3])
    if len(parts) == 5 and parts[1] == "group" and parts[3] == "cmd":
        return ("group", parts[2], parts[4])
    return None
