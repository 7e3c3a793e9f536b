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
