"""On-device calibration: a model's threshold (and input scale) learned from this sensor's own data.

A model declares in its metadata that its threshold is learned on the device::

    "calibration": {"windows": 200,          # default warm-up length, in windows
                    "quantile": 0.99,        # threshold = margin x this quantile of the warm-up scores
                    "margin": 3.0,
                    "scale": "window_std",   # optional: also learn the input scale (see below)
                    "scale_reference": 1.6}  # the statistic on the training data

During the warm-up (``warmup_windows`` or ``warmup_seconds`` of reading time in the config, else the
metadata's ``windows``) the service keeps a copy of every window it runs (``window x inputs`` float32
each, an ``array('f')``: 200 windows of 32 are 42 KB) and publishes its results marked ``"calibrating": true``, never an
alarm. At the end:

1. ``scale = "window_std"``: the device's statistic is the median over the warm-up windows of each
   window's standard deviation; the input scale is ``scale_reference / device statistic``, so the model
   sees windows with the spread it was trained on. Only for models that centre each window themselves
   (the shipped autoencoder does): raw readings are multiplied by the scale, their level is irrelevant.
   A warm-up of perfectly flat windows (statistic 0) keeps scale 1.
2. Every stored window is scored again with that scale, and the threshold is
   ``margin x quantile(scores)`` (at least a tiny positive floor, so a perfectly flat warm-up does not
   give threshold 0 = "never").

The result is persisted (``<state dir>/models/<model>.calibration.json``, with the model's sha256: a
different model file starts a new warm-up), published as ``events/model_calibrated`` and in every later
``inference/<model>`` result (``threshold``), and re-run with the ``model.calibrate`` command. A
``threshold > 0`` in the config pins the threshold: no calibration.
"""

from __future__ import annotations

import json
import math
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import ModelError
from edge_agent.inference import numeric

SCALES = ("", "window_std")
MAX_WINDOWS = 100_000  # a duration-based warm-up keeps at most this many windows
THRESHOLD_FLOOR = 1e-9


@dataclass(frozen=True)
class Rule:
    """A model's calibration rule, from its metadata's ``calibration`` block."""

    windows: int
    quantile: float
    margin: float
    scale: str = ""
    scale_reference: float = 0.0


def parse_rule(d: Any, source: str) -> Rule:
    """Validate a metadata ``calibration`` block; ModelError naming every bad key."""
    if not isinstance(d, Mapping):
        raise ModelError(f"{source}: calibration: must be an object, got {type(d).__name__}")
    errs: list[str] = []

    def num(key: str, lo: float, hi: float, default: float | None = None) -> float:
        v = d.get(key, default)
        if not isinstance(v, int | float) or isinstance(v, bool) or not (lo <= v <= hi) or not math.isfinite(v):
            errs.append(f"calibration.{key}: must be a number in [{lo:g}, {hi:g}], got {v!r}")
            return lo
        return float(v)

    windows = d.get("windows")
    if not isinstance(windows, int) or isinstance(windows, bool) or not 2 <= windows <= MAX_WINDOWS:
        errs.append(f"calibration.windows: must be an integer in [2, {MAX_WINDOWS}], got {windows!r}")
        windows = 2
    quantile = num("quantile", 0.5, 1.0)
    margin = num("margin", 1.0, 1000.0)
    scale = d.get("scale", "")
    if scale not in SCALES:
        errs.append(f"calibration.scale: must be one of {SCALES!r}, got {scale!r}")
    ref = num("scale_reference", 1e-12, 1e12) if scale else 0.0
    unknown = set(d) - {"windows", "quantile", "margin", "scale", "scale_reference"}
    if unknown:
        errs.append(f"calibration: unknown key(s) {sorted(unknown)}")
    if errs:
        raise ModelError(f"{source}: " + "; ".join(errs))
    return Rule(windows=windows, quantile=quantile, margin=margin, scale=scale, scale_reference=ref)


@dataclass(frozen=True)
class Calibration:
    """A learned threshold and input scale, for one model file (``sha256``)."""

    threshold: float
    input_scale: float
    windows: int
    quantile: float
    margin: float
    score_quantile: float
    sha256: str
    at: float  # wall-clock time it was learned

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def read(cls, path: Path) -> Calibration | None:
        """The calibration stored at ``path``, or None if there is none or it is unreadable (then the
        caller re-calibrates: a corrupt file must not pin a wrong threshold)."""
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            c = cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not (math.isfinite(c.threshold) and c.threshold > 0 and math.isfinite(c.input_scale)
                and c.input_scale > 0):
            return None
        return c


class Warmup:
    """Collects one model's warm-up windows; :meth:`finish` turns them into a :class:`Calibration`.

    Used by the model's worker thread only. The windows must be raw readings (input scale 1): the
    scale is learned from them. ``windows`` = how many to collect; ``seconds`` > 0 ends the
    warm-up instead once the windows span that much reading time (``windows`` is then only a cap)."""

    def __init__(self, rule: Rule, windows: int = 0, seconds: float = 0.0) -> None:
        self.rule = rule
        self.seconds = seconds
        self.target = windows or (MAX_WINDOWS if seconds > 0 else rule.windows)
        self.kept: list[Any] = []  # flat float32 windows (array('f'))
        self.first_ts: float | None = None

    def add(self, x: Any, ts: float) -> bool:
        """Keep window ``x`` (a copy the caller owns, ending at reading time ``ts``); True when the warm-up is
        complete."""
        self.kept.append(x if isinstance(x, array) and x.typecode == "f" else numeric.copy_f32(x))
        if self.first_ts is None:
            self.first_ts = ts
        if self.seconds > 0 and ts - self.first_ts >= self.seconds:
            return True
        return len(self.kept) >= self.target

    def finish(self, score: Callable[[Any], float], sha256: str) -> Calibration:
        """The calibration from the kept windows; ``score(x)`` scores one raw window (already scaled)."""
        if len(self.kept) < 2:
            raise ModelError(f"calibration needs at least 2 warm-up windows, got {len(self.kept)}")
        x, self.kept = self.kept, []
        scale = 1.0
        if self.rule.scale == "window_std":
            spread = numeric.median([numeric.pstdev(w) for w in x])
            if spread > 0 and math.isfinite(spread):
                scale = float(f"{self.rule.scale_reference / spread:.6g}")
        if scale != 1.0:  # float32 x float32 is exact in float64: rounding the product = numpy's float32 multiply
            k = numeric.f32([scale])[0]
            x = [array("f", [v * k for v in w]) for w in x]
        scores = [score(w) for w in x]
        q = numeric.quantile(scores, self.rule.quantile)
        thr = max(self.rule.margin * q, THRESHOLD_FLOOR)
        return Calibration(threshold=float(f"{thr:.6g}"), input_scale=scale, windows=len(x),
                           quantile=self.rule.quantile, margin=self.rule.margin, score_quantile=q,
                           sha256=sha256, at=time.time())


class Calibrator:
    """One model slot's calibration state: the stored calibration, or a warm-up in progress.

    :meth:`attach` (whenever a model becomes active) applies the stored calibration of that very model
    file or starts a warm-up; :meth:`add` is called by the worker for each window while :attr:`busy`;
    :meth:`request` (the ``model.calibrate`` command, any thread) asks the worker to start over.
    Nothing is read or written before :meth:`attach`/:meth:`add`.
    """

    def __init__(self, path: Path, windows: int = 0, seconds: float = 0.0) -> None:
        self.path = path
        self.windows = windows
        self.seconds = seconds
        self.current: Calibration | None = None
        self.warmup: Warmup | None = None
        self.busy = False  # a warm-up is running or requested: the worker's one check per window
        self._restart = False

    def attach(self, model: Any) -> Calibration | None:
        """Model ``model`` is now active: apply its stored calibration (returned), or start a warm-up if it
        calibrates, or do nothing if it does not."""
        self.current, self.warmup, self._restart = None, None, False
        if model.rule is None:
            self.busy = False
            return None
        stored = Calibration.read(self.path)
        if stored is not None and stored.sha256 == model.sha256:
            model.set_calibration(stored.threshold)
            self.current = stored
            self.busy = False
            return stored
        self._start(model)
        return None

    def request(self, model: Any) -> None:
        """Start a new warm-up at the next window (the worker does it); ModelError if it cannot calibrate."""
        if model is None or model.rule is None:
            why = "no model loaded" if model is None else (
                "its threshold is pinned in the config" if model.cfg.threshold > 0 else
                "calibrate = false in the config" if not model.cfg.calibrate else
                "its metadata has no calibration rule")
            raise ModelError(f"model cannot be calibrated: {why}")
        self._restart = True
        self.busy = True

    def _start(self, model: Any) -> None:
        self.warmup = Warmup(model.rule, self.windows, self.seconds)
        self.busy = True

    def add(self, model: Any, window: Any, ts: float) -> Calibration | None:
        """Worker thread: keep ``window`` (a copy the caller owns); the new Calibration when this completes
        the warm-up (applied to ``model`` and written to :attr:`path`), else None."""
        if self._restart:
            self._restart = False
            self._start(model)
        w = self.warmup
        if w is None or model.rule is None:
            self.busy = False
            return None
        if not w.add(window, ts):
            return None
        try:
            cal = w.finish(model.score, model.sha256)
            model.set_calibration(cal.threshold)
        except ModelError:
            self._start(model)  # e.g. a non-finite score: try again on fresh windows
            raise
        from edge_agent.fsutil import atomic_write

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, cal.to_json())
        self.current, self.warmup, self.busy = cal, None, False
        return cal
