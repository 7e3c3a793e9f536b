"""Issue 14 item 4: a lost, emptied, foreign or vanished outbox database or WAL never rewinds seqs and
never drops the backlog silently.

Real agent subprocess, real Mosquitto, real files. Each fault is applied to the files of an agent that
has delivered some readings and holds a backlog (the broker is unreachable through the proxy): after a
SIGKILL (then the agent starts again) or while it runs (database deleted, database or WAL truncated);
then the agent runs on. Checked from what a consumer receives: no seq arrives twice with different content, every
seq up to the highest is delivered or inside an ``events/dropped`` range, no other device's envelope is
published under this device's topics, the loss is reported with its reason and an alarm, and
``edge-agent outbox stats`` keeps answering.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.devbroker import DevBroker
from edge_agent.message import Outgoing
from edge_agent.outbox import Outbox, read_stats
from tests.faultkit import FaultProxy
from tests.faults.common import StampCollector, ostats, outbox_file
from tests.helpers import ROOT, AgentProcess, sensors, unique, wait_for, write_config

OFFLINE = ["truncate_db", "truncate_wal", "remove_db", "remove_wal", "foreign_wal"]


def _telemetry(col: StampCollector) -> int:
    return sum(1 for e in col.envs() if e.get("dev") == "dev-1" and e.get("stream") == "telemetry/s1")


def _foreign_wal(tmp_path: Path, prefix: str) -> Path:
    """The WAL of another device's outbox (same schema, same topics layout), copied while it was open."""
    other = Outbox(tmp_path / "other" / "outbox.db", "dev-9", topic_prefix=prefix).open()
    for i in range(300):
        other.put(Outgoing(topic=f"{prefix}/dev-1/telemetry/s1", stream="telemetry/s1", data={"foreign": i}))
    assert other.flush()
    copy = tmp_path / "foreign-wal"
    shutil.copy(f"{tmp_path / 'other' / 'outbox.db'}-wal", copy)
    other.close()
    return copy


def _apply(fault: str, db: Path, foreign: Path | None) -> None:
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    if fault == "truncate_db":
        os.truncate(db, 0)
    elif fault == "truncate_wal":
        os.truncate(wal, 0)
    elif fault == "remove_db":
        for p in (db, wal, shm):
            p.unlink(missing_ok=True)
    elif fault == "remove_wal":
        wal.unlink()
        shm.unlink(missing_ok=True)
    elif fault == "foreign_wal":
        assert foreign is not None
        shutil.copy(foreign, wal)
        shm.unlink(missing_ok=True)


def _stats_cli(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", "outbox", "stats", "--json", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _check(envs: list[dict[str, Any]], prefix: str, last_seq: int) -> dict[str, set[int]]:
    contents: dict[int, set[str]] = {}
    dropped: dict[str, set[int]] = {}
    for e in envs:
        assert e.get("dev") == "dev-1", f"another device's envelope published under {prefix}/dev-1: {e}"
        seq = e["seq"]
        contents.setdefault(seq, set()).add(json.dumps([e.get("stream"), e.get("ts"), e.get("data")],
                                                       sort_keys=True, default=str))
        if e.get("stream") == "events/dropped":
            for a, b in e["data"]["ranges"]:
                dropped.setdefault(e["data"]["reason"], set()).update(range(a, b + 1))
    twice = {s: c for s, c in contents.items() if len(c) > 1}
    assert not twice, f"{len(twice)} seq(s) arrived with different content, e.g. {list(twice.items())[:2]}"
    highest = max(max(contents), last_seq)
    covered = set().union(*dropped.values()) if dropped else set()
    missing = [s for s in range(1, highest + 1) if s not in contents and s not in covered]
    assert not missing, f"{len(missing)} seq(s) neither delivered nor reported: {missing[:20]}"
    return dropped


@pytest.mark.parametrize("fault", [*OFFLINE, "delete_db_running", "truncate_wal_running", "truncate_db_running"])
def test_outbox_file_faults_never_rewind_or_lose_silently(tmp_path: Path, broker: DevBroker, fault: str) -> None:
    prefix = unique("h4")
    state = tmp_path / "state"
    db = outbox_file(state)
    foreign = _foreign_wal(tmp_path, prefix) if fault == "foreign_wal" else None
    with FaultProxy(broker.port) as proxy, StampCollector(broker.port, f"{prefix}/dev-1/#") as col:
        cfg = write_config(tmp_path / "c.toml", proxy.port, state, prefix=prefix,
                           sensors=sensors(("s1", 0.01, 1_000_000, "telemetry")))
        agent = AgentProcess(cfg).start()
        wait_for(lambda: _telemetry(col) >= 150, 40, 0.1, "first readings delivered")
        proxy.set_mode("refuse")
        proxy.cut()
        time.sleep(3.0)  # a backlog of ~300 readings, partly checkpointed into the database file
        before = ostats(state)
        assert before is not None and before.pending > 100, before
        if fault in OFFLINE:
            agent.kill()
            _apply(fault, db, foreign)
            proxy.set_mode("pass")
            agent = AgentProcess(cfg).start()
        elif fault == "truncate_wal_running":
            os.truncate(f"{db}-wal", 0)
            time.sleep(3)
            proxy.set_mode("pass")
        elif fault == "truncate_db_running":
            os.truncate(db, 0)
            time.sleep(3)
            proxy.set_mode("pass")
        else:
            db.unlink()
            wait_for(db.exists, 10, 0.1, "a fresh database file at the path")
            res = _stats_cli(cfg)
            assert res.returncode == 0, res.stderr
            proxy.set_mode("pass")
        seen = _telemetry(col)
        wait_for(lambda: _telemetry(col) >= seen + 200, 60, 0.1, "readings flow again")
        assert agent.terminate() == 0, agent.output()[-3000:]
        res = _stats_cli(cfg)
        assert res.returncode == 0, res.stderr
        last_seq = json.loads(res.stdout)["last_seq"]
        wait_for(lambda: bool(col.envs()) and max(e["seq"] for e in col.envs()) >= last_seq, 10, 0.1)
        time.sleep(0.5)
        envs = [e for e in col.envs() if not e["_topic"].endswith("/status")]
    dropped = _check(envs, prefix, last_seq)
    reason = "db_lost" if fault in ("truncate_db", "remove_db") else "wal_lost"
    alarms = [e for e in envs if e["stream"] == "events/outbox_lost"]
    if fault.endswith("_running"):
        # noticed within a maintenance pass; the rows are carried over from the old file to a fresh one
        # (from the unlinked file: nothing lost; a truncated one: what it still reads, the rest reported)
        assert alarms and alarms[0]["cls"] == "alarm" and alarms[0]["data"]["reason"] == "db_lost", alarms
        assert fault != "delete_db_running" or alarms[0]["data"]["lost"] == 0, alarms
    else:
        assert dropped.get(reason), f"no {reason} report: {dropped.keys()}"
        assert len(alarms) == 1 and alarms[0]["cls"] == "alarm" and alarms[0]["data"]["reason"] == reason
    if fault == "foreign_wal":
        assert list((state / "quarantine").glob("outbox.db.*-wal")), "the foreign WAL is kept aside"
    assert read_stats(db).last_seq == last_seq


# ---------------------------------------------------------------- the same rules on the outbox alone (fast)
def _ob(path: Path, dev: str = "dev-1") -> Outbox:
    return Outbox(path, dev, topic_prefix="p").open()


def _fill(ob: Outbox, n: int, tag: str) -> list[int]:
    seqs = [ob.put(Outgoing(topic=f"p/{ob.device_id}/telemetry/s", stream="telemetry/s", data={tag: i}))
            for i in range(n)]
    assert ob.flush()
    return seqs


def _lost(ob: Outbox) -> tuple[str, set[int], list[dict[str, Any]]]:
    from edge_agent import codec

    assert ob.flush()
    rows = ob.begin(100_000)
    envs = [codec.decode_envelope(r.payload) for r in rows]
    ob.accept(r.seq for r in rows)
    rec = ob.recovered or {}
    lost: set[int] = set()
    for e in envs:
        if e["stream"] == "events/dropped":
            for a, b in e["data"]["ranges"]:
                lost.update(range(a, b + 1))
    return str(rec.get("reason")), lost, envs


def test_another_outboxs_database_in_place_is_quarantined_not_published(tmp_path: Path) -> None:
    mine, other = tmp_path / "a" / "outbox.db", tmp_path / "b" / "outbox.db"
    ob = _ob(mine)
    _fill(ob, 120, "mine")
    ob.close()
    ob9 = _ob(other, "dev-9")
    _fill(ob9, 500, "foreign")
    ob9.close()
    shutil.copy(other, mine)
    ob = _ob(mine)
    reason, lost, envs = _lost(ob)
    assert reason == "db_lost" and set(range(1, 121)) <= lost
    assert not [e for e in envs if e["dev"] != "dev-1"], "another device's rows are never salvaged"
    assert list((mine.parent / "quarantine").glob("outbox.db.*")), "the foreign file is kept aside"
    assert min(s for s in _fill(ob, 1, "after")) > 120
    ob.close()


def test_an_old_copy_restored_after_a_clean_stop_is_a_rewind(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = _ob(path)
    _fill(ob, 50, "first")
    ob.close()
    shutil.copy(path, tmp_path / "backup.db")
    ob = _ob(path)
    _fill(ob, 50, "second")
    ob.close()
    shutil.copy(tmp_path / "backup.db", path)  # an operator restores yesterday's copy
    ob = _ob(path)
    reason, lost, _envs = _lost(ob)
    assert reason == "db_lost" and set(range(51, 101)) <= lost, (reason, sorted(lost)[:5])
    new = _fill(ob, 1, "third")
    assert new[0] > 100, "seqs 51..100 are never reused with other readings"
    ob.close()
