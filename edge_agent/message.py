"""What producers hand to the agent: :class:`Outgoing` and the message classes.

Producers (the pipeline, inference, commands, messaging) import this module, never ``outbox``: the
outbox is the only owner of the queue database, and this is the only shape it accepts. The forwarder
gets stored messages back as :class:`Pending`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class MessageClass(StrEnum):
    """Message classes, lowest priority first: on a full disk the lowest class is evicted first and the
    highest is replayed first after an outage."""

    TELEMETRY = "telemetry"
    INFERENCE = "inference"
    EVENT = "event"
    ALARM = "alarm"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def parse(cls, value: str | MessageClass) -> MessageClass:
        """The class named ``value``; ``ValueError`` naming the valid ones otherwise."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(c.value for c in cls)
            raise ValueError(f"unknown message class {value!r} (one of: {valid})") from None


_RANK = {c: i for i, c in enumerate(MessageClass)}
MESSAGE_CLASSES: tuple[str, ...] = tuple(c.value for c in MessageClass)
_VALID = frozenset(MESSAGE_CLASSES)


def class_rank(cls: str | MessageClass) -> int:
    """0 for telemetry .. 3 for alarm; ``ValueError`` for an unknown class."""
    return MessageClass.parse(cls).rank


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to store and forward; validated when made.

    ``data`` goes into a msgpack envelope built with the assigned seq, unless ``raw`` is given (e.g. a
    JSON command reply), which is stored and sent as is. ``ttl`` (seconds from ``ts``) overrides
    ``storage.max_age`` for this message.
    """

    topic: str
    stream: str
    data: Any = None
    cls: str = "telemetry"
    ts: float | None = None
    ttl: float | None = None
    qos: int = 1
    retain: bool = False
    props: dict[str, Any] | None = None
    raw: bytes | None = None
    extra: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or not self.topic or "\0" in self.topic:
            raise ValueError(f"Outgoing.topic must be a non-empty string without NUL, not {self.topic!r}")
        if any(c in self.topic for c in "+#"):
            raise ValueError(f"Outgoing.topic must not hold MQTT wildcards: {self.topic!r}")
        if not isinstance(self.stream, str) or not self.stream:
            raise ValueError(f"Outgoing.stream must be a non-empty string, not {self.stream!r}")
        if self.cls not in _VALID:
            MessageClass.parse(self.cls)  # raises, naming the valid classes
        if type(self.cls) is not str:  # a MessageClass member: store its plain value
            object.__setattr__(self, "cls", MessageClass(self.cls).value)
        if self.qos not in (0, 1, 2):
            raise ValueError(f"Outgoing.qos must be 0, 1 or 2, not {self.qos!r}")
        if self.ts is not None and not math.isfinite(self.ts):
            raise ValueError(f"Outgoing.ts must be finite, not {self.ts!r}")
        if self.ttl is not None and not (math.isfinite(self.ttl) and self.ttl > 0):
            raise ValueError(f"Outgoing.ttl must be a positive finite number of seconds, not {self.ttl!r}")
        if self.raw is not None and not isinstance(self.raw, bytes | bytearray | memoryview):
            raise ValueError(f"Outgoing.raw must be bytes, not {type(self.raw).__name__}")


@dataclass(frozen=True, slots=True)
class Pending:
    """A stored message as the outbox hands it to the forwarder (``created`` in epoch seconds)."""

    seq: int
    prio: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: dict[str, Any] | None
    created: float
