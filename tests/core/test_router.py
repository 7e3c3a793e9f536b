"""The inbound router's ack policy, against the router itself (no broker)."""

from __future__ import annotations

import logging

import pytest

from edge_agent.host import Disposition, InMessage
from edge_agent.router import Router, Throttle


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def message(topic: str, acks: list[str]) -> InMessage:
    m = InMessage(topic=topic, payload=b"x", qos=1)
    m.acker = lambda: acks.append(topic)
    return m


def poison(msg: InMessage) -> Disposition:
    raise ValueError("cannot decode")


def test_handler_that_raises_is_acked_and_counted() -> None:
    r = Router()
    acks: list[str] = []
    r.add("edge/dev/cmd/#", lambda t: t.startswith("edge/dev/cmd/"), poison)
    for _ in range(1500):  # more than the broker's receive window (our Receive Maximum is 1000)
        assert r.route(message("edge/dev/cmd/ping", acks)) is Disposition.ACK
    assert len(acks) == 1500  # none holds the window
    assert r.counters() == {"inbound_refused": 1500, "inbound_unmatched": 0}


def test_ack_and_defer() -> None:
    r = Router()
    acks: list[str] = []
    later: list[InMessage] = []

    def defer(msg: InMessage) -> Disposition:
        later.append(msg)
        return Disposition.DEFER

    r.add("a", lambda t: t == "a", lambda m: Disposition.ACK)
    r.add("b", lambda t: t == "b", defer)
    assert r.route(message("a", acks)) is Disposition.ACK and acks == ["a"]
    assert r.route(message("b", acks)) is Disposition.DEFER and acks == ["a"]  # the handler owns the ack
    later[0].ack()
    later[0].ack()  # twice is harmless
    assert acks == ["a", "b"]
    assert r.counters() == {"inbound_refused": 0, "inbound_unmatched": 0}


def test_first_matching_route_wins_and_unmatched_is_acked() -> None:
    r = Router()
    acks: list[str] = []
    seen: list[str] = []
    r.add("x/#", lambda t: t.startswith("x/"), lambda m: seen.append("first") or Disposition.ACK)
    r.add("x/y", lambda t: t == "x/y", lambda m: seen.append("second") or Disposition.ACK)
    r.route(message("x/y", acks))
    assert seen == ["first"]
    assert r.route(message("elsewhere", acks)) is None
    assert acks == ["x/y", "elsewhere"] and r.unmatched == 1


def test_failures_are_logged_at_most_once_per_route_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    r = Router(log_every=10.0, clock=clock)
    r.add("cmd/#", lambda t: t.startswith("cmd/"), poison)
    r.add("inbox", lambda t: t == "inbox", poison)
    acks: list[str] = []
    with caplog.at_level(logging.WARNING, logger="edge_agent.router"):
        for _ in range(50):
            r.route(message("cmd/x", acks))
            clock.t += 0.1  # 5 s in all
        r.route(message("inbox", acks))  # another kind: its own line
        for _ in range(3):
            r.route(message("nowhere", acks))
        lines = [rec for rec in caplog.records if rec.name == "edge_agent.router"]
        assert len(lines) == 3  # cmd/# once, inbox once, unmatched once
        assert "cmd/#" in lines[0].getMessage() and "ValueError: cannot decode" in lines[0].getMessage()
        assert lines[0].exc_info is not None  # the traceback of the first one
        clock.t += 10.0
        caplog.clear()
        r.route(message("cmd/x", acks))
        (line,) = [rec.getMessage() for rec in caplog.records if rec.name == "edge_agent.router"]
        assert "and 49 more since the last report" in line
    assert r.counters() == {"inbound_refused": 52, "inbound_unmatched": 3}
    assert len(acks) == 55


def test_throttle_counts_what_it_silences() -> None:
    clock = Clock()
    t = Throttle(10.0, clock)
    assert t.allow("k") == 0
    assert t.allow("k") is None and t.allow("k") is None
    assert t.allow("other") == 0
    clock.t += 10.0
    assert t.allow("k") == 2
    assert t.allow("k") is None
