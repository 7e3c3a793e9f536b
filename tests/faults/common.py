"""Shared pieces of the fault suite: configs, a time-stamping collector, the end-of-test accounting."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import OutboxError
from edge_agent.outbox import OutboxStats, integrity_check, read_stats
from tests.faultkit import Accounting, account
from tests.helpers import Collector, wait_for, wait_progress

LONG = os.environ.get("EDGE_AGENT_LONG") == "1"
long_only = pytest.mark.skipif(not LONG, reason="long variant: set EDGE_AGENT_LONG=1")

class StampCollector(Collector):
    """A Collector that also records when each envelope arrived (``_rx``, epoch seconds).

    Its session is persistent by default: the fault tests account for every seq, and a drop of the
    collector's own link must not lose what the agent delivered meanwhile.
    """

    def __init__(self, port: int, topic: str, client_id: str | None = None, persistent: bool = True,
                 host: str = "127.0.0.1") -> None:
        super().__init__(port, topic, client_id, persistent, host)

    def _stamp(self, env: dict[str, Any], rx: float) -> None:
        env["_rx"] = rx

    def envs(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.envelopes)


def outbox_file(state: Path) -> Path:
    return state / "outbox.db"


def ostats(state: Path) -> OutboxStats | None:
    """The live outbox's stats, or None while the agent is still creating it."""
    try:
        return read_stats(outbox_file(state))
    except OutboxError:
        return None


def wait_drained(state: Path, timeout: float) -> None:
    """Until the agent's outbox is empty (read-only peek at the live database)."""
    wait_for(lambda: read_stats(outbox_file(state)).pending == 0, timeout, 0.2, "outbox drained")


def final_check(col: Collector, state: Path, timeout: float = 30.0, dev: str = "dev-1") -> Accounting:
    """Wait until everything 1..last_seq is received or accounted, then return the accounting."""
    last = read_stats(outbox_file(state)).last_seq
    assert last > 0

    def done() -> bool:
        with col.lock:
            envs = list(col.envelopes)
        return not account_quiet(envs, last, dev)

    try:
        wait_progress(done, col.count, stall=timeout, interval=0.3, msg="every seq received or accounted")
    except AssertionError:
        pass  # reported below with the details
    with col.lock:
        envs = list(col.envelopes)
    acc = account(envs, last, dev)
    assert not acc.missing, f"unaccounted seqs: {acc.summary()}"
    assert integrity_check(outbox_file(state)) == "ok"
    return acc


def account_quiet(envs: list[dict[str, Any]], last: int, dev: str) -> list[int]:
    got: set[int] = set()
    covered: set[int] = set()
    for e in envs:
        if e.get("dev") != dev or not isinstance(e.get("seq"), int):
            continue
        got.add(e["seq"])
        if e.get("stream") == "events/dropped":
            for a, b in (e.get("data") or {}).get("ranges", []):
                covered.update(range(a, b + 1))
    return [s for s in range(1, last + 1) if s not in got and s not in covered]
