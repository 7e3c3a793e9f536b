"""One configured model's state in the inference service (ring, worker handshake, counters, alarm and
calibration state), and the small pure helpers the service uses on it."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

from edge_agent.config import ModelConfig
from edge_agent.inference.calibration import Calibration, Calibrator
from edge_agent.inference.model import Model, paths
from edge_agent.inference.numeric import copy_f32
from edge_agent.inference.window import RowAssembler, Windower


class Slot:
    """Everything about one configured model; ``lock`` guards the ring's writer side, the worker's
    sleep/wake handshake (``waiting``) and the swap."""

    def __init__(self, cfg: ModelConfig, state_dir: Path) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.alarm_name = cfg.alarm or f"{cfg.name}_anomaly"
        self.stream = f"inference/{cfg.name}"
        self.load_path, self.install_path = paths(cfg, state_dir)
        self.calib = Calibrator(state_dir / "models" / f"{cfg.name}.calibration.json", cfg.warmup_windows,
                                cfg.warmup_seconds)
        n = max(1, len(cfg.inputs))  # no inputs: the model refuses to load with a clear error
        self.windower = Windower(cfg.window, cfg.hop or cfg.window, n, keep=cfg.queue)
        self.rows = RowAssembler(n)
        self.next = 0  # the next window the worker runs (only the worker writes it)
        self.waiting = False  # the worker sleeps on cond: the tap wakes it when a window is due
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.swap_lock = threading.Lock()  # serialises install/rollback (file operations)
        self.active: Model | None = None
        self.previous: Model | None = None
        self.error = ""
        self.thread: threading.Thread | None = None
        self.busy = False
        # counters
        self.run = 0
        self.skipped = 0
        self.errors = 0
        self.bad_input = 0
        self.alarms = 0
        self.failures_since_install = 0
        self.on_probation = False
        self.last_score: float | None = None
        self.last_seq: list[int] | None = None
        self.above = 0
        self.below = 0
        self.in_alarm = False
        # calibration: the tap multiplies every reading by `scale` (the learned input scale) under `lock`.
        # Rows before row `boundary` were pushed with the previous scale: windows before `from_k` hold some
        # and the worker rescales those rows by `ratio` (new / previous scale) in a copy before running
        # them, so every window is scored at the current scale whatever the worker's lag.
        # `calibrating`: a warm-up is running; its results are marked and alarm nothing.
        self.scale = 1.0
        self.ratio = 1.0
        self.boundary = 0
        self.from_k = 0
        self.calibrating = False

    def reset_alarm(self) -> None:
        """Forget the alarm state (a new model, a new warm-up): the debounce starts again."""
        self.above = self.below = 0
        self.in_alarm = False

    def set_scale(self, scale: float) -> None:
        """The tap multiplies readings by ``scale`` from now on. The caller holds ``lock``, as the tap does,
        so the row count read here is exactly where the new scale starts; windows due before that point
        are rescaled by the worker (:meth:`rescaled`). (If the scale changes twice while the worker still
        lags behind the first change, the windows before the first change get only the second ratio.)"""
        if scale != self.scale:
            w = self.windower
            self.ratio = scale / self.scale
            self.scale = scale
            self.boundary = w.rows
            self.from_k = -(-w.rows // w.hop)  # window k starts at row k * hop: the first one wholly after
        self.calibrating = self.calib.busy

    def rescaled(self, k: int, x: Any) -> Any:
        """A copy of window ``k`` (flat float32) with its rows from before the scale change multiplied by
        ``ratio``."""
        w = self.windower
        old = min(self.boundary - k * w.hop, w.window)
        if old <= 0:
            return x
        y = copy_f32(x)
        r = self.ratio
        for i in range(old * w.n_inputs):
            y[i] *= r
        return y

    def run_direct(self, model: Model, end: int, done: list[Any]) -> bool:
        """Windows ``next`` .. ``end - 1`` of a model with a ``raw_score`` (the raw window in, the score out):
        every window read from the ring first, then the invokes back to back, then each result checked
        (:meth:`Windower.intact` only grows stricter, so checking after the run is safe). On a model of a few
        MB an invoke evicts the caches: Python's own data read between two invokes cost ~3 us a window in
        misses (``bench/inference.py``), so nothing else runs between them. A non-finite score ends the run
        at its window (the windows after it run again once the failure is handled). False, with nothing
        counted or consumed, when an invoke raised: the caller runs the windows one at a time."""
        windower, start = self.windower, self.next
        wins = [windower.get(k) for k in range(start, end)]
        try:
            scores = iter(list(map(model.raw_score, [w[0] for w in wins if w is not None and not w[6]])))
        except Exception:
            return False
        for k, w in enumerate(wins, start):
            if w is None:  # lapped by the writer: not run, counted
                self.skipped += 1
                continue
            if w[6]:  # holds a NaN (bad input): not run, counted
                self.bad_input += 1
                continue
            score = next(scores)
            if not windower.intact(k):  # the ring moved on while the model read it: says nothing
                self.skipped += 1
            elif score - score:  # NaN (truthy) for NaN and +-inf
                done.append((w, None, model.non_finite(), None))
                self.next = k + 1
                return True
            else:
                done.append((w, score, None, None))
        self.next = end
        return True


def describe_slot(slot: Slot, runtime_name: str) -> dict[str, Any]:
    """One model's state, counters and calibration (``model.list``, ``status``)."""
    m, p = slot.active, slot.previous
    d: dict[str, Any] = {
        "name": slot.name, "state": "running" if m is not None else "not loaded",
        "version": m.version if m else None, "sha256": m.sha256 if m else None,
        "previous": p.version if p else None, "path": str(slot.load_path), "runtime": runtime_name,
        "inputs": list(slot.cfg.inputs), "window": slot.cfg.window, "hop": slot.windower.hop,
        "threshold": m.threshold if m else None, "windows_cut": slot.windower.cut, "windows_run": slot.run,
        "windows_skipped": slot.skipped, "bad_input": slot.bad_input, "errors": slot.errors,
        "alarms": slot.alarms, "last_score": None if slot.last_score is None else round6(slot.last_score),
        "last_seq": slot.last_seq,
    }
    cal = slot.calib
    if cal.busy:
        d["calibration"] = {"state": "warming up", "windows": len(cal.warmup.kept) if cal.warmup else 0}
    elif cal.current is not None:
        d["calibration"] = {"state": "calibrated", "input_scale": cal.current.input_scale,
                            "windows": cal.current.windows, "at": cal.current.at}
    if slot.error:
        d["error"] = slot.error
    return d


def debounce(slot: Slot, above: bool) -> bool:
    """Update the slot's alarm state with one window; True when an alarm is to be raised now."""
    if above:
        slot.above += 1
        slot.below = 0
        if not slot.in_alarm and slot.above >= slot.cfg.alarm_after:
            slot.in_alarm = True
            return True
        return False
    slot.above = 0
    if slot.in_alarm:
        slot.below += 1
        if slot.below >= slot.cfg.rearm:
            slot.in_alarm = False
            slot.below = 0
    return False


def calibration_event(name: str, model: Model, cal: Calibration) -> dict[str, Any]:
    return {"model": name, "version": model.version, "threshold": cal.threshold, "input_scale": cal.input_scale,
            "windows": cal.windows, "quantile": cal.quantile, "margin": cal.margin,
            "score_quantile": round6(cal.score_quantile), "sha256": model.sha256}


def round6(v: float) -> float:
    return float(f"{v:.6g}") if math.isfinite(v) else v


def meta_bytes(raw: Any) -> bytes:
    return (json.dumps(dict(raw), indent=1, sort_keys=True) + "\n").encode()


