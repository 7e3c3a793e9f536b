"""Loading and running real .tflite models: preprocessing, scoring, and every refusal with a clear error."""

from __future__ import annotations

import itertools
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
    assert np.allclose(np.asarray(m.preprocess(x)), xs.reshape(-1))  # a flat float32 window


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


def _autoencoder(rng: np.random.Generator, sizes: tuple[int, ...]) -> list[tb.Dense]:
    return [tb.Dense(rng.normal(0, 1 / np.sqrt(a), (b, a)), rng.normal(0, 0.1, b), "tanh" if k < len(sizes) - 2
                     else "none") for k, (a, b) in enumerate(itertools.pairwise(sizes))]


def _numpy_mse(layers: list[tb.Dense], z: np.ndarray) -> float:
    h = z.astype(np.float64)
    for la in layers:
        h = h @ np.asarray(la.w, np.float64).T + la.b
        if la.act == "tanh":
            h = np.tanh(h)
    return float(((h - z) ** 2).mean())


def test_score_output_graph_equals_standardise_autoencoder_mse(tmp_path: Path) -> None:
    # two inputs with their own mean/std: the graph takes raw rows and outputs the MSE of the standardised
    # window, exactly what the agent computes in numpy for the plain 'reconstruction' model
    rng = np.random.default_rng(5)
    layers = _autoencoder(rng, (12, 6, 3, 6, 12))
    mean, std = [20.0, -300.0], [2.0, 40.0]
    graph = tb.anomaly_graph(layers, mean, std, window=6)
    p, _, _ = model_files(tmp_path / "g", graph, n_in=12, output="score", mean=0.0, std=1.0)
    m = load(model_cfg(p, window=6, inputs=["a", "b"]), p)
    assert m.kind == "score" and m.identity and m.meta.output_shape == (1, 1)
    p2, _, _ = model_files(tmp_path / "r", layers, n_in=12, mean=mean, std=std)
    r = load(model_cfg(p2, window=6, inputs=["a", "b"]), p2)
    for _ in range(20):
        rows = (np.array(mean) + np.array(std) * rng.normal(0, 1.5, (6, 2))).astype(np.float32)
        want = _numpy_mse(layers, ((rows.astype(np.float64) - mean) / std).reshape(1, -1))
        assert m.score(rows.reshape(1, 12)) == pytest.approx(want, rel=1e-4)
        assert m.score(rows) == pytest.approx(want, rel=1e-4)  # (window, inputs) rows are reshaped
        assert m.infer(rows).score == pytest.approx(want, rel=1e-4) and m.infer(rows).labels is None
        assert r.score(rows) == pytest.approx(want, rel=1e-4)  # the numpy path agrees
        assert tb.numpy_forward(rows.reshape(1, 12), graph).item() == pytest.approx(want, rel=1e-4)


def test_centred_score_graph_equals_centre_autoencoder_mse_and_ignores_the_level(tmp_path: Path) -> None:
    # anomaly_graph(centre=True): MEAN + SUB in the graph, i.e. the MSE of the standardised window minus its
    # own mean; any constant added to the window leaves the score unchanged
    rng = np.random.default_rng(8)
    layers = _autoencoder(rng, (8, 4, 8))
    graph = tb.anomaly_graph(layers, 70.0, 4.0, window=8, centre=True)
    p, _, _ = model_files(tmp_path / "c", graph, n_in=8, output="score", mean=0.0, std=1.0)
    m = load(model_cfg(p, window=8), p)
    assert m.kind == "score" and m.identity
    for _ in range(20):
        x = rng.normal(70, 6, 8)
        z = (x - 70.0) / 4.0
        want = _numpy_mse(layers, (z - z.mean()).reshape(1, -1))
        assert m.score(x.astype(np.float32).reshape(1, 8)) == pytest.approx(want, rel=1e-4)
        assert m.score((x + 25.0).astype(np.float32).reshape(1, 8)) == pytest.approx(want, rel=1e-3)
        assert tb.numpy_forward(x.reshape(1, 8), graph).item() == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="one input only"):
        tb.anomaly_graph(_autoencoder(rng, (8, 4, 8)), [0.0, 1.0], [1.0, 1.0], window=4, centre=True)


def test_score_output_on_standardised_input_and_refusals(tmp_path: Path) -> None:
    # a 'score' model that wants standardised input (mean/std in the metadata): the agent standardises
    rng = np.random.default_rng(6)
    layers = _autoencoder(rng, (8, 4, 8))
    graph = [*layers, tb.SquaredError(np.full(8, 1 / 8))]
    p, _, _ = model_files(tmp_path / "a", graph, n_in=8, output="score", mean=5.0, std=2.0, threshold=0.5)
    m = load(model_cfg(p, window=8), p)
    assert not m.identity
    x = rng.normal(5, 2, (8, 1)).astype(np.float32)
    assert m.score(x) == pytest.approx(_numpy_mse(layers, (x.reshape(-1).astype(np.float64) - 5) / 2), rel=1e-4)
    # config output 'scores' (a classifier) cannot run an anomaly score
    with pytest.raises(ModelError, match="metadata output is 'score' but the config says output = 'scores'"):
        load(model_cfg(p, window=8, output="scores"), p)
    # one value, no labels
    p2, _, _ = model_files(tmp_path / "b", layers, n_in=8, output="score")
    with pytest.raises(ModelError, match=r"output_shape: output 'score' is one value \(e.g. \[1, 1\]\), got \[1, 8\]"):
        load(model_cfg(p2, window=8), p2)
    with pytest.raises(ModelError, match="output 'score' is one anomaly score and takes no labels"):
        parse_metadata({"name": "x", "version": "1", "sha256": "0" * 64, "input_shape": [1, 8],
                        "output_shape": [1, 1], "output": "score", "labels": ["a"]})
    # NaN out of the graph
    nan = [tb.Dense(np.full((8, 8), np.nan), np.zeros(8)), tb.SquaredError(np.ones(8))]
    p3, _, _ = model_files(tmp_path / "c", nan, n_in=8, output="score")
    m3 = load(model_cfg(p3, window=8), p3)
    with pytest.raises(NonFiniteOutput, match="non-finite score"):
        m3.score(np.ones((1, 8), np.float32))
    with pytest.raises(NonFiniteOutput, match="test invoke on a window at the mean"):
        m3.self_test()


def test_anomaly_graph_refuses_layers_that_do_not_fit() -> None:
    rng = np.random.default_rng(7)
    with pytest.raises(ValueError, match=r"window 4 x 2 input\(s\) = 8 values does not fit layers 6"):
        tb.anomaly_graph(_autoencoder(rng, (6, 3, 6)), [0.0, 1.0], [1.0, 1.0], window=4)
    with pytest.raises(ValueError, match="the first and the last Dense"):
        tb.anomaly_graph([tb.Unary("tanh"), *_autoencoder(rng, (4, 4))], 0.0, 1.0, window=4)
    with pytest.raises(ValueError, match="SquaredError ref 3 must name an earlier tensor"):
        tb.build(4, [tb.Scale(2.0), tb.SquaredError(np.ones(4), ref=3)])


def test_raw_input_model_refuses_a_second_standardisation(tmp_path: Path) -> None:
    """A model whose graph standardises (metadata input = 'raw') under preprocess = 'standardize' would be
    standardised twice: refused, naming why. A bad 'input' value is a metadata error."""
    p, _, _ = model_files(tmp_path, scale(1.0), n_in=8, input="raw")
    assert load(model_cfg(p, window=8), p).identity
    assert load(model_cfg(p, window=8, preprocess="none"), p)
    with pytest.raises(ModelError, match="standardise twice"):
        load(model_cfg(p, window=8, preprocess="standardize", mean=80.0, std=8.0), p)
    with pytest.raises(ModelError, match="input: must be 'raw'"):
        parse_metadata({"name": "m", "version": "1", "sha256": "0" * 64, "input_shape": [1, 8],
                        "output_shape": [1, 8], "input": "normalised"})
