"""A TFLite model with its metadata: load, check against the config, run one window.

Every model file ``X.tflite`` has a metadata file ``X.tflite.json`` beside it::

    {"name": "machine_temp_ae", "version": "1.0.0",
     "sha256": "<hex digest of the .tflite bytes>",
     "input_shape": [1, 32], "input_dtype": "float32", "output_shape": [1, 32],
     "output": "reconstruction",            # or "score", or "scores" (then "labels" names each output)
     "labels": [],
     "mean": [84.9], "std": [12.4],          # standardisation, one per input (or one for all)
     "threshold": 0.42,                      # default alarm threshold (the config may override)
     "window": 32, "inputs": 1,
     "input": "standardised",               # or "raw": the graph standardises itself (then the config's
                                            #   preprocess = "standardize" is refused: it would do it twice)
     "calibration": {"windows": 200, "quantile": 0.99, "margin": 3.0},  # optional: the threshold is
                                            #   learned on the device (see .calibration)
     "training": {...free-form provenance...}}

Why the metadata is checked so strictly: a model is a black box of float arrays. If its window length,
its number of inputs or its normalisation silently disagree with what the agent feeds it, it produces
plausible-looking but meaningless scores, and nobody notices. So loading refuses, with a message naming
the mismatch, any model whose tensors do not fit the config and its own metadata, whose bytes do not
match the recorded sha256, or whose test invoke is not finite.

Output kinds (``output``):

* ``"reconstruction"``: an autoencoder; the output has as many values as the input, and the agent computes
  the anomaly score, the mean squared error between output and (standardised) input, with numpy.
* ``"score"``: the graph computes the anomaly score itself and outputs exactly one value (shape ``[1]``,
  ``[1, 1]``, ...); the agent reads that float. Runs under the config's ``output = "reconstruction"``
  (both mean "one anomaly score per window"), so a model of either kind can replace the other by
  hot-swap. ``tools/tflite_build.anomaly_graph`` turns a trained autoencoder into such a graph and also
  moves the standardisation into it; such a model takes raw readings and records ``"mean": [0]``,
  ``"std": [1]`` (the identity), which the agent then skips. This is the fast path: one
  ``set_tensor`` of the window as cut, ``invoke``, one float out, no numpy call.
* ``"scores"``: a classifier; one output per entry of ``labels``.

Layout of the input tensor: the window's rows in time order, each row holding one value per input
(row-major ``(window, inputs)``), reshaped to the model's input shape — ``[1, window*inputs]``,
``[1, window, inputs]`` or ``[1, window]`` are all accepted as long as the element count matches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import ModelConfig
from edge_agent.errors import ModelError
from edge_agent.inference import runtime
from edge_agent.inference.metadata import OUTPUT_KINDS, Metadata, parse_metadata, sha256_hex

__all__ = ["BUILTIN_DIR", "BUILTIN_PREFIX", "CONFIG_OUTPUTS", "OUTPUT_KINDS", "Metadata", "Model",
           "NonFiniteOutput", "Result", "load", "metadata_path", "parse_metadata", "paths", "read_files",
           "sha256_hex"]
# the config's ``output`` says what a result means; which metadata kinds can deliver it
CONFIG_OUTPUTS = {"reconstruction": ("reconstruction", "score"), "scores": ("scores",)}
BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data" / "models"


class NonFiniteOutput(ModelError):
    """The model produced NaN or infinity for a finite input window."""


@dataclass(slots=True)
class Result:
    score: float
    labels: dict[str, float] | None = None
    top: str | None = None


class Model:
    """A loaded, checked model bound to one ``[[models]]`` config; run it from one thread at a time."""

    def __init__(self, cfg: ModelConfig, blob: bytes, meta: Metadata | Mapping[str, Any], source: str = "") -> None:
        self.cfg = cfg
        self.source = source or cfg.path
        self.meta = meta if isinstance(meta, Metadata) else parse_metadata(meta, f"{self.source}.json")
        where = f"model {cfg.name!r} ({self.source})"
        digest = sha256_hex(blob)
        if digest != self.meta.sha256:
            raise ModelError(f"{where}: sha256 mismatch: file is {digest}, metadata says {self.meta.sha256}")
        if self.meta.output not in CONFIG_OUTPUTS.get(cfg.output, (cfg.output,)):
            raise ModelError(f"{where}: metadata output is {self.meta.output!r} but the config says "
                             f"output = {cfg.output!r}")
        self.blob = blob
        self.sha256 = digest
        self.version = self.meta.version
        self.interpreter = runtime.make_interpreter(blob)
        i, o = self._check_tensors(where)
        n_in = len(cfg.inputs)
        self._check_config(where, n_in)
        self.mean, self.std = self._normalisation(where, n_in)
        self.inv_std = (1.0 / self.std).astype(np.float32)
        self.threshold = cfg.threshold if cfg.threshold > 0 else (self.meta.threshold or 0.0)
        # learned on the device (see .calibration) unless the config pins a threshold or turns it off
        self.rule = self.meta.calibration if cfg.threshold == 0 and cfg.calibrate else None
        self.labels = self.meta.labels
        self._in_index = i["index"]
        self._out_index = o["index"]
        self._in_shape = in_shape = tuple(int(x) for x in i["shape"])
        self._window_shape = (cfg.window, n_in)
        self._tensor_in = np.zeros(in_shape, dtype=np.float32)  # the standardised window, as set_tensor wants it
        self._rows = self._tensor_in.reshape(cfg.window, n_in)
        self._flat = self._tensor_in.reshape(-1)
        self._n = float(cfg.window * n_in)
        self._alarm_idx = [k for k, lab in enumerate(self.labels) if lab.lower() != "normal"]
        self.kind = self.meta.output  # "reconstruction", "score" or "scores"
        self.classifier = self.kind == "scores"
        self._scalar_norm: tuple[float, float] | None = None
        if bool(np.all(self.mean == self.mean[0])) and bool(np.all(self.inv_std == self.inv_std[0])):
            self._scalar_norm = (float(self.mean[0]), float(self.inv_std[0]))
        # identity standardisation (preprocess "none", or a model standardising in its graph): raw values go in
        self.identity = bool(np.all(self.mean == 0.0)) and bool(np.all(self.std == 1.0))
        self._direct = self.kind == "score" and self.identity  # the fast path of score()

    def _check_tensors(self, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The interpreter's one input and one output tensor, checked against the metadata and the config."""
        cfg, meta = self.cfg, self.meta
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise ModelError(f"{where}: expected 1 input and 1 output tensor, model has {len(ins)} and {len(outs)}")
        i, o = ins[0], outs[0]
        in_shape = tuple(int(x) for x in i["shape"])
        out_shape = tuple(int(x) for x in o["shape"])
        if np.dtype(i["dtype"]) != np.float32 or np.dtype(o["dtype"]) != np.float32:
            raise ModelError(f"{where}: only float32 tensors are supported, model has input "
                             f"{np.dtype(i['dtype'])} and output {np.dtype(o['dtype'])}")
        n_in = len(cfg.inputs)
        if n_in == 0:
            raise ModelError(f"{where}: the config lists no inputs (give inputs = [\"<sensor>\", ...])")
        want = cfg.window * n_in
        if in_shape != meta.input_shape:
            raise ModelError(f"{where}: input shape {list(in_shape)} does not match its metadata input_shape "
                             f"{list(meta.input_shape)}")
        if out_shape != meta.output_shape:
            raise ModelError(f"{where}: output shape {list(out_shape)} does not match its metadata "
                             f"output_shape {list(meta.output_shape)}")
        if in_shape[0] != 1 or math.prod(in_shape) != want:
            raise ModelError(f"{where}: input shape {list(in_shape)} does not fit the config: window {cfg.window} x "
                             f"{n_in} input(s) = {want} values per window, batch 1 (e.g. [1, {want}])")
        n_out = math.prod(out_shape)
        if meta.output == "reconstruction" and n_out != want:
            raise ModelError(f"{where}: output 'reconstruction' needs as many outputs as inputs ({want}), model has "
                             f"output shape {list(out_shape)}")
        if meta.output == "score" and n_out != 1:
            raise ModelError(f"{where}: output 'score' needs exactly one output value, model has output shape "
                             f"{list(out_shape)}")
        if cfg.output == "scores" and n_out != len(meta.labels):
            raise ModelError(f"{where}: output shape {list(out_shape)} does not match its {len(meta.labels)} "
                             f"labels")
        return i, o

    def _check_config(self, where: str, n_in: int) -> None:
        """The metadata's window, inputs and input kind against the config."""
        for key in ("window", "inputs"):
            v = self.meta.raw.get(key)
            expect = self.cfg.window if key == "window" else n_in
            if v is not None and v != expect:
                raise ModelError(f"{where}: metadata {key} is {v} but the config gives {expect}")
        if self.meta.raw.get("input") == "raw" and self.cfg.preprocess == "standardize":
            raise ModelError(f"{where}: the model takes raw readings (metadata input = 'raw': its graph "
                             f"standardises), so preprocess = 'standardize' would standardise twice; use "
                             f"preprocess = 'metadata' (the default) or 'none'")

    def _normalisation(self, where: str, n_in: int) -> tuple[np.ndarray, np.ndarray]:
        mode = self.cfg.preprocess
        if mode == "none":
            mean, std = (0.0,), (1.0,)
        elif mode == "standardize":
            mean, std = (self.cfg.mean,), (self.cfg.std,)
        else:
            mean, std = self.meta.mean, self.meta.std
            if not mean or not std:
                raise ModelError(f"{where}: preprocess = 'metadata' but the metadata has no mean/std")
        for label, v in (("mean", mean), ("std", std)):
            if len(v) not in (1, n_in):
                raise ModelError(f"{where}: metadata {label} has {len(v)} values, need 1 or {n_in} (one per input)")
        m = np.broadcast_to(np.asarray(mean, dtype=np.float32), (n_in,)).copy()
        s = np.broadcast_to(np.asarray(std, dtype=np.float32), (n_in,)).copy()
        return m, s

    def _as_input(self, values: np.ndarray) -> np.ndarray:
        """``values`` (any shape with ``window * inputs`` elements, row-major) as a float32 input tensor."""
        return np.ascontiguousarray(values, dtype=np.float32).reshape(self._in_shape)

    def preprocess(self, values: np.ndarray) -> np.ndarray:
        """Standardise ``values`` (window rows, any shape with ``window * inputs`` elements) into the model's
        input buffer (``_tensor_in``, shaped as the input tensor); return that buffer as (window, inputs) rows."""
        if self._scalar_norm is not None:  # one mean/std for all: scalar ufuncs avoid broadcasting setup
            m, k = self._scalar_norm
            if values.shape != self._in_shape:
                values = values.reshape(self._in_shape)
            np.subtract(values, m, out=self._tensor_in)
            np.multiply(self._tensor_in, k, out=self._tensor_in)
        else:
            np.subtract(values.reshape(self._window_shape), self.mean, out=self._rows)
            np.multiply(self._rows, self.inv_std, out=self._rows)
        return self._rows

    def invoke(self) -> np.ndarray:
        """set_tensor + invoke + get_tensor on the already preprocessed buffer."""
        it = self.interpreter
        it.set_tensor(self._in_index, self._tensor_in)
        it.invoke()
        return it.get_tensor(self._out_index)

    def score(self, x: np.ndarray) -> float:
        """The anomaly score of one raw window (output kinds 'score' and 'reconstruction'); ``x`` is the
        window as cut (``(1, window * inputs)``) or any array with those elements, row-major.
        NonFiniteOutput if the model gives NaN/inf."""
        if not self._direct:
            return self._score_graph(x) if self.kind == "score" else self._score_reconstruction(x)
        # output 'score', raw input: the window as cut goes in, one float comes out, no numpy call
        it = self.interpreter
        try:
            it.set_tensor(self._in_index, x)
        except ValueError:  # another shape (e.g. (window, inputs) rows) or dtype: convert, then retry
            it.set_tensor(self._in_index, self._as_input(x))
        it.invoke()
        score = it.get_tensor(self._out_index).item()
        if score - score:  # 0.0 for a finite score; NaN (truthy) for NaN or +-inf
            raise NonFiniteOutput(f"model {self.cfg.name!r} {self.version}: non-finite score")
        return score

    def _score_graph(self, x: np.ndarray) -> float:
        """Output kind 'score' on a model that wants standardised input."""
        self.preprocess(x)
        score = self.invoke().item()
        if not math.isfinite(score):
            raise NonFiniteOutput(f"model {self.cfg.name!r} {self.version}: non-finite score")
        return score

    def _score_reconstruction(self, x: np.ndarray) -> float:
        """Output kind 'reconstruction': MSE between the output and the standardised input, with numpy."""
        self.preprocess(x)
        d = self.invoke().reshape(-1) - self._flat
        score = float(np.dot(d, d)) / self._n
        if not math.isfinite(score):
            raise NonFiniteOutput(f"model {self.cfg.name!r} {self.version}: non-finite reconstruction")
        return score

    def infer(self, values: np.ndarray) -> Result:
        """Preprocess, run, score one raw window (any shape with ``window * inputs`` elements, row-major).
        NonFiniteOutput if the model gives NaN/inf."""
        if not self.classifier:
            return Result(self.score(values))
        self.preprocess(values)
        y = self.invoke().reshape(-1)
        if not np.isfinite(y).all():
            raise NonFiniteOutput(f"model {self.cfg.name!r} {self.version}: non-finite class scores")
        scores = {lab: float(v) for lab, v in zip(self.labels, y, strict=True)}
        top = self.labels[int(np.argmax(y))]
        score = max((float(y[k]) for k in self._alarm_idx), default=0.0)
        return Result(score, scores, top)

    def self_test(self, recent: np.ndarray | None = None) -> None:
        """Test invokes: a window at the mean (standardised zeros) and, if given, a recent real window."""
        probes = [np.broadcast_to(self.mean, self._window_shape).copy()]
        if recent is not None and np.isfinite(recent).all():
            probes.append(recent)
        for k, p in enumerate(probes):
            try:
                self.infer(p)
            except NonFiniteOutput as e:
                what = "a window at the mean" if k == 0 else "the latest real window"
                raise NonFiniteOutput(f"test invoke on {what} gave non-finite output: {e}") from None
            except ModelError:
                raise
            except Exception as e:
                raise ModelError(f"model {self.cfg.name!r}: test invoke failed: {type(e).__name__}: {e}") from None

    def set_calibration(self, threshold: float) -> None:
        """Use a threshold learned on the device from now on (the input scale is applied by the service's
        tap, before the ring: see InferenceService)."""
        if not (math.isfinite(threshold) and threshold > 0):
            raise ModelError(f"model {self.cfg.name!r}: a calibrated threshold must be positive and finite, "
                             f"got {threshold!r}")
        self.threshold = threshold

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "source": self.source,
                "threshold": self.threshold, "bytes": len(self.blob)}


# ---------------------------------------------------------------------------- files

def metadata_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def paths(cfg: ModelConfig, state_dir: Path) -> tuple[Path, Path]:
    """(where to load from, where installs write).

    A plain path is both: an installed model replaces it in place, the previous one kept as
    ``<path>.prev``. ``builtin:<name>`` is a model shipped in the package (read-only): installs go to
    ``<state dir>/models/<model name>.tflite``, which is then preferred at the next start.
    """
    if cfg.path.startswith(BUILTIN_PREFIX):
        target = state_dir / "models" / f"{cfg.name}.tflite"
        builtin = BUILTIN_DIR / f"{cfg.path[len(BUILTIN_PREFIX):]}.tflite"
        return (target if target.exists() else builtin), target
    p = Path(cfg.path).expanduser()
    return p, p


def read_files(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The model bytes and its decoded metadata; ModelError naming the file on any problem."""
    mp = metadata_path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read model {path}: {e.strerror or e}") from None
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"metadata file missing: {mp} (every model needs one beside it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read metadata {mp}: {e}") from None
    return blob, meta


def load(cfg: ModelConfig, path: Path) -> Model:
    blob, meta = read_files(path)
    return Model(cfg, blob, parse_metadata(meta, str(metadata_path(path))), str(path))
