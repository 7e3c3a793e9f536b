"""On-device calibration with a real interpreter, the real pipeline and a real SQLite outbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.errors import ModelError
from edge_agent.inference.calibration import Calibration
from edge_agent.inference.model import parse_metadata
from tests.inference.conftest import Harness, model_cfg, model_files, scale

SQUARES = {"windows": 5, "quantile": 1.0, "margin": 3.0}  # threshold = 3 x the largest warm-up score
MEDIAN = {"windows": 5, "quantile": 0.5, "margin": 3.0}  # threshold = 3 x the median warm-up score


def _sensor(n: int, amplitude: float, offset: float, seed: int) -> np.ndarray:
    """A slow sine (period 60 readings) with noise, at a given scale and level."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return offset + amplitude * (np.sin(2 * np.pi * t / 60) + 0.15 * rng.standard_normal(n))


def _run_scale(tmp: Path, unit: float) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The shipped model on the synthetic sensor at ``unit``: (calibration event, results after the warm-up,
    alarms) for 832 warm-up readings + 3000 clean ones, then the alarms once a burst is injected."""
    cfg = model_cfg("builtin:machine_temp_ae", name="temp", hop=4, alarm_after=1, rearm=36, queue=100000)
    h = Harness(tmp, [cfg]).start()
    try:
        x = _sensor(832 + 3000, unit, offset=50 * unit, seed=1)
        h.feed([float(v) for v in x])
        assert h.service.wait_idle(30)
        cal = h.messages("events/model_calibrated")
        assert len(cal) == 1, "one calibration after the warm-up"
        res = [e["data"] for e in h.messages("inference/temp")]
        assert sum(1 for r in res if r.get("calibrating")) == 200
        assert not h.messages("events/temp_anomaly"), f"quiet on clean data (unit {unit})"
        burst = x[:200].copy()
        burst[100:112] += unit * np.array([4, -4] * 6)  # an oscillation the sine never shows
        h.feed([float(v) for v in burst])
        assert h.service.wait_idle(30)
        return cal[0]["data"], [r for r in res if not r.get("calibrating")], h.messages("events/temp_anomaly")
    finally:
        h.close()


def test_shipped_model_calibrates_to_any_scale_catches_an_anomaly_and_stays_quiet(tmp_path: Path) -> None:
    """The same config at two scales 1e5 apart: the learned input scale absorbs the unit, so the
    threshold comes out the same; clean data raises nothing, an injected burst raises one alarm."""
    runs = [_run_scale(tmp_path / f"u{k}", unit) for k, unit in enumerate((0.02, 2000.0))]
    (c1, _, _), (c2, _, _) = runs
    assert c1["windows"] == c2["windows"] == 200
    assert c1["input_scale"] / c2["input_scale"] == pytest.approx(1e5, rel=1e-4)
    assert c1["threshold"] == pytest.approx(c2["threshold"], rel=1e-3)
    for c, after, alarms in runs:
        assert len(after) > 700 and all(r["threshold"] == c["threshold"] for r in after)
        assert max(r["score"] for r in after) < c["threshold"]
        assert len(alarms) == 1 and alarms[0]["data"]["threshold"] == c["threshold"]


def test_warmup_results_are_marked_raise_no_alarm_and_the_calibration_is_published(
        tmp_path: Path, harness_factory: Any) -> None:
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=4, threshold=0.5, calibration=MEDIAN)
    h = harness_factory([model_cfg(p, window=4, queue=100)]).start()
    h.feed([1.0] * 12 + [100.0] * 4 + [2.0] * 4 + [1.0] * 8 + [6.0] * 4)  # 8 windows: score mean(x^2)
    assert h.service.wait_idle(10)
    res = [e["data"] for e in h.messages("inference/m")]
    assert [r.get("calibrating", False) for r in res] == [True] * 5 + [False] * 3
    assert [r["alarm"] for r in res] == [False] * 7 + [True]  # 10000 in the warm-up alarmed nothing
    cal = h.messages("events/model_calibrated")[0]["data"]
    assert cal["threshold"] == 3.0 and cal["input_scale"] == 1.0 and cal["windows"] == 5
    assert cal["score_quantile"] == 1.0
    assert [r["threshold"] for r in res[5:]] == [3.0] * 3
    assert len(h.messages("events/m_anomaly")) == 1  # the 36 after the warm-up


def test_calibration_survives_a_restart_and_a_new_model_file_warms_up_again(tmp_path: Path) -> None:
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=4, calibration=SQUARES)
    h = Harness(tmp_path, [model_cfg(p, window=4, queue=100)]).start()
    try:
        h.feed([2.0] * 20)
        assert h.service.wait_idle(10)
    finally:
        h.close()
    stored = Calibration.read(tmp_path / "state" / "models" / "m.calibration.json")
    assert stored is not None and stored.threshold == 12.0
    h2 = Harness(tmp_path, [model_cfg(p, window=4, queue=100)]).start()  # same state dir, same outbox
    try:
        n0 = len(h2.messages("inference/m"))
        h2.feed([1.0] * 4 + [3.0] * 4)
        assert h2.service.wait_idle(10)
        res = [e["data"] for e in h2.messages("inference/m")[n0:]]
        assert [r.get("calibrating", False) for r in res] == [False, False]
        assert [r["alarm"] for r in res] == [False, False] and res[0]["threshold"] == 12.0
        assert h2.service.describe()[0]["calibration"]["state"] == "calibrated"
    finally:
        h2.close()
    p2, _, _ = model_files(tmp_path / "m", scale(0.5), n_in=4, version="2", calibration=SQUARES)
    h3 = Harness(tmp_path, [model_cfg(p2, window=4, queue=100)]).start()
    try:
        n0 = len(h3.messages("inference/m"))
        h3.feed([1.0] * 8)
        assert h3.service.wait_idle(10)
        assert all(e["data"].get("calibrating") for e in h3.messages("inference/m")[n0:])
    finally:
        h3.close()


def test_pinned_threshold_or_calibrate_false_skips_calibration(tmp_path: Path, harness_factory: Any) -> None:
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=4, threshold=5.0, calibration=SQUARES)
    h = harness_factory([model_cfg(p, name="pinned", window=4, queue=100, threshold=2.0),
                         model_cfg(p, name="off", window=4, queue=100, calibrate=False)]).start()
    h.feed([2.0] * 8)
    assert h.service.wait_idle(10)
    pinned = [e["data"] for e in h.messages("inference/pinned")]
    off = [e["data"] for e in h.messages("inference/off")]
    assert [r["alarm"] for r in pinned] == [True, True] and pinned[0]["threshold"] == 2.0
    assert [r["alarm"] for r in off] == [False, False] and off[0]["threshold"] == 5.0
    assert not any("calibrating" in r for r in pinned + off)
    with pytest.raises(ModelError, match=r"'pinned'.*threshold is pinned in the config"):
        h.service.calibrate("pinned")
    with pytest.raises(ModelError, match="calibrate = false"):
        h.service.calibrate("off")


def test_model_calibrate_starts_a_new_warmup(tmp_path: Path, harness_factory: Any) -> None:
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=4, calibration=SQUARES)
    h = harness_factory([model_cfg(p, window=4, queue=100)]).start()
    h.feed([1.0] * 20)
    assert h.service.wait_idle(10)
    h.service.calibrate("m")
    assert h.service.describe()[0]["calibration"]["state"] == "warming up"
    h.feed([10.0] * 20 + [10.0] * 4)
    assert h.service.wait_idle(10)
    cals = [e["data"]["threshold"] for e in h.messages("events/model_calibrated")]
    assert cals == [3.0, 300.0]
    res = [e["data"] for e in h.messages("inference/m")]
    assert [r.get("calibrating", False) for r in res] == [True] * 5 + [True] * 5 + [False]
    assert res[-1]["threshold"] == 300.0 and not res[-1]["alarm"]
    stored = json.loads((tmp_path / "state" / "models" / "m.calibration.json").read_text())
    assert stored["threshold"] == 300.0


def test_warmup_by_reading_time(tmp_path: Path, harness_factory: Any) -> None:
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=4, calibration=SQUARES)
    h = harness_factory([model_cfg(p, window=4, hop=1, queue=100, warmup_seconds=10.0, warmup_windows=0)]).start()
    h.feed([1.0] * 30)  # the harness stamps readings 1 s apart
    assert h.service.wait_idle(10)
    res = [e["data"] for e in h.messages("inference/m")]
    assert sum(1 for r in res if r.get("calibrating")) == 11  # window ends 4..14: 10 s of reading time
    assert h.messages("events/model_calibrated")[0]["data"]["windows"] == 11


@pytest.mark.parametrize("block, msg", [
    ({"windows": 1, "quantile": 0.99, "margin": 3}, "calibration.windows: must be an integer in \\[2"),
    ({"windows": 10, "quantile": 1.5, "margin": 3}, "calibration.quantile: must be a number in \\[0.5, 1\\]"),
    ({"windows": 10, "quantile": 0.9, "margin": 3, "scale": "iqr"}, "calibration.scale: must be one of"),
    ({"windows": 10, "quantile": 0.9, "margin": 3, "scale": "window_std"}, "calibration.scale_reference"),
    ({"windows": 10, "quantile": 0.9, "margin": 3, "typo": 1}, "unknown key\\(s\\) \\['typo'\\]"),
    ([1, 2], "calibration: must be an object"),
])
def test_bad_calibration_block_is_refused_by_name(tmp_path: Path, block: Any, msg: str) -> None:
    _, _, meta = model_files(tmp_path / "m", scale(0.0), n_in=4)
    meta["calibration"] = block
    with pytest.raises(ModelError, match=f"m.json: .*{msg}"):
        parse_metadata(meta, "m.json")


def test_classifier_cannot_calibrate(tmp_path: Path) -> None:
    _, _, meta = model_files(tmp_path / "m", scale(1.0), n_in=2, output="scores", labels=["normal", "bad"])
    meta["calibration"] = SQUARES
    with pytest.raises(ModelError, match="only anomaly-score models"):
        parse_metadata(meta, "m.json")


def test_level_shift_model_catches_a_slow_slide_the_shape_model_cannot_see(tmp_path: Path) -> None:
    """Both shipped detectors on one noisy sensor: after the warm-up, a slide of 8 sigma over 200 readings
    (then flat at the new level) alarms the level detector; the centred autoencoder sees only noise."""
    cfgs = [model_cfg("builtin:level_shift", name="level", window=96, hop=4, alarm_after=3, rearm=36, queue=1000),
            model_cfg("builtin:machine_temp_ae", name="shape", window=32, hop=4, alarm_after=3, rearm=36,
                      queue=1000)]
    h = Harness(tmp_path, cfgs).start()
    try:
        rng = np.random.default_rng(3)
        clean = 20.0 + rng.standard_normal(900 + 1500)
        h.feed([float(v) for v in clean])
        assert h.service.wait_idle(30)
        assert len(h.messages("events/model_calibrated")) == 2
        assert not h.messages("events/level_anomaly") and not h.messages("events/shape_anomaly"), "quiet"
        slide = 20.0 + np.r_[np.linspace(0, 8, 200), np.full(300, 8.0)] + rng.standard_normal(500)
        h.feed([float(v) for v in slide])
        assert h.service.wait_idle(30)
        assert len(h.messages("events/level_anomaly")) == 1
        assert not h.messages("events/shape_anomaly"), "a smooth slide has no shape"
    finally:
        h.close()


def test_model_calibrate_command_through_the_registry(tmp_path: Path, harness_factory: Any) -> None:
    from edge_agent.commands.registry import Registry
    from edge_agent.errors import CommandError

    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=4, calibration=SQUARES)
    h = harness_factory([model_cfg(p, window=4, queue=100), model_cfg(p, name="pinned", window=4, threshold=1.0)])
    h.start()
    reg = Registry()
    h.service.register_commands(reg)
    spec = reg.get("model.calibrate")
    assert spec is not None and not spec.read_only
    out = spec.fn(None, model="m")
    assert out["name"] == "m" and out["calibration"]["state"] == "warming up"
    with pytest.raises(CommandError) as e:
        spec.fn(None, model="nope")
    assert e.value.code == "not_found" and "'nope'" in str(e.value)
    with pytest.raises(CommandError) as e:
        spec.fn(None, model="pinned")
    assert e.value.code == "not_calibratable" and "pinned in the config" in str(e.value)


def test_scores_after_calibration_do_not_depend_on_how_far_the_worker_lagged(tmp_path: Path) -> None:
    """The input scale is applied in the tap; windows already in the ring when it is learned are rescaled
    by the worker. So a burst (the worker far behind) and a trickle (it keeps up) give the same scores."""
    x = [float(v) for v in _sensor(832 + 400, 300.0, offset=1000.0, seed=5)]
    scores = []
    for k, chunk in enumerate((len(x), 4)):
        cfg = model_cfg("builtin:machine_temp_ae", name="temp", hop=4, queue=100000)
        h = Harness(tmp_path / f"r{k}", [cfg]).start()
        try:
            for i in range(0, len(x), chunk):
                h.feed(x[i:i + chunk])
                if chunk < len(x):
                    assert h.service.wait_idle(10)
            assert h.service.wait_idle(30)
            res = [e["data"] for e in h.messages("inference/temp")]
            scores.append([r["score"] for r in res if not r.get("calibrating")])
        finally:
            h.close()
    assert len(scores[0]) == len(scores[1]) == (len(x) - 32) // 4 + 1 - 200
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5)


def test_hot_swap_to_another_model_file_warms_up_again_and_rollback_too(tmp_path: Path, harness_factory: Any) -> None:
    rule = {"windows": 4, "quantile": 1.0, "margin": 3.0, "scale": "window_std", "scale_reference": 1.0}
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=4, calibration=rule)
    _, blob2, meta2 = model_files(tmp_path / "m", scale(0.5), n_in=4, version="2", calibration=rule)
    h = harness_factory([model_cfg(p, window=4, queue=100)]).start()
    alt = [10.0, 14.0, 10.0, 14.0]  # window std 2 -> input scale 0.5
    h.feed(alt * 6)
    assert h.service.wait_idle(10)
    first = h.messages("events/model_calibrated")
    assert len(first) == 1 and first[0]["data"]["input_scale"] == 0.5 and first[0]["data"]["version"] == "1"
    h.service.install("m", blob2, meta2)
    d = h.service.describe()[0]
    assert d["version"] == "2" and d["calibration"]["state"] == "warming up"
    h.feed(alt * 6)
    assert h.service.wait_idle(10)
    cals = [e["data"] for e in h.messages("events/model_calibrated")]
    assert [(c["version"], c["input_scale"]) for c in cals] == [("1", 0.5), ("2", 0.5)]
    res = [e["data"] for e in h.messages("inference/m")]
    assert [r.get("calibrating", False) for r in res] == [True] * 4 + [False] * 2 + [True] * 4 + [False] * 2
    assert not any(r["alarm"] for r in res)
    h.service.rollback("m")
    assert h.service.describe()[0]["calibration"]["state"] == "warming up"  # v1's stored calibration was replaced
