"""Transport-neutral values that cross the transport boundary (no paho here).

Acks leave the transport typed: :data:`Ack` is :class:`Accepted`, :class:`Refused` (the broker's reason
code) or :class:`LinkLost` (the link dropped before the PUBACK came; the message is released and sent
again). Nothing else in the agent sees a raw return code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Accepted:
    """The broker acknowledged the message (PUBACK reason code < 0x80)."""

    code: int = 0


@dataclass(frozen=True, slots=True)
class Refused:
    """The broker refused the message (PUBACK reason code >= 0x80, e.g. 0x87 not authorised).

    ``name`` is the reason's name from the MQTT 5 table, filled in by the transport (the one module that
    knows the protocol's tables); it does not take part in equality.
    """

    code: int
    name: str = field(default="", compare=False)

    def __str__(self) -> str:
        """``0x87 not authorized``."""
        return f"0x{self.code:02x} {self.name}" if self.name else f"0x{self.code:02x}"


@dataclass(frozen=True, slots=True)
class StateToken:
    """The token of a retained state message (status, group membership): not an outbox row, sent once
    per change; its ack is only looked at to report a refusal, through ``refused(topic, ack)``."""

    topic: str
    refused: Callable[[str, Refused], None]


@dataclass(frozen=True, slots=True)
class LinkLost:
    """The link dropped before the message was acknowledged; it will be sent again."""


Ack = Accepted | Refused | LinkLost
ACCEPTED = Accepted()
LINK_LOST = LinkLost()


@dataclass(frozen=True)
class ConnectionStatus:
    """``state`` is one of connecting, online, offline, auth_failed, stopped."""

    state: str
    reason: str = ""
    session_present: bool = False
    attempt: int = 0


@dataclass
class InMessage:
    """A message from the broker. ``acker`` is set by the transport when the PUBACK waits for the router."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    content_type: str | None = None
    user_properties: list[tuple[str, str]] = field(default_factory=list)
    acker: Callable[[], None] | None = None

    def ack(self) -> None:
        """Tell the broker this message is handled (or refused for good); acking twice is harmless."""
        if self.acker is not None:
            fn, self.acker = self.acker, None
            fn()


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
