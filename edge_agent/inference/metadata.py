"""A model's metadata file (``X.tflite.json``): decode and validate it, listing every problem at once.

The format is documented in :mod:`.model` and docs/inference.md. :func:`parse_metadata` checks the
document on its own (types, shapes, kinds, normalisation, threshold, calibration rule); checking it
against the model's tensors and the config is :class:`.model.Model`'s job.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.errors import ModelError
from edge_agent.inference.calibration import Rule, parse_rule

OUTPUT_KINDS = ("reconstruction", "score", "scores")


@dataclass(frozen=True)
class Metadata:
    name: str
    version: str
    sha256: str
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    output: str
    labels: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    threshold: float | None = None
    calibration: Rule | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class _Reader:
    """Typed reads of one metadata document; every problem is appended to ``errs``."""

    def __init__(self, d: Mapping[str, Any]) -> None:
        self.d = d
        self.errs: list[str] = []

    def get(self, key: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
        if key not in self.d:
            if required:
                self.errs.append(f"{key}: required key is missing")
            return None
        v = self.d[key]
        if not isinstance(v, kind) or isinstance(v, bool):
            self.errs.append(f"{key}: wrong type {type(v).__name__}")
            return None
        return v

    def shape(self, key: str) -> tuple[int, ...]:
        v = self.get(key, list)
        if v is None:
            return ()
        if not v or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v):
            self.errs.append(f"{key}: must be a list of positive integers, got {v!r}")
            return ()
        return tuple(v)

    def floats(self, key: str) -> tuple[float, ...]:
        v = self.d.get(key, [])
        if _number(v):
            v = [v]
        if not isinstance(v, list) or not all(_number(x) and math.isfinite(x) for x in v):
            self.errs.append(f"{key}: must be a finite number or a list of them, got {v!r}")
            return ()
        return tuple(float(x) for x in v)


def _output(r: _Reader, out_shape: tuple[int, ...]) -> tuple[str, list[str]]:
    """The output kind and its labels, checked against each other and the output shape."""
    d, errs = r.d, r.errs
    output = d.get("output", "reconstruction")
    if output not in OUTPUT_KINDS:
        errs.append(f"output: must be one of {', '.join(map(repr, OUTPUT_KINDS))}, got {output!r}")
    labels = d.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        errs.append(f"labels: must be a list of strings, got {labels!r}")
        labels = []
    if output == "scores" and not labels:
        errs.append("labels: required for output 'scores'")
    if output == "score" and labels:
        errs.append(f"labels: output 'score' is one anomaly score and takes no labels, got {labels!r}")
    if output == "score" and out_shape and math.prod(out_shape) != 1:
        errs.append(f"output_shape: output 'score' is one value (e.g. [1, 1]), got {list(out_shape)}")
    return output, labels


def _threshold_and_rule(r: _Reader, output: str, source: str) -> tuple[float | None, Rule | None]:
    d, errs = r.d, r.errs
    thr = d.get("threshold")
    if thr is not None and (not _number(thr) or not math.isfinite(thr) or thr < 0):
        errs.append(f"threshold: must be a finite number >= 0, got {thr!r}")
        thr = None
    rule = None
    if d.get("calibration") is not None:
        try:
            rule = parse_rule(d["calibration"], source)
        except ModelError as e:
            errs.append(str(e).removeprefix(f"{source}: "))
        if output == "scores":
            errs.append("calibration: only anomaly-score models (output 'reconstruction' or 'score') calibrate")
    return (None if thr is None else float(thr)), rule


def parse_metadata(d: Any, source: str = "metadata") -> Metadata:
    """Validate a decoded metadata document; ModelError lists every problem."""
    if not isinstance(d, Mapping):
        raise ModelError(f"{source}: must be a JSON object, got {type(d).__name__}")
    r = _Reader(d)
    errs = r.errs
    name = r.get("name", str)
    version = r.get("version", str)
    sha = r.get("sha256", str)
    if isinstance(sha, str) and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower())):
        errs.append(f"sha256: must be 64 hex digits, got {sha!r}")
    in_shape = r.shape("input_shape")
    out_shape = r.shape("output_shape")
    dtype = d.get("input_dtype", "float32")
    if dtype != "float32":
        errs.append(f"input_dtype: only float32 models are supported, got {dtype!r}")
    output, labels = _output(r, out_shape)
    if d.get("input", "raw") not in ("raw", "standardised"):
        errs.append(f"input: must be 'raw' (the graph standardises) or 'standardised' (the agent does), "
                    f"got {d.get('input')!r}")
    mean, std = r.floats("mean"), r.floats("std")
    if any(s <= 0 for s in std):
        errs.append(f"std: must be > 0, got {list(std)}")
    thr, rule = _threshold_and_rule(r, output, source)
    if errs:
        raise ModelError(f"{source}: " + "; ".join(errs))
    return Metadata(name=name, version=version, sha256=sha.lower(), input_shape=in_shape, input_dtype=dtype,
                    output_shape=out_shape, output=output, labels=tuple(labels), mean=mean, std=std,
                    threshold=thr, calibration=rule, raw=dict(d))
