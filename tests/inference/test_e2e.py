"""End to end: simulated sensor with injected spikes -> real interpreter -> alarm at a real mosquitto."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edge_agent import config as config_mod
from edge_agent.app import App
from tests.helpers import SHARED, Collector, wait_for
from tests.inference.conftest import model_files, scale

CONFIG = """
[device]
id = "dev-inf"
[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min = 0.1
reconnect_max = 1.0
[storage]
dir = "{state}"
[agent]
stop_timeout = 5
[commands]
enabled = false
[[sensors]]
name = "s1"
type = "simulated"
interval = 0.005
offset = 20.0
amplitude = 5.0
noise = 0.1
spike_every = 50
spike = 30.0
[[models]]
name = "spikes"
path = "{model}"
inputs = ["s1"]
window = 8
threshold = 1.5
alarm = "spike"
queue = 64
"""


def test_spikes_raise_alarms_at_the_broker(broker: Any, tmp_path: Path) -> None:
    # "predict the mean" model: score = mean of the squared standardised window, ~0.5 for the sine,
    # >= 3 when a window holds a 30-unit spike
    path, _, _ = model_files(tmp_path / "models", scale(0.0), n_in=8, mean=20.0, std=5.0, version="e2e")
    text = CONFIG.format(port=broker.port, state=tmp_path / "state", model=path)
    cfg = config_mod.loads(text)
    app = App(cfg)
    with Collector(broker.port, "edge/dev-inf/#") as col:
        app.start()
        try:
            wait_for(lambda: sum(1 for e in col.envelopes if e["stream"] == "events/spike") >= 3, 30,
                     msg="3 alarms")
        finally:
            app.stop()
        with col.lock:
            envs = list(col.envelopes)
    alarms = [e for e in envs if e["stream"] == "events/spike"]
    results = [e for e in envs if e["stream"] == "inference/spikes"]
    tele = {e["seq"]: e["data"]["value"] for e in envs if e["stream"] == "telemetry/s1"}
    assert alarms[0]["_topic"] == "edge/dev-inf/events/spike" and alarms[0]["cls"] == "alarm"
    assert results and results[0]["cls"] == "inference" and results[0]["data"]["version"] == "e2e"
    for a in alarms:
        lo, hi = a["data"]["seq"]
        window = [tele[s] for s in range(lo, hi + 1) if s in tele]
        assert len(window) == 8, "the alarm names exactly the 8 stored readings it was computed from"
        assert max(window) > 40, "every alarm is for a window holding an injected spike"
    quiet = [r for r in results if not r["data"]["alarm"]]
    assert quiet and all(r["data"]["score"] < 1.5 for r in quiet)
    spiky = [r for r in results if any(tele.get(s, 0) > 40 for s in range(r["data"]["seq"][0],
                                                                          r["data"]["seq"][1] + 1))]
    assert spiky and all(r["data"]["alarm"] for r in spiky), "no spike window went unflagged"


NAB = SHARED / "data" / "nab" / "machine_temperature_system_failure.csv"


@pytest.mark.skipif(not NAB.exists(), reason=f"NAB data not found at {NAB}")
def test_shipped_model_on_replayed_nab_up_to_the_second_window(broker: Any, tmp_path: Path) -> None:
    """The shipped model, replayed through the agent (replay sensor, file time) up to the end of the
    second labelled window (2013-12-17 17:00): no alarm before it opens (so none in window 1, the planned
    shutdown, which 1.2.0 does not flag), at least one inside it."""
    rows = NAB.read_text().splitlines()
    end = next(i for i, r in enumerate(rows) if r.startswith("2013-12-17 17:05"))
    head = tmp_path / "nab_head.csv"
    head.write_text("\n".join(rows[:end]) + "\n")
    text = f"""
[device]
id = "nab"
[mqtt]
host = "127.0.0.1"
port = {broker.port}
[storage]
dir = "{tmp_path / 'state'}"
[commands]
enabled = false
[[sensors]]
name = "machine_temp"
type = "replay"
path = "{head}"
time_column = "timestamp"
value_column = "value"
speed = 0
use_file_time = true
[[models]]
name = "machine"
path = "builtin:machine_temp_ae"
inputs = ["machine_temp"]
window = 32
hop = 4
alarm_after = 3
rearm = 36
queue = 100000
"""
    app = App(config_mod.loads(text))
    with Collector(broker.port, "edge/nab/#") as col:
        app.start()
        try:
            assert app.wait_sensors_done(120)
            inf = app.service("inference")
            assert inf.wait_idle(60)
            want = inf.describe()[0]["windows_run"]
            wait_for(lambda: len(col.seqs("inference/machine")) >= want, 60, msg="all results at the broker")
        finally:
            app.stop()
        with col.lock:
            envs = list(col.envelopes)
    from datetime import UTC, datetime

    start = datetime(2013, 12, 15, 17, 50, tzinfo=UTC).timestamp()
    alarms = [e["data"]["ts"][1] for e in envs if e["stream"] == "events/machine_anomaly"]
    assert alarms, "the second labelled anomaly was not detected"
    assert min(alarms) >= start, "an alarm before the second labelled window"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGE_AGENT_LONG"), reason="full NAB replay (~15 s): EDGE_AGENT_LONG=1")
@pytest.mark.skipif(not NAB.exists(), reason=f"NAB data not found at {NAB}")
def test_full_nab_replay_matches_the_documented_table() -> None:
    """tools/evaluate_nab.py's agent run: the numbers in docs/inference.md must stay true."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import evaluate_nab as ev

    envs, desc, _ = ev.run_agent(NAB, hop=4, alarm_after=3, rearm=36)
    wins = ev.labelled_windows(NAB, ev.NAB / "machine_temperature_windows.json")
    s = ev.summarise(envs, wins)
    by = {d["name"]: d for d in desc}
    assert by["shape"]["windows_run"] == 5666 and by["shape"]["windows_skipped"] == 0
    assert [r["first"] is not None for r in s["shape"]["rows"]] == [False, True, False, True]
    assert (len(s["shape"]["alarms"]), s["shape"]["false"]) == (3, 1)
    assert s["shape"]["calibration"]["threshold"] == pytest.approx(0.0144, rel=0.01)
    assert [r["first"] is not None for r in s["level"]["rows"]] == [False, True, False, False]
    assert (len(s["level"]["alarms"]), s["level"]["false"]) == (3, 2)


def test_daemon_with_a_model_is_quiet_on_stderr_and_publishes(broker: Any, tmp_path: Path) -> None:
    """`python -m edge_agent run` as a real process: the model loads, results reach the broker, and the
    runtime's "INFO: Created TensorFlow Lite XNNPACK delegate" line never reaches the agent's output."""
    from tests.helpers import AgentProcess, write_config

    path, _, _ = model_files(tmp_path / "models", scale(0.0), n_in=8, mean=20.0, std=5.0, version="p1")
    sensors = f"""
[commands]
enabled = false
[[sensors]]
name = "s1"
type = "simulated"
interval = 0.01
count = 200
[[models]]
name = "proc"
path = "{path}"
inputs = ["s1"]
window = 8
queue = 100
"""
    cfg = write_config(tmp_path / "agent.toml", broker.port, tmp_path / "state", sensors=sensors)
    with Collector(broker.port, "edge/dev-1/inference/#") as col:
        agent = AgentProcess(cfg, args=["--exit-when-done"]).start()
        try:
            assert agent.wait(60) == 0, agent.output()
        finally:
            if agent.alive():
                agent.terminate()
        wait_for(lambda: col.count() >= 25, 20, msg="25 inference results")
    out = agent.output()
    assert "inference: model proc p1 loaded" in out
    assert "TensorFlow Lite" not in out and "XNNPACK" not in out, out
