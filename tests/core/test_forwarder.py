"""The forwarder's handling of typed acks, on a fake queue (no broker, no database)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from edge_agent.config import MqttConfig
from edge_agent.forwarder import Forwarder
from edge_agent.message import Pending
from edge_agent.transport.mqtt import MqttTransport
from edge_agent.transport.types import ACCEPTED, LINK_LOST, Accepted, Ack, LinkLost, Refused


class FakeQueue:
    def __init__(self) -> None:
        self.accepted: list[int] = []
        self.released: list[int] = []
        self.counters: dict[str, int] = {}

    @property
    def pending(self) -> int:
        return 0

    @property
    def last_assigned(self) -> int:
        return 0

    def begin(self, limit: int, *, live_after: int | None = None, part: str = "all") -> list[Pending]:
        return []

    def accept(self, seqs: Iterable[int]) -> None:
        self.accepted += list(seqs)

    def release(self, seqs: Iterable[int]) -> None:
        self.released += list(seqs)

    def wait(self, timeout: float) -> bool:
        return False

    def on_ready(self, fn: Callable[[], None]) -> None:  # write-behind: a new row is sendable at once
        self.ready = fn

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def test_typed_acks_accept_refuse_release_and_reach_listeners() -> None:
    q = FakeQueue()
    fw = Forwarder(q, MqttTransport(MqttConfig()))  # never started: offline, nothing is pumped
    seen: list[tuple[int, Ack]] = []
    fw.add_ack_listener(lambda seq, ack: seen.append((seq, ack)))
    fw.add_ack_listener(lambda seq, ack: 1 / 0)  # a failing listener is logged, never raised
    fw.on_ack(1, ACCEPTED)
    fw.on_ack(2, Accepted(0x10))  # "no matching subscribers": still delivered
    fw.on_ack(3, Refused(0x87))
    fw.on_ack(4, LINK_LOST)
    fw.on_ack(5, LinkLost())
    fw.on_ack(None, ACCEPTED)  # not an outbox row (the retained status): no listener, no queue call
    assert q.accepted == [1, 2, 3] and q.released == [4, 5]
    assert fw.rejected == 1 and q.counters == {"rejected": 1}
    assert seen == [(1, ACCEPTED), (2, Accepted(0x10)), (3, Refused(0x87)), (4, LINK_LOST), (5, LINK_LOST)]
