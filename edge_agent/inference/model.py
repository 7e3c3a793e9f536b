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
  the anomaly score, the mean squared error between output and (standardised) input (:mod:`.numeric`).
* ``"score"``: the graph computes the anomaly score itself and outputs exactly one value (shape ``[1]``,
  ``[1, 1]``, ...); the agent reads that float. Runs under the config's ``output = "reconstruction"``
  (both mean "one anomaly score per window"), so a model of either kind can replace the other by
  hot-swap. ``tools/tflite_build.anomaly_graph`` turns a trained autoencoder into such a graph and also
  moves the standardisation into it; such a model takes raw readings and records ``"mean": [0]``,
  ``"std": [1]`` (the identity), which the agent then skips. This is the fast path: one
  copy of the window as cut into the input tensor, run, one float out.
* ``"scores"``: a classifier; one output per entry of ``labels``.

Layout of the input tensor: the window's rows in time order, each row holding one value per input
(row-major ``(window, inputs)``), reshaped to the model's input shape — ``[1, window*inputs]``,
``[1, window, inputs]`` or ``[1, window]`` are all accepted as long as the element count matches.

The model runs on an *engine* from :func:`.runtime.make_engine`: the LiteRT C API (:mod:`.litert_c`,
no numpy) or a Python wrapper's interpreter. Pre- and post-processing are plain Python
(:mod:`.numeric`), the same code for both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import ModelConfig
from edge_agent.errors import ModelError
from edge_agent.inference import numeric, runtime
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
        try:
            self.engine = runtime.make_engine(blob)
        except ModelError as e:
            raise ModelError(f"{where}: {e}") from None
        self._in_shape = self._check_tensors(where)
        n_in = len(cfg.inputs)
        self._check_config(where, n_in)
        self.mean, self.std = self._normalisation(where, n_in)
        self.inv_std = numeric.f32(1.0 / s for s in self.std)
        self.threshold = cfg.threshold if cfg.threshold > 0 else (self.meta.threshold or 0.0)
        # learned on the device (see .calibration) unless the config pins a threshold or turns it off
        self.rule = self.meta.calibration if cfg.threshold == 0 and cfg.calibrate else None
        self.labels = self.meta.labels
        self._window_shape = (cfg.window, n_in)
        self._n = cfg.window * n_in
        self._alarm_idx = [k for k, lab in enumerate(self.labels) if lab.lower() != "normal"]
        self.kind = self.meta.output  # "reconstruction", "score" or "scores"
        self.classifier = self.kind == "scores"
        # identity standardisation (preprocess "none", or a model standardising in its graph): raw values go in
        self.identity = all(m == 0.0 for m in self.mean) and all(s == 1.0 for s in self.std)
        self._score1 = self.engine.score
        # the engine's own score() when the raw window goes in and the score comes out (the fast path of
        # score(); the worker runs a whole run of windows through it back to back, Slot.run_direct); None
        # for every other model
        self.raw_score = self._score1 if self.kind == "score" and self.identity else None

    @property
    def interpreter(self) -> Any:
        """The Python wrapper's interpreter (None on the C API backend)."""
        return getattr(self.engine, "interpreter", None)

    def _check_tensors(self, where: str) -> tuple[int, ...]:
        """The engine's one input and one output tensor, checked against the metadata and the config."""
        cfg, meta = self.cfg, self.meta
        ins, outs = self.engine.inputs, self.engine.outputs
        if len(ins) != 1 or len(outs) != 1:
            raise ModelError(f"{where}: expected 1 input and 1 output tensor, model has {len(ins)} and {len(outs)}")
        in_shape, out_shape = ins[0].shape, outs[0].shape
        if ins[0].dtype != "float32" or outs[0].dtype != "float32":
            raise ModelError(f"{where}: only float32 tensors are supported, model has input "
                             f"{ins[0].dtype} and output {outs[0].dtype}")
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
        return in_shape

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

    def _normalisation(self, where: str, n_in: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std per input, as float32 values (one given for all inputs is repeated)."""
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
        m = tuple(mean) * n_in if len(mean) == 1 else tuple(mean)
        s = tuple(std) * n_in if len(std) == 1 else tuple(std)
        return numeric.f32(m), numeric.f32(s)

    def preprocess(self, values: Any) -> Any:
        """``values`` (``window * inputs`` values, row-major, any buffer or nested rows) standardised with the
        model's mean/std: a new flat float32 window (the raw values themselves for an identity)."""
        x = numeric.as_f32(values, self._n)
        return x if self.identity else numeric.standardise(x, self.mean, self.inv_std)

    def score(self, x: Any) -> float:
        """The anomaly score of one raw window (output kinds 'score' and 'reconstruction'); ``x`` is the
        window as cut (a flat float32 buffer of ``window * inputs`` values; numpy ``(1, n)`` on the
        wrapper backend) or any buffer/rows with those values, row-major.
        NonFiniteOutput if the model gives NaN/inf."""
        if self.raw_score is None:
            return self._score_graph(x) if self.kind == "score" else self._score_reconstruction(x)
        # output 'score', raw input: the window as cut goes in, one float comes out
        score = self._score1(x)
        if score - score:  # 0.0 for a finite score; NaN (truthy) for NaN or +-inf
            raise self.non_finite()
        return score

    def non_finite(self) -> NonFiniteOutput:
        return NonFiniteOutput(f"model {self.cfg.name!r} {self.version}: non-finite score")

    def _score_graph(self, x: Any) -> float:
        """Output kind 'score' on a model that wants standardised input."""
        score = self._score1(self.preprocess(x))
        if not math.isfinite(score):
            raise self.non_finite()
        return score

    def _score_reconstruction(self, x: Any) -> float:
        """Output kind 'reconstruction': MSE between the output and the standardised input."""
        z = self.preprocess(x)
        score = numeric.mse(self.engine.run(z), z)
        if not math.isfinite(score):
            raise NonFiniteOutput(f"model {self.cfg.name!r} {self.version}: non-finite reconstruction")
        return score

    def infer(self, values: Any) -> Result:
        """Preprocess, run, score one raw window (any buffer/rows with ``window * inputs`` values, row-major).
        NonFiniteOutput if the model gives NaN/inf."""
        if not self.classifier:
            return Result(self.score(values))
        y = [float(v) for v in self.engine.run(self.preprocess(values))]
        if not numeric.all_finite(y):
            raise NonFiniteOutput(f"model {self.cfg.name!r} {self.version}: non-finite class scores")
        scores = dict(zip(self.labels, y, strict=True))
        top = self.labels[y.index(max(y))]
        score = max((y[k] for k in self._alarm_idx), default=0.0)
        return Result(score, scores, top)

    def self_test(self, recent: Any = None) -> None:
        """Test invokes: a window at the mean (standardised zeros) and, if given, a recent real window."""
        probes: list[Any] = [self.mean * self.cfg.window]
        if recent is not None and numeric.all_finite(numeric.as_f32(recent)):
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
