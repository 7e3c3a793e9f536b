"""Replies of the command service: the body, its encoding (JSON for a JSON request, else msgpack) and
the Outgoing that carries it through the outbox; and the refusal log, at most
:data:`REFUSAL_LOG_PER_S` lines a second with a summary of the rest.

Why replies go through the outbox: they survive a broker outage or an agent restart like any event.
Where they go is decided at admission (:func:`edge_agent.commands.admission.reply_topic`: an operator's
``_ctl`` reply topic gets the device id appended, which binds the reply to its sender).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

from edge_agent import codec
from edge_agent.errors import CommandError
from edge_agent.host import Outgoing

log = logging.getLogger("edge_agent.commands")

REPLY_TTL = 600.0
REFUSAL_LOG_PER_S = 20  # refusal lines per second; the rest are summarised


def reply_message(device: str, cmd_id: str | None, topic: str, name: str, as_json: bool,
                  correlation: bytes | None, outcome: dict[str, Any]) -> Outgoing:
    """The Outgoing for one reply: ``{"id", "device", "name", **outcome}``, event class, REPLY_TTL."""
    body = {"id": cmd_id, "device": device, "name": name, **outcome}
    if as_json:
        payload = json.dumps(body, default=_json_default, separators=(",", ":")).encode()
        ctype = "application/json"
    else:
        payload = codec.encode(body)
        ctype = "application/msgpack"
    props: dict[str, Any] = {"content_type": ctype}
    if correlation is not None:
        props["correlation_data"] = bytes(correlation)
    return Outgoing(topic=topic, stream=f"cmd-reply/{name}", raw=payload, cls="event", props=props, ttl=REPLY_TTL)


class RefusalLog:
    """At most REFUSAL_LOG_PER_S refusal lines per second; the rest are summarised in the next second."""

    def __init__(self) -> None:
        self._window = (0.0, 0)

    def log(self, cmd_id: str | None, name: str, err: CommandError) -> None:
        now = time.monotonic()
        start, n = self._window
        if now - start >= 1.0:
            if n > REFUSAL_LOG_PER_S:
                log.warning("commands: %d more refusal(s) not logged in the last second", n - REFUSAL_LOG_PER_S)
            start, n = now, 0
        n += 1
        self._window = (start, n)
        if n <= REFUSAL_LOG_PER_S:
            log.warning("command %s %s refused: %s: %s", name[:64], cmd_id or "-", err.code, err.message[:300])


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes | bytearray):
        return base64.b64encode(bytes(o)).decode()
    return repr(o)
