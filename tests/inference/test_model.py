"""Loading and running real .tflite models: preprocessing, scoring, and every refusal with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import ModelError
from edge_agent.inference.model import NonFiniteOutput, load, parse_metadata
from tests.inference.conftest import model_cfg, model_files, scale, tb


def test_metadata_preprocessing_and_reconstruction_score(tmp_path: Path) -> None:
    # out = 2 * in, so MSE(out, in) = mean(x_std^2) where x_std = (x - mean) / std
    p, _, _ = model_files(tmp_path, scale(2.0), n_in=8, mean=10.0, std=2.0)
    m = load(model_cfg(p, window=8), p)
    x = np.array([10, 12, 8, 14, 10, 10, 6, 10], dtype=np.float32).reshape(8, 1)
    xs = (x - 10) / 2
    assert m.infer(x).score == pytest.approx(float((xs ** 2).mean()), rel=1e-6)
    assert np.allclose(m.preprocess(x), xs)


def test_config_standardize_and_none_override_metadata(tmp_path: Path) -> None:
    p, _, _ = model_files(tmp_path, scale(0.0), n_in=4, mean=100.0, std=50.0)
    x = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
    none = load(model_cfg(p, window=4, preprocess="none"), p)
    assert none.infer(x).score == pytest.approx(float((x ** 2).mean()))
    std = load(model_cfg(p, window=4, preprocess="standardize", mean=2.5, std=0.5), p)
    assert std.infer(x).score == pytest.approx(float((((x - 2.5) / 0.5) ** 2).mean()))


def test_per_input_normalisation_and_3d_input_shape(tmp_path: Path) -> None:
    p, _, _ = model_files(tmp_path, scale(0.0), n_in=6, mean=[0.0, 100.0], std=[1.0, 10.0], in_shape=[1, 6])
    m = load(model_cfg(p, window=3, inputs=["a", "b"]), p)
    x = np.array([[1, 110], [2, 120], [3, 130]], dtype=np.float32)
    assert m.infer(x).score == pytest.approx(float(np.mean([1, 1, 4, 4, 9, 9])))


def test_window_mismatch_refused_with_clear_error(tmp_path: Path) -> None:
    p, _, _ = model_files(tmp_path, scale(1.0), n_in=16)
    with pytest.raises(ModelError, match=r"input shape \[1, 16\] does not fit the config: window 32 x 1 input"):
        load(model_cfg(p, window=32), p)
    with pytest.raises(ModelError, match=r"window 8 x 3 input\(s\) = 24 values"):
        load(model_cfg(p, window=8, inputs=["a", "b", "c"]), p)


def test_metadata_shape_disagreeing_with_model_refused(tmp_path: Path) -> None:
    p, _, meta = model_files(tmp_path, scale(1.0), n_in=8)
    meta["input_shape"] = [1, 16]
    p.with_name(p.name + ".json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"input shape \[1, 8\] does not match its metadata input_shape \[1, 16\]"):
        load(model_cfg(p, window=8), p)


def test_metadata_window_disagreeing_with_config_refused(tmp_path: Path) -> None:
    p, _, _ = model_files(tmp_path, scale(1.0), n_in=8, window=4, inputs=2)
    with pytest.raises(ModelError, match="metadata window is 4 but the config gives 8"):
        load(model_cfg(p, window=8), p)


def test_reconstruction_needs_matching_output_and_scores_need_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dense = [tb.Dense(rng.normal(size=(3, 8)), np.zeros(3))]
    p, _, _ = model_files(tmp_path, dense, n_in=8)
    with pytest.raises(ModelError, match="'reconstruction' needs as many outputs as inputs"):
        load(model_cfg(p, window=8), p)
    p2, _, _ = model_files(tmp_path / "b", dense, n_in=8, output="scores", labels=["normal", "spike"])
    with pytest.raises(ModelError, match=r"output shape \[1, 3\] does not match its 2 labels"):
        load(model_cfg(p2, window=8, output="scores"), p2)
    with pytest.raises(ModelError, match="metadata output is 'scores' but the config says"):
        load(model_cfg(p2, window=8), p2)


def test_classifier_scores_and_alarm_score_ignores_normal(tmp_path: Path) -> None:
    w = np.zeros((3, 4), np.float32)
    w[1, 0] = 1.0  # "spike" score = first value
    b = np.array([0.9, 0.0, 0.2], np.float32)
    p, _, _ = model_files(tmp_path, [tb.Dense(w, b)], n_in=4, output="scores",
                          labels=["normal", "spike", "drift"])
    m = load(model_cfg(p, window=4, output="scores"), p)
    r = m.infer(np.array([[0.5], [0], [0], [0]], np.float32))
    assert r.labels == pytest.approx({"normal": 0.9, "spike": 0.5, "drift": 0.2})
    assert r.top == "normal" and r.score == pytest.approx(0.5)


def test_sha256_mismatch_refused(tmp_path: Path) -> None:
    p, _, meta = model_files(tmp_path, scale(1.0), n_in=8)
    meta["sha256"] = "0" * 64
    p.with_name(p.name + ".json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"sha256 mismatch: file is [0-9a-f]{64}, metadata says 0000"):
        load(model_cfg(p, window=8), p)


def test_missing_or_broken_files_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"cannot read model .*nope\.tflite"):
        load(model_cfg(tmp_path / "nope.tflite"), tmp_path / "nope.tflite")
    p, _, _ = model_files(tmp_path, scale(1.0), n_in=8)
    p.with_name(p.name + ".json").unlink()
    with pytest.raises(ModelError, match=r"metadata file missing: .*\.tflite\.json"):
        load(model_cfg(p, window=8), p)
    p.write_bytes(b"not a model at all" * 4)
    meta = {"name": "x", "version": "1", "sha256": __import__("hashlib").sha256(p.read_bytes()).hexdigest(),
            "input_shape": [1, 8], "output_shape": [1, 8]}
    p.with_name(p.name + ".json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="not a loadable TFLite model"):
        load(model_cfg(p, window=8), p)


def test_metadata_validation_lists_every_problem() -> None:
    with pytest.raises(ModelError) as e:
        parse_metadata({"name": "x", "sha256": "abc", "input_shape": [1, 0], "input_dtype": "int8",
                        "output": "boxes", "std": [0.0]}, "m.json")
    msg = str(e.value)
    for part in ("version: required", "sha256: must be 64 hex", "input_shape: must be a list of positive",
                 "output_shape: required", "input_dtype: only float32", "output: must be", "std: must be > 0"):
        assert part in msg


def test_nan_output_raises_non_finite(tmp_path: Path) -> None:
    nan_w = np.full((8, 8), np.nan, np.float32)
    p, _, _ = model_files(tmp_path, [tb.Dense(nan_w, np.zeros(8))], n_in=8)
    m = load(model_cfg(p, window=8), p)
    with pytest.raises(NonFiniteOutput, match="non-finite reconstruction"):
        m.infer(np.ones((8, 1), np.float32))
    with pytest.raises(NonFiniteOutput, match="test invoke on a window at the mean gave non-finite output"):
        m.self_test()


def test_threshold_from_config_else_metadata(tmp_path: Path) -> None:
    p, _, _ = model_files(tmp_path, scale(1.0), n_in=8, threshold=0.25)
    assert load(model_cfg(p, window=8), p).threshold == 0.25
    assert load(model_cfg(p, window=8, threshold=2.0), p).threshold == 2.0
