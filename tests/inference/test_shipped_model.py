"""The shipped model is what tools/train_anomaly.py produces, and behaves on its training data."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.inference.model import BUILTIN_DIR, load
from tests.helpers import SHARED
from tests.inference.conftest import ROOT, model_cfg

SHIPPED = BUILTIN_DIR / "machine_temp_ae.tflite"
NAB = SHARED / "data" / "nab" / "machine_temperature_system_failure.csv"


def test_shipped_files_are_consistent_and_small() -> None:
    blob = SHIPPED.read_bytes()
    meta = json.loads(SHIPPED.with_name(SHIPPED.name + ".json").read_text())
    assert len(blob) < 10_000 and hashlib.sha256(blob).hexdigest() == meta["sha256"]
    assert meta["threshold"] == pytest.approx(3.0 * meta["training"]["train_score_max"], rel=1e-3)
    m = load(model_cfg("builtin:machine_temp_ae", hop=4), SHIPPED)
    assert m.threshold == meta["threshold"] and m.version == meta["version"]


@pytest.mark.skipif(not NAB.exists(), reason=f"NAB data not found at {NAB}")
def test_interpreter_scores_on_training_data_match_the_recorded_training_run() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    import train_anomaly as ta

    stamps, values = ta.read_series(NAB)
    n = sum(1 for s in stamps if s < ta.TRAIN_END)
    m = load(model_cfg("builtin:machine_temp_ae"), SHIPPED)
    x = ta.windows(values[:n]).astype(np.float32)
    scores = np.array([m.infer(w.reshape(-1, 1)).score for w in x])
    meta = m.meta.raw["training"]
    assert scores.max() == pytest.approx(meta["train_score_max"], rel=1e-3)
    assert (scores < m.threshold).all(), "no alarm on the data it was trained on"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGE_AGENT_LONG"), reason="re-training takes ~30 s: EDGE_AGENT_LONG=1")
@pytest.mark.skipif(not NAB.exists(), reason=f"NAB data not found at {NAB}")
def test_training_is_reproducible_byte_for_byte(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    import train_anomaly as ta

    out = tmp_path / "m.tflite"
    assert ta.main(["--out", str(out)]) == 0
    assert out.read_bytes() == SHIPPED.read_bytes()
    assert json.loads(out.with_name("m.tflite.json").read_text()) == json.loads(
        SHIPPED.with_name(SHIPPED.name + ".json").read_text())


def test_shipped_model_computes_the_score_in_its_graph_from_raw_readings() -> None:
    meta = json.loads(SHIPPED.with_name(SHIPPED.name + ".json").read_text())
    assert meta["output"] == "score" and meta["output_shape"] == [1, 1]
    assert meta["mean"] == [0.0] and meta["std"] == [1.0]  # identity: the graph centres and scales
    assert meta["training"]["std"] > 0 and 50 < meta["training"]["mean"] < 120
    assert meta["training"]["centred"] is True and meta["version"] == "1.2.0"
    m = load(model_cfg("builtin:machine_temp_ae"), SHIPPED)
    assert m.kind == "score" and m.identity and not m.classifier


@pytest.mark.skipif(not NAB.exists(), reason=f"NAB data not found at {NAB}")
def test_shipped_model_scores_equal_the_training_code_on_the_whole_series() -> None:
    """1.2.0's graph (raw window in, MEAN + SUB, scaled layers, SQUARED_DIFFERENCE) is the training code's
    float64 standardise -> centre -> autoencoder -> MSE, to float32 rounding, over the whole series; and
    the score does not depend on the window's level."""
    sys.path.insert(0, str(ROOT / "tools"))
    import train_anomaly as ta

    _, values = ta.read_series(NAB)
    x = ta.windows(values, hop=7)
    m = load(model_cfg("builtin:machine_temp_ae"), SHIPPED)
    got = np.array([m.score(w.astype(np.float32).reshape(1, -1)) for w in x])
    tr = m.meta.raw["training"]
    z = (x - tr["mean"]) / tr["std"]
    z = z - z.mean(1, keepdims=True)
    ref = _float64_scores(z, tr["std"])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-7)
    thr = m.threshold
    assert ((got >= thr) == (ref >= thr)).mean() > 0.999
    shifted = np.array([m.score((w + 20.0).astype(np.float32).reshape(1, -1)) for w in x[::25]])
    np.testing.assert_allclose(shifted, got[::25], rtol=2e-3, atol=1e-6)


def _float64_scores(z: np.ndarray, std: float) -> np.ndarray:
    """The float64 reference: the float32 weights read back out of the shipped file (std folding undone)."""
    from edge_agent.inference.runtime import make_interpreter

    it = make_interpreter(SHIPPED.read_bytes())
    dense = [d for d in it.get_tensor_details() if d["name"].startswith("dense") and d["name"][-2:] in ("/w", "/b")]
    by = {d["name"]: it.get_tensor(d["index"]).astype(np.float64) for d in dense}
    names = sorted({n.split("/")[0] for n in by}, key=lambda n: int(n[5:]))
    layers = [(by[f"{n}/w"], by[f"{n}/b"]) for n in names]
    h = z
    for k, (w, b) in enumerate(layers):
        if k == 0:
            w = w * std  # the graph has 1/std folded into the first layer
        if k == len(layers) - 1:
            w, b = w / std, b / std  # and std into the last
        h = h @ w.T + b
        if k < len(layers) - 1:
            h = np.tanh(h)
    return ((h - z) ** 2).mean(1)


@pytest.mark.skipif(not NAB.exists(), reason=f"NAB data not found at {NAB}")
def test_shipped_calibration_rule_matches_the_training_data() -> None:
    """The on-device input scale compares the sensor with the training data's median window std: that
    reference must be the training stretch's, as tools/train_anomaly.py computes it."""
    sys.path.insert(0, str(ROOT / "tools"))
    import train_anomaly as ta

    stamps, values = ta.read_series(NAB)
    n = sum(1 for s in stamps if s < ta.TRAIN_END)
    cal = json.loads(SHIPPED.with_name(SHIPPED.name + ".json").read_text())["calibration"]
    assert cal["scale"] == "window_std" and cal["windows"] == ta.CALIB_WINDOWS
    assert cal["scale_reference"] == pytest.approx(float(np.median(ta.windows(values[:n]).std(1))), rel=1e-5)
    assert (cal["quantile"], cal["margin"]) == (ta.CALIB_QUANTILE, ta.THRESHOLD_FACTOR)


def test_level_shift_model_is_what_its_builder_writes(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    import build_level_model as bl

    out = tmp_path / "l.tflite"
    assert bl.main(["--out", str(out)]) == 0
    shipped = BUILTIN_DIR / "level_shift.tflite"
    assert out.read_bytes() == shipped.read_bytes()
    assert json.loads(out.with_name("l.tflite.json").read_text()) == json.loads(
        shipped.with_name(shipped.name + ".json").read_text())
    m = load(model_cfg("builtin:level_shift", window=96), shipped)
    x = np.r_[np.full(72, 10.0), np.full(24, 13.0)].astype(np.float32).reshape(1, -1)
    assert m.score(x) == pytest.approx(3.0, rel=1e-5)  # float32 sums
    assert m.score(x[:, ::-1].copy()) == pytest.approx(1.0, rel=1e-5)
    assert m.threshold == 0.0 and m.rule is not None  # no shipped threshold: it always calibrates
