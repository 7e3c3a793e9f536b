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


PREVIOUS = Path(__file__).resolve().parent / "data" / "machine_temp_ae-1.0.0.tflite"


def test_shipped_model_computes_the_score_in_its_graph_from_raw_readings() -> None:
    meta = json.loads(SHIPPED.with_name(SHIPPED.name + ".json").read_text())
    assert meta["output"] == "score" and meta["output_shape"] == [1, 1]
    assert meta["mean"] == [0.0] and meta["std"] == [1.0]  # identity: the graph standardises
    assert meta["training"]["std"] > 0 and 50 < meta["training"]["mean"] < 120
    m = load(model_cfg("builtin:machine_temp_ae"), SHIPPED)
    assert m.kind == "score" and m.identity and not m.classifier


@pytest.mark.skipif(not NAB.exists(), reason=f"NAB data not found at {NAB}")
def test_shipped_model_scores_equal_the_previous_reconstruction_model_on_the_whole_series() -> None:
    """1.1.0 is 1.0.0 (same weights) with standardisation and MSE moved into the graph: same scores."""
    sys.path.insert(0, str(ROOT / "tools"))
    import train_anomaly as ta

    _, values = ta.read_series(NAB)
    x = ta.windows(values, hop=7).astype(np.float32)
    new = load(model_cfg("builtin:machine_temp_ae"), SHIPPED)
    old = load(model_cfg(str(PREVIOUS)), PREVIOUS)
    assert old.kind == "reconstruction" and old.version == "1.0.0"
    s_new = np.array([new.score(w.reshape(1, -1)) for w in x])
    s_old = np.array([old.score(w.reshape(1, -1)) for w in x])
    np.testing.assert_allclose(s_new, s_old, rtol=1e-4)
    thr = new.threshold
    assert thr == old.threshold and ((s_new >= thr) == (s_old >= thr)).all()
    # the standardisation folded into the graph is exactly the one 1.0.0 had the agent apply in numpy
    mean, std = new.meta.raw["training"]["mean"], new.meta.raw["training"]["std"]
    assert (old.mean[0], old.std[0]) == (np.float32(mean), np.float32(std))
