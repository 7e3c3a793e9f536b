"""End to end against a real Mosquitto: sensor -> outbox -> broker -> subscriber."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from edge_agent import config
from edge_agent.app import App
from edge_agent.devbroker import DevBroker
from edge_agent.outbox import integrity_check, read_stats
from tests.faultkit import account
from tests.helpers import (
    AgentProcess,
    Collector,
    agent_state,
    missing,
    sensors,
    unique,
    wait_for,
    wait_progress,
    write_config,
)


def test_happy_path_1000_readings_seq_1_to_1000(tmp_path: Path, broker: DevBroker) -> None:
    prefix = unique("e")
    cfg_file = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", prefix=prefix,
                            sensors=sensors(("s1", 0.002, 1000, "telemetry")))
    with Collector(broker.port, f"{prefix}/dev-1/telemetry/#") as col:
        agent = AgentProcess(cfg_file, args=["--exit-when-done"]).start()
        assert agent.wait(120) == 0, agent.output()
        wait_for(lambda: len(col.seqs()) >= 1000, 20)
        envs = list(col.envelopes)
    assert sorted(e["seq"] for e in envs) == list(range(1, 1001))
    for e in envs:
        assert e["v"] == 1 and e["dev"] == "dev-1" and e["stream"] == "telemetry/s1"
        assert e["_topic"] == f"{prefix}/dev-1/telemetry/s1"
        assert isinstance(e["ts"], float) and isinstance(e["data"]["value"], float)
    # simulated sensor is deterministic: same seed, same first value
    assert abs(envs[0]["data"]["value"] - 20.0) < 1.0


def test_presence_online_retained_then_offline_on_clean_stop(tmp_path: Path, broker: DevBroker) -> None:
    prefix = unique("p")
    cfg = config.load(write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", prefix=prefix))
    app = App(cfg)
    app.start()
    try:
        assert app.transport.wait_online(10)
        with Collector(broker.port, f"{prefix}/dev-1/status") as col:  # retained
            wait_for(lambda: col.count() >= 1, 10)
            st = json.loads(col.messages[0].payload)
            assert col.messages[0].retain and st["state"] == "online" and st["dev"] == "dev-1"
            assert "outbox" in st and "last_seq" in st["outbox"]
    finally:
        app.stop()
    with Collector(broker.port, f"{prefix}/dev-1/status") as col:
        wait_for(lambda: col.count() >= 1, 10)
        assert json.loads(col.messages[0].payload)["state"] == "offline"


def test_sigkill_three_times_no_seq_missing(tmp_path: Path, broker: DevBroker) -> None:
    """20,000 readings at the highest rate, SIGKILLed 3+ times at random moments, restarted each time.

    Seqs are never assigned twice: every seq up to the last one arrived or is in an events/dropped
    range (reason "crash": held in memory or uncommitted at the kill), and no seq arrives with two
    different payloads."""
    prefix = unique("k")
    state = tmp_path / "state"
    cfg_file = write_config(tmp_path / "c.toml", broker.port, state, prefix=prefix,
                            sensors=sensors(("s1", 0.0002, 20000, "telemetry")))
    rng = random.Random()
    kills = 0
    with Collector(broker.port, f"{prefix}/dev-1/#") as col:
        for _ in range(3):
            agent = AgentProcess(cfg_file).start()
            time.sleep(rng.uniform(1.5, 4.0))
            assert agent.alive(), agent.output()
            agent.kill()
            kills += 1
        agent = AgentProcess(cfg_file, args=["--exit-when-done"]).start()
        assert agent.wait(180) == 0, agent.output()
        last = read_stats(state / "outbox.db").last_seq
        wait_for(lambda: not account(col.envelopes_copy(), last, "dev-1").missing, 30, msg="all seqs")
        acc = account(col.envelopes_copy(), last, "dev-1")
        seqs = col.seqs("telemetry/")
    print(f"kills={kills} last_seq={last} received={len(seqs)} duplicates={acc.duplicates}")
    assert acc.missing == []
    assert acc.conflicts == [], acc.summary()
    assert len(seqs) - len(set(seqs)) <= kills * 1000
    assert integrity_check(state / "outbox.db") == "ok"


def test_broker_outage_no_gap_and_sampling_continues(tmp_path: Path) -> None:
    prefix = unique("o")
    b = DevBroker(workdir=tmp_path / "broker", persistence=True).start()
    try:
        cfg_file = write_config(tmp_path / "c.toml", b.port, tmp_path / "state", prefix=prefix,
                                sensors=sensors(("s1", 0.01, 0, "telemetry")))
        col = Collector(b.port, f"{prefix}/dev-1/telemetry/#", client_id=unique("col"), persistent=True).start()
        time.sleep(1.5)  # let mosquitto autosave the collector's session
        agent = AgentProcess(cfg_file).start()
        wait_for(lambda: len(col.seqs()) > 100, 20)
        b.kill()
        down_from = time.time()
        time.sleep(11)
        down_to = time.time()
        b.start()
        time.sleep(3)
        assert agent.terminate(30) == 0, agent.output()
        last = read_stats(tmp_path / "state" / "outbox.db").last_seq
        wait_for(lambda: not missing(col.seqs(), last), 30, msg="all seqs after outage")
        during = [e for e in col.envelopes if down_from + 0.5 < e["ts"] < down_to - 0.5]
        col.stop()
    finally:
        b.close()
    assert missing(col.seqs(), last) == []
    assert len(during) > 500, f"only {len(during)} readings timestamped during the outage"


def test_more_than_65535_messages_do_not_stall(tmp_path: Path, broker: DevBroker) -> None:
    """paho's message ids wrap at 65,535; the bounded window must keep a long run flowing."""
    prefix = unique("w")
    cfg = config.load(write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", prefix=prefix))
    n = 70000
    # persistent: a drop of the collector's own link must not lose what the broker acknowledged
    with Collector(broker.port, f"{prefix}/dev-1/bulk/#", persistent=True) as col:
        app = App(cfg)
        app.start()
        try:
            for i in range(n):
                app.pipeline.publish("bulk/x", {"i": i})
            # wait while the agent makes progress; if it stalls, say where (one failure in a full run
            # on 2 cores: not drained after a fixed 120 s, with nothing logged)
            try:
                wait_progress(lambda: app.outbox.pending == 0 and app.outbox.last_seq >= n,
                              lambda: app.forwarder.sent + n - app.outbox.pending, stall=30, msg="drain 70k")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{agent_state(app)}") from None
        finally:
            app.stop()
        # the collector shares this process and may be far behind on a slow machine: wait while it
        # makes progress (a fixed 30 s failed CI with every message acknowledged and still arriving)
        col.wait_distinct(n)
    assert missing(col.seqs(), n) == []


def test_outbox_stats_cli_json(tmp_path: Path, broker: DevBroker) -> None:
    cfg_file = write_config(tmp_path / "c.toml", broker.port + 1, tmp_path / "state",  # nothing listens there
                            sensors=sensors(("s1", 0.01, 50, "telemetry")))
    agent = AgentProcess(cfg_file).start()
    wait_for(lambda: (tmp_path / "state" / "outbox.db").exists(), 10)
    time.sleep(1.5)
    r = subprocess.run([sys.executable, "-m", "edge_agent", "outbox", "stats", "--config", str(cfg_file), "--json"],
                       capture_output=True, text=True, timeout=30)
    assert agent.terminate(30) == 0
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["pending"] == 50 and st["last_seq"] == 50 and st["db_bytes"] > 0 and st["oldest_age_s"] > 0.5
    r = subprocess.run([sys.executable, "-m", "edge_agent", "outbox", "stats", "--config", str(cfg_file)],
                       capture_output=True, text=True, timeout=30)
    assert "pending" in r.stdout and "50" in r.stdout
