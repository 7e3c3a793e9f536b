"""Fixtures for the inference tests: small real .tflite models written by tools/tflite_build.py.

Every test here runs a real TFLite interpreter (ai-edge-litert or tflite-runtime); without one the whole
directory is skipped with the runtime's own explanation (except in CI, where that is a failure).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config import ModelConfig
from edge_agent.inference import runtime

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import tflite_build as tb  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _need_runtime() -> None:
    reason = runtime.unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def model_files(dirpath: Path, layers: Sequence[Any], n_in: int = 32, name: str = "m", version: str = "1",
                output: str = "reconstruction", labels: Sequence[str] = (), mean: Any = 0.0, std: Any = 1.0,
                threshold: float | None = None, in_shape: Sequence[int] | None = None,
                **extra: Any) -> tuple[Path, bytes, dict[str, Any]]:
    """Write ``<name>-<version>.tflite`` and its metadata; return (path, bytes, metadata dict)."""
    blob = tb.build(n_in, list(layers))
    out_w = n_in
    for layer in layers:
        if isinstance(layer, tb.Dense):
            out_w = np.asarray(layer.w).shape[0]
        elif isinstance(layer, tb.SquaredError):
            out_w = 1
    meta: dict[str, Any] = {
        "name": name, "version": version, "sha256": __import__("hashlib").sha256(blob).hexdigest(),
        "input_shape": list(in_shape or [1, n_in]), "input_dtype": "float32", "output_shape": [1, out_w],
        "output": output, "labels": list(labels), "mean": mean, "std": std, **extra,
    }
    if threshold is not None:
        meta["threshold"] = threshold
    dirpath.mkdir(parents=True, exist_ok=True)
    path = dirpath / f"{name}-{version}.tflite"
    path.write_bytes(blob)
    path.with_name(path.name + ".json").write_text(json.dumps(meta))
    return path, blob, meta


def model_cfg(path: Path | str, **kw: Any) -> ModelConfig:
    base: dict[str, Any] = {"name": "m", "path": str(path), "inputs": ["s1"], "window": 32}
    base.update(kw)
    return ModelConfig(**base)


def scale(k: float) -> list[Any]:
    """out = k * in: reconstruction MSE of a standardised window x is (k-1)^2 * mean(x^2)."""
    return [tb.Scale(k)]


class Harness:
    """A real Outbox (SQLite in tmp) + the real Pipeline + the inference service under test."""

    def __init__(self, tmp: Path, models: list[ModelConfig], batches: dict[str, int] | None = None) -> None:
        from edge_agent.inference.service import InferenceService
        from edge_agent.outbox import Outbox
        from edge_agent.pipeline import Pipeline

        self.outbox = Outbox(tmp / "outbox.db", "dev-1", commit_interval=0.01).open()
        self.pipeline = Pipeline(self.outbox, "edge", "dev-1", batches)
        self.service = InferenceService(models, self.pipeline, tmp / "state")
        self.n = 0
        self._seen: list[dict[str, Any]] = []

    def start(self) -> Harness:
        self.service.start()
        return self

    def feed(self, values: Any, sensor: str = "s1", field: str = "value") -> list[int]:
        from edge_agent.sensors.base import Reading

        seqs = []
        for v in values:
            self.n += 1
            seq = self.pipeline.submit(Reading(sensor, 1000.0 + self.n, {field: v}))
            assert seq is not None
            seqs.append(seq)
        return seqs

    def messages(self, prefix: str = "") -> list[dict[str, Any]]:
        """Every envelope stored so far whose stream starts with ``prefix`` (read back from SQLite)."""
        return read_messages(self.outbox, prefix)

    def close(self) -> None:
        self.service.stop()
        self.outbox.close()


@pytest.fixture
def harness_factory(tmp_path: Path) -> Any:
    made: list[Harness] = []

    def make(models: list[ModelConfig], **kw: Any) -> Harness:
        h = Harness(tmp_path, models, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def read_messages(outbox: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Every envelope stored in ``outbox`` whose stream starts with ``prefix``, in seq order (read back
    from SQLite, left in place)."""
    from edge_agent import codec

    assert outbox.flush(10)
    rows = outbox.begin(1_000_000)
    outbox.release([r.seq for r in rows])
    envs = [codec.decode_envelope(r.payload) for r in rows]
    envs.sort(key=lambda e: e["seq"])
    return [e for e in envs if str(e["stream"]).startswith(prefix)]
