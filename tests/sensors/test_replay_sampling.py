"""replay (CSV/JSONL, pace, file time, loop, the NAB data set) and the drift-free SensorRunner."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent import config
from edge_agent.errors import ConfigError, SensorError
from edge_agent.sampling import SensorRunner
from edge_agent.sensors.base import Exhausted, Reading, Sensor, SensorContext, Stamped
from edge_agent.sensors.replay import ReplayOptions, ReplaySensor, parse_time
from tests.helpers import SHARED

NAB = SHARED / "data/nab/machine_temperature_system_failure.csv"


def _ctx() -> SensorContext:
    return SensorContext(emit=lambda *a, **k: None, log=logging.getLogger("test"))


def _run(sensor: Sensor, interval: float = 1.0, count: int = 0, timeout: float = 30.0
         ) -> tuple[SensorRunner, list[Reading], list[tuple[str, Exception, int]]]:
    out: list[Reading] = []
    errors: list[tuple[str, Exception, int]] = []
    r = SensorRunner(sensor, interval, count, "telemetry", out.append, lambda n, e, f: errors.append((n, e, f)))
    r.start()
    assert r.done.wait(timeout), "runner did not finish"
    return r, out, errors


def _csv(tmp_path: Path, rows: list[str], header: str = "timestamp,value") -> Path:
    p = tmp_path / "data.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


# ---------------------------------------------------------------------------- replay

def test_parse_time_forms() -> None:
    assert parse_time("2013-12-02 21:15:00") == 1386018900.0  # naive = UTC
    assert parse_time("2013-12-02T22:15:00+01:00") == 1386018900.0
    assert parse_time("2013-12-02T21:15:00Z") == 1386018900.0
    assert parse_time(1386018900) == parse_time("1386018900") == 1386018900.0
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_replay_csv_with_file_time_and_speed(tmp_path: Path) -> None:
    p = _csv(tmp_path, ["2020-01-01 00:00:00,1.5", "2020-01-01 00:00:01,2", "2020-01-01 00:00:03,", "bad,x"][:3])
    s = ReplaySensor("r", ReplayOptions(path=str(p), speed=10.0, use_file_time=True), _ctx())
    s.open()
    t0 = time.monotonic()
    runner, out, errors = _run(s)
    took = time.monotonic() - t0
    assert [r.data for r in out] == [{"value": 1.5}, {"value": 2}, {"value": None}]
    base = parse_time("2020-01-01 00:00:00")
    assert [r.ts for r in out] == [base, base + 1, base + 3]
    assert 0.25 <= took < 2.0, took  # 3 s of file time at 10x = 0.3 s
    assert runner.exhausted and not errors


def test_replay_speed_zero_and_now_timestamps(tmp_path: Path) -> None:
    p = _csv(tmp_path, [f"2020-01-01 00:{m:02d}:00,{m}" for m in range(60)])
    s = ReplaySensor("r", ReplayOptions(path=str(p), speed=0), _ctx())
    s.open()
    before = time.time()
    _, out, _ = _run(s, timeout=5)
    assert [r.data["value"] for r in out] == list(range(60))
    assert all(r.ts >= before for r in out)  # stamped with replay time


def test_replay_jsonl_several_columns(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"t": 100, "a": 1, "b": "x"}\n\n{"t": 100.5, "a": 2, "b": "y"}\n')
    s = ReplaySensor("r", ReplayOptions(path=str(p), time_column="t", value_columns=["a", "b"], speed=0,
                                        use_file_time=True), _ctx())
    s.open()
    _, out, _ = _run(s, timeout=5)
    assert [(r.ts, r.data) for r in out] == [(100.0, {"a": 1, "b": "x"}), (100.5, {"a": 2, "b": "y"})]


def test_replay_loop_keeps_time_increasing(tmp_path: Path) -> None:
    p = _csv(tmp_path, ["10,1", "20,2", "30,3"])
    s = ReplaySensor("r", ReplayOptions(path=str(p), speed=0, loop=True, use_file_time=True), _ctx())
    s.open()
    _, out, _ = _run(s, count=7, timeout=5)
    assert [r.data["value"] for r in out] == [1, 2, 3, 1, 2, 3, 1]
    assert [r.ts for r in out] == [10, 20, 30, 40, 50, 60, 70]


def test_replay_without_time_column_uses_interval(tmp_path: Path) -> None:
    p = _csv(tmp_path, ["1", "2", "3"], header="value")
    s = ReplaySensor("r", ReplayOptions(path=str(p), time_column=""), _ctx())
    s.open()
    t0 = time.monotonic()
    _, out, _ = _run(s, interval=0.05, timeout=5)
    assert [r.data for r in out] == [{"value": 1}, {"value": 2}, {"value": 3}]
    assert time.monotonic() - t0 >= 0.1


def test_replay_bad_rows_and_columns(tmp_path: Path) -> None:
    p = _csv(tmp_path, ["2020-01-01 00:00:00,1", "soon,2", "2020-01-01 00:00:02,3"])
    s = ReplaySensor("r", ReplayOptions(path=str(p), speed=0), _ctx())
    s.open()
    assert s.read() == {"value": 1}
    with pytest.raises(SensorError, match=r"data.csv:3: timestamp = 'soon' is not a time"):
        s.read()
    assert s.read() == {"value": 3}  # the bad row is skipped, not retried forever
    with pytest.raises(Exhausted):
        s.read()
    q = _csv(tmp_path, ["1,2"], header="time,temp")
    with pytest.raises(SensorError, match=r"column\(s\) timestamp, value not in the header \(time, temp\)"):
        ReplaySensor("r", ReplayOptions(path=str(q)), _ctx()).open()


def test_replay_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        config.loads(f'[[sensors]]\nname="r"\ntype="replay"\npath="{tmp_path}/none.csv"\nspeed=-1\n'
                     f'time_column=""\nuse_file_time=true\n')
    text = str(ei.value)
    assert f"sensors[0].path: file not found: {tmp_path}/none.csv" in text
    assert "sensors[0].speed: must be >= 0, got -1" in text
    assert "sensors[0].use_file_time: needs a time_column" in text


def test_replay_nab_machine_temperature_fast() -> None:
    """The whole NAB recording (22,695 rows, 2.5 months) replays in seconds with its own timestamps."""
    if not NAB.is_file():
        pytest.skip(f"NAB data not found at {NAB} (../shared/ is not beside this checkout)")
    s = ReplaySensor("machine_temp", ReplayOptions(path=str(NAB), speed=0, use_file_time=True), _ctx())
    s.open()
    t0 = time.monotonic()
    runner, out, errors = _run(s, timeout=60)
    took = time.monotonic() - t0
    assert not errors and runner.exhausted
    assert len(out) == 22695
    assert out[0].ts == parse_time("2013-12-02 21:15:00") and out[0].data == {"value": 73.96732207}
    assert out[-1].ts == parse_time("2014-02-19 15:25:00")
    back = [i for i in range(1, len(out)) if out[i].ts <= out[i - 1].ts]
    assert back == [10149]  # the file itself steps back 55 min once (2014-01-07 02:55 -> 02:00); kept as is
    assert took < 20, f"{took:.1f} s"


# ---------------------------------------------------------------------------- SensorRunner

class Clocked(Sensor):
    """Records the monotonic time of each read; optionally fails the first n reads."""

    def __init__(self, fail_first: int = 0, slow: float = 0.0) -> None:
        super().__init__("c", None, _ctx())
        self.times: list[float] = []
        self.fail_first = fail_first
        self.slow = slow
        self.started = threading.Event()

    def start(self) -> None:
        self.started.set()

    def read(self) -> dict[str, Any]:
        self.times.append(time.monotonic())
        if len(self.times) <= self.fail_first:
            raise SensorError("unplugged")
        if self.slow:
            time.sleep(self.slow)
        return {"n": len(self.times)}


def test_runner_has_no_cumulative_drift() -> None:
    s = Clocked(slow=0.004)  # each read takes 40% of the interval: a sleep-after-read loop would drift 40%
    runner, out, _ = _run(s, interval=0.01, count=100)
    assert s.started.is_set()
    assert len(out) == 100
    # a tick the scheduler holds back past the next deadline makes the runner skip the ticks it missed
    # (counted, not read in a burst): every later read then belongs to a later slot than its index says.
    # Index-based lateness read two full runs on 2 cores as 51 ms drift and 40 ms median jitter that way.
    assert runner.skipped <= 10, f"{runner.skipped} ticks skipped in 100"
    lateness = [t - (runner.t0 + k * 0.01) for k, t in enumerate(s.times)]
    assert min(lateness) >= -0.0005  # never early (a skip only makes the index-based figure later)
    last = s.times[-1] - (runner.t0 + (99 + runner.skipped) * 0.01)  # the last read against its own slot
    assert last < 0.05, f"drift {last * 1000:.1f} ms after 100 ticks ({runner.skipped} skipped)"
    in_slot = sorted((t - runner.t0) % 0.01 for t in s.times)  # how late each read was within its slot
    assert in_slot[50] < 0.005, f"median jitter {in_slot[50] * 1000:.1f} ms"  # well under one interval


def test_runner_skips_missed_ticks_instead_of_bunching() -> None:
    s = Clocked(slow=0.035)
    runner, _out, _ = _run(s, interval=0.01, count=5)
    gaps = [b - a for a, b in zip(s.times, s.times[1:], strict=False)]
    assert min(gaps) >= 0.03  # no burst of catch-up reads
    assert runner.skipped >= 8


def test_runner_reports_failures_and_backs_off() -> None:
    s = Clocked(fail_first=2)
    runner, out, errors = _run(s, interval=0.01, count=2, timeout=10)
    assert [(n, str(e), f) for n, e, f in errors] == [("c", "unplugged", 1), ("c", "unplugged", 2)]
    assert s.times[1] - s.times[0] >= 0.45  # backoff max(interval, 0.5) * 2**0
    assert s.times[2] - s.times[1] >= 0.95  # doubled
    assert len(out) == 2 and runner.errors == 2


def test_runner_uses_stamped_time_and_pace() -> None:
    class Paced(Sensor):
        n = 0

        def read(self) -> dict[str, Any] | Stamped:
            self.n += 1
            return Stamped({"v": self.n}, 1000.0 + self.n)

        def pace(self) -> float | None:
            return 0.02

    s = Paced("p", None, _ctx())
    t0 = time.monotonic()
    _, out, _ = _run(s, interval=100.0, count=5)
    assert [r.ts for r in out] == [1001.0, 1002.0, 1003.0, 1004.0, 1005.0]
    assert 0.07 <= time.monotonic() - t0 < 2  # paced by 20 ms, not the 100 s interval


def test_runner_set_interval_and_stop() -> None:
    s = Clocked()
    out: list[Reading] = []
    r = SensorRunner(s, 100.0, 0, "telemetry", out.append, lambda *a: None)
    r.start()
    time.sleep(0.1)
    assert len(out) == 1
    r.set_interval(0.01)
    r._stop.wait(0.01)
    time.sleep(0.2)
    assert len(out) >= 5
    with pytest.raises(ValueError):
        r.set_interval(0)
    t = time.monotonic()
    r.stop()
    assert r.done.wait(2) and time.monotonic() - t < 1


def test_runner_survives_a_failing_sink() -> None:
    s = Clocked()
    got: list[Reading] = []

    def sink(r: Reading) -> None:
        if len(s.times) == 2:
            raise RuntimeError("pipeline hiccup")
        got.append(r)

    r = SensorRunner(s, 0.01, 4, "telemetry", sink, lambda *a: None)
    r.start()
    assert r.done.wait(5)
    assert [x.data["n"] for x in got] == [1, 3, 4] and r.dropped == 1


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EDGE_AGENT_LONG") != "1", reason="60 s drift run: EDGE_AGENT_LONG=1")
def test_runner_no_drift_over_a_minute_at_50_hz() -> None:
    s = Clocked()
    runner, _out, _ = _run(s, interval=0.02, count=3000, timeout=120)
    last = s.times[-1] - (runner.t0 + (len(s.times) - 1 + runner.skipped) * 0.02)
    assert abs(last) < 0.02, f"drift {last * 1000:.1f} ms after 60 s"
