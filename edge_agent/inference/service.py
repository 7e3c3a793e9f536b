"""The inference service: a pipeline tap, one worker thread per model, hot-swap with rollback.

Off the sampling path. The tap runs on the sensor's thread for every stored reading, so it only does
O(1) work and allocates nothing: look up which models want this sensor, append a row to their ring
buffer (:mod:`.window`) and, only if that model's worker is asleep and a window became due, wake it.
The model runs on its own worker thread, which reads every due window straight out of the ring (no
copy, no per-window queue entry) and runs the ones that piled up while it was busy in one go, without
taking the lock per window. If the worker falls more than ``queue`` windows behind, the *oldest* due
windows are skipped and counted (fresh data matters more than old data for real-time decisions); the
ring has a fixed size, so nothing queues without bound, and sampling never waits for inference.

Results. Each window gives one message on ``inference/<model>`` (class "inference")::

    {"model": "anomaly", "version": "1.0.0", "score": 0.12, "threshold": 0.5, "alarm": false,
     "seq": [first_seq, last_seq], "ts": [first_ts, last_ts], "window": 17}

(``"labels": {label: score}, "top": label`` as well for classifier models.) When the score stays at or
above the threshold for ``alarm_after`` windows, one alarm goes to ``events/<alarm>`` (class "alarm",
the highest priority, last to be evicted). It re-arms after ``rearm`` windows below the threshold, so a
long anomaly is one alarm, not hundreds.

Hot-swap. :meth:`InferenceService.install` validates a new model completely (metadata, sha256, shapes
against the config, a test invoke on a window at the mean and on the latest real window) on the caller's
thread, writes it to disk (the previous files kept as ``<path>.prev``), then swaps one reference under
a lock: the worker picks the model once per window, so the switch happens between windows and no
window or sample is lost. A model that then fails at run time (raises, or gives NaN/inf)
``max_failures`` times is rolled back automatically; :meth:`rollback` does the same on request. A model
that fails validation never replaces the running one.

Where no TFLite runtime exists, the service logs one clear line, publishes ``events/inference_unavailable``
and stays idle; the rest of the agent runs normally.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.config import ModelConfig
from edge_agent.errors import ModelError
from edge_agent.fsutil import atomic_write
from edge_agent.host import Host, PipelineView
from edge_agent.inference import runtime
from edge_agent.inference.model import Model, metadata_path, parse_metadata, paths
from edge_agent.inference.window import RowAssembler, Window, Windower, as_float
from edge_agent.sensors.base import Reading

log = logging.getLogger("edge_agent.inference")

ERROR_EVENT_EVERY = 100  # after the first, publish every N-th run-time error as an event


class _Slot:
    """Everything about one configured model; ``lock`` guards the ring's writer side, the worker's
    sleep/wake handshake (``waiting``) and the swap."""

    def __init__(self, cfg: ModelConfig, state_dir: Path) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.alarm_name = cfg.alarm or f"{cfg.name}_anomaly"
        self.stream = f"inference/{cfg.name}"
        self.load_path, self.install_path = paths(cfg, state_dir)
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


class InferenceService:
    name = "inference"

    def __init__(self, models: list[ModelConfig], pipeline: Any, state_dir: str | os.PathLike[str]) -> None:
        self.pipeline = pipeline
        self.state_dir = Path(state_dir)
        self.slots: dict[str, _Slot] = {m.name: _Slot(m, self.state_dir) for m in models}
        self._by_sensor: dict[str, list[tuple[_Slot, int]]] = {}
        for slot in self.slots.values():
            for col, sensor in enumerate(slot.cfg.inputs):
                self._by_sensor.setdefault(sensor, []).append((slot, col))
        self._stopping = False
        self._tapped = False
        self.unavailable = ""

    @classmethod
    def from_host(cls, host: Host) -> InferenceService:
        """As the agent builds it: the configured models, readings through a host tap, results and events
        through the host's outbox, installed models under its state dir."""
        return cls(list(host.config.models), PipelineView(host), host.state_dir)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.unavailable = runtime.unavailable_reason()
        if self.unavailable:
            names = ", ".join(self.slots)
            log.error("inference: models not loaded (%s): %s", names, self.unavailable)
            self._event("inference_unavailable", {"models": list(self.slots), "reason": self.unavailable})
            for slot in self.slots.values():
                slot.error = self.unavailable
            return
        for slot in self.slots.values():
            self._load_at_start(slot)
            slot.thread = threading.Thread(target=self._worker, args=(slot,), name=f"inference-{slot.name}",
                                           daemon=True)
            slot.thread.start()
        if not self._tapped:
            self.pipeline.taps.append(self.tap)
            self._tapped = True

    def _load_at_start(self, slot: _Slot) -> None:
        from edge_agent.inference import model as model_mod

        tried: list[str] = []
        candidates = [slot.load_path]
        prev = slot.install_path.with_name(slot.install_path.name + ".prev")
        if prev.exists():
            candidates.append(prev)  # an interrupted install or a corrupted file: fall back loudly
        if slot.cfg.path.startswith(model_mod.BUILTIN_PREFIX):
            shipped = model_mod.BUILTIN_DIR / f"{slot.cfg.path[len(model_mod.BUILTIN_PREFIX):]}.tflite"
            if shipped not in candidates:
                candidates.append(shipped)  # a broken installed copy: the shipped model beats none
        for path in candidates:
            try:
                slot.active = model_mod.load(slot.cfg, path)
            except ModelError as e:
                tried.append(str(e))
                continue
            slot.error = ""
            slot.load_path = path
            if tried:
                log.error("inference: model %s: %s; running %s instead", slot.name, "; ".join(tried), path)
            log.info("inference: model %s %s loaded from %s (%s, window %d, hop %d, threshold %g)", slot.name,
                     slot.active.version, path, runtime.runtime_name(), slot.cfg.window,
                     slot.windower.hop, slot.active.threshold)
            return
        slot.error = "; ".join(tried)
        log.error("inference: model %s not loaded: %s", slot.name, slot.error)
        self._event("model_error", {"model": slot.name, "error": slot.error})

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking readings, let each worker finish the windows already queued, then join."""
        if self._tapped:
            try:
                self.pipeline.taps.remove(self.tap)
            except ValueError:
                pass
            self._tapped = False
        self._stopping = True
        for slot in self.slots.values():
            with slot.cond:
                slot.cond.notify_all()
        deadline = time.monotonic() + timeout
        for slot in self.slots.values():
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline - time.monotonic()))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once every queued window has been processed (tests, replay evaluation)."""
        deadline = time.monotonic() + timeout
        for slot in self.slots.values():
            with slot.cond:
                while slot.next < slot.windower.cut or slot.busy:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    slot.cond.wait(min(left, 0.1))
        return True

    # ------------------------------------------------------------------ the tap (sensor threads)
    def tap(self, reading: Reading, seq: int) -> None:
        targets = self._by_sensor.get(reading.sensor)
        if not targets:
            return
        for slot, col in targets:
            value = as_float(reading.data.get(slot.cfg.field))
            with slot.lock:
                rows = slot.rows
                if rows.n == 1:
                    due = slot.windower.push(value, seq, seq, reading.ts)
                elif rows.put(col, value, seq):
                    due = slot.windower.push(rows.values, int(rows.seqs.min()), seq, reading.ts)
                else:
                    continue
                if due and slot.waiting:  # a busy worker finds the new window itself: no wake-up
                    slot.waiting = False
                    slot.cond.notify()

    # ------------------------------------------------------------------ worker
    def _worker(self, slot: _Slot) -> None:
        windower = slot.windower
        keep = slot.cfg.queue
        while True:
            with slot.cond:
                while slot.next >= windower.cut and not self._stopping:
                    slot.waiting = True
                    slot.cond.wait()
                slot.waiting = False
                cut = windower.cut
                if slot.next >= cut:  # stopping, and every due window has been run
                    return
                slot.busy = True
            start = slot.next
            if cut - start > keep:  # more than `queue` windows behind: the oldest are skipped, and counted
                slot.skipped += cut - keep - start
                start = cut - keep
            try:
                for k in range(start, cut):  # without the lock: the windows are read lock-free (Windower.get)
                    try:
                        # the model is picked once per window, so a hot-swap lands between windows
                        self._run_one(slot, slot.active, k)
                    except Exception:  # never let one window kill the worker
                        log.exception("inference: model %s: unexpected error", slot.name)
            finally:
                slot.next = cut
                with slot.cond:
                    slot.busy = False
                    slot.cond.notify_all()

    def _run_one(self, slot: _Slot, model: Model | None, k: int) -> None:
        w = slot.windower.get(k)
        if w is None or model is None:  # lapped by the writer, or no model loaded: dropped, and counted
            slot.skipped += 1
            return
        x, first_seq, last_seq, first_ts, last_ts, index, bad, _ = w  # one unpack of the window tuple
        if bad:  # NaN in, NaN out would be the input's fault, not the model's (and could roll it back)
            slot.bad_input += 1
            return
        labels: dict[str, float] | None = None
        top: str | None = None
        failed: Exception | None = None
        score = 0.0
        try:
            if model.classifier:
                res = model.infer(x)
                score, labels, top = res.score, res.labels, res.top
            else:  # an anomaly score: straight to a float, no Result object
                score = model.score(x)
        except Exception as e:
            failed = e
        if not slot.windower.intact(k):  # the ring moved on while the model read it: neither the result
            slot.skipped += 1            # nor a failure says anything about the model
            return
        if failed is not None:
            self._failure(slot, model, w, failed)
            return
        slot.run += 1
        slot.last_score = score
        seq = [first_seq, last_seq]
        slot.last_seq = seq
        thr = model.threshold
        above = thr > 0 and score >= thr
        raise_alarm = False
        if above:
            slot.above += 1
            slot.below = 0
            if not slot.in_alarm and slot.above >= slot.cfg.alarm_after:
                slot.in_alarm = True
                raise_alarm = True
        else:
            slot.above = 0
            if slot.in_alarm:
                slot.below += 1
                if slot.below >= slot.cfg.rearm:
                    slot.in_alarm = False
                    slot.below = 0
        # the score as the model gave it (a float32's value): rounding it for looks cost 0.4 us a window
        data: dict[str, Any] = {"model": slot.name, "version": model.version, "score": score,
                                "threshold": thr, "alarm": above, "seq": seq, "ts": [first_ts, last_ts],
                                "window": index}
        if labels is not None:
            data["labels"] = {lab: _round(v) for lab, v in labels.items()}
            data["top"] = top
        self.pipeline.publish(slot.stream, data, cls="inference", ts=last_ts)
        if raise_alarm:
            slot.alarms += 1
            alarm = {k: data[k] for k in ("model", "version", "score", "threshold", "seq", "ts")}
            if top is not None:
                alarm["top"] = top
            log.warning("inference: alarm %s: model %s score %.4g >= %g (seq %d-%d)", slot.alarm_name, slot.name,
                        score, thr, first_seq, last_seq)
            self.pipeline.publish(f"events/{slot.alarm_name}", alarm, cls="alarm", ts=last_ts)

    def _failure(self, slot: _Slot, model: Model, w: Window, err: Exception) -> None:
        slot.errors += 1
        what = f"{type(err).__name__}: {err}"
        if slot.errors == 1 or slot.errors % ERROR_EVENT_EVERY == 0:
            log.warning("inference: model %s %s failed on window %d (%d errors): %s", slot.name, model.version,
                        w.index, slot.errors, what)
            self._event("inference_error", {"model": slot.name, "version": model.version, "error": what,
                                            "errors": slot.errors, "seq": [w.first_seq, w.last_seq]})
        if slot.active is not model or not slot.on_probation:
            return
        slot.failures_since_install += 1
        if slot.failures_since_install >= slot.cfg.max_failures and slot.previous is not None:
            try:
                self.rollback(slot.name, reason=f"{slot.failures_since_install} run-time failures, last: {what}")
            except ModelError as e:
                log.error("inference: automatic rollback of %s failed: %s", slot.name, e)

    # ------------------------------------------------------------------ hot-swap API (command channel)
    def _slot(self, name: str) -> _Slot:
        slot = self.slots.get(name)
        if slot is None:
            raise ModelError(f"no model named {name!r} (configured: {', '.join(self.slots) or 'none'})")
        return slot

    def install(self, name: str, tflite: bytes, metadata: dict[str, Any]) -> dict[str, Any]:
        """Validate and hot-swap a new model for ``name``; ModelError (nothing changed) if it is bad."""
        slot = self._slot(name)
        if self.unavailable:
            raise ModelError(f"cannot install model {name!r}: {self.unavailable}")
        with slot.swap_lock:
            meta = parse_metadata(metadata, f"model {name!r} metadata")
            new = Model(slot.cfg, bytes(tflite), meta, str(slot.install_path))
            with slot.lock:
                recent = slot.windower.latest()
            new.self_test(recent)
            self._write_files(slot, new)
            with slot.cond:
                old = slot.active
                slot.previous = old
                slot.active = new
                slot.on_probation = old is not None
                slot.failures_since_install = 0
                slot.error = ""
                slot.above = slot.below = 0
                slot.in_alarm = False
        old_v = old.version if old is not None else None
        log.info("inference: model %s %s installed (was %s), sha256 %s", name, new.version, old_v, new.sha256[:16])
        self._event("model_installed", {"model": name, "version": new.version, "previous": old_v,
                                        "sha256": new.sha256})
        return self._describe(slot)

    def _write_files(self, slot: _Slot, new: Model) -> None:
        """New files in place (atomic renames), the running model's files kept as ``.prev``.

        Order matters for a crash at any point: the ``.prev`` copy is complete before the live file
        changes, and the loader falls back to ``.prev`` if the live pair does not validate.
        """
        path = slot.install_path
        path.parent.mkdir(parents=True, exist_ok=True)
        prev = path.with_name(path.name + ".prev")
        cur = slot.active
        if cur is not None:
            atomic_write(prev, cur.blob)
            atomic_write(metadata_path(prev), _meta_bytes(cur.meta.raw))
        atomic_write(metadata_path(path), _meta_bytes(new.meta.raw))
        atomic_write(path, new.blob)
        slot.load_path = path

    def rollback(self, name: str, reason: str = "requested") -> dict[str, Any]:
        """Restore the previous model (in memory and on disk); ModelError if there is none."""
        slot = self._slot(name)
        with slot.swap_lock:
            with slot.cond:
                prev, bad = slot.previous, slot.active
            if prev is None:
                raise ModelError(f"model {name!r}: no previous model to roll back to")
            path = slot.install_path
            prev_path = path.with_name(path.name + ".prev")
            if bad is not None:  # kept for a post-mortem, never loaded again automatically
                atomic_write(path.with_name(path.name + ".rolledback"), bad.blob)
                atomic_write(metadata_path(path.with_name(path.name + ".rolledback")), _meta_bytes(bad.meta.raw))
            atomic_write(metadata_path(path), _meta_bytes(prev.meta.raw))
            atomic_write(path, prev.blob)
            for p in (prev_path, metadata_path(prev_path)):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
            with slot.cond:
                slot.active = prev
                slot.previous = None
                slot.on_probation = False
                slot.failures_since_install = 0
                slot.above = slot.below = 0
                slot.in_alarm = False
        bad_v = bad.version if bad is not None else None
        log.warning("inference: model %s rolled back from %s to %s: %s", name, bad_v, prev.version, reason)
        self._event("model_rollback", {"model": name, "from": bad_v, "to": prev.version, "reason": reason})
        return self._describe(slot)

    def describe(self) -> list[dict[str, Any]]:
        return [self._describe(s) for s in self.slots.values()]

    def register_commands(self, registry: Any) -> None:
        """``model.list`` (read-only) and ``model.rollback``; ``model.update`` lives in the command builtins."""
        from edge_agent.commands.schema import Arg
        from edge_agent.errors import CommandError

        def model_list(ctx: Any) -> list[dict[str, Any]]:
            """Models with version, sha256, counters and last score."""
            return self.describe()

        def model_rollback(ctx: Any, model: str) -> dict[str, Any]:
            """Restore the previous version of a model (kept since the last install)."""
            if model not in self.slots:
                raise CommandError("not_found", f"no model named {model!r} (configured: "
                                                f"{', '.join(self.slots) or 'none'})")
            try:
                return self.rollback(model, reason="model.rollback command")
            except ModelError as e:
                raise CommandError("rollback_failed", str(e)) from None

        registry.add("model.list", model_list, read_only=True)
        registry.add("model.rollback", model_rollback,
                     {"model": Arg("str", required=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")})

    def _describe(self, slot: _Slot) -> dict[str, Any]:
        m, p = slot.active, slot.previous
        d: dict[str, Any] = {
            "name": slot.name, "state": "running" if m is not None else "not loaded",
            "version": m.version if m else None, "sha256": m.sha256 if m else None,
            "previous": p.version if p else None, "path": str(slot.load_path), "runtime": runtime.runtime_name(),
            "inputs": list(slot.cfg.inputs), "window": slot.cfg.window, "hop": slot.windower.hop,
            "threshold": m.threshold if m else None, "windows_cut": slot.windower.cut, "windows_run": slot.run,
            "windows_skipped": slot.skipped, "bad_input": slot.bad_input, "errors": slot.errors,
            "alarms": slot.alarms, "last_score": None if slot.last_score is None else _round(slot.last_score),
            "last_seq": slot.last_seq,
        }
        if slot.error:
            d["error"] = slot.error
        return d

    # ------------------------------------------------------------------ helpers
    def _event(self, name: str, data: dict[str, Any]) -> None:
        try:
            self.pipeline.event(name, data)
        except Exception:
            log.exception("inference: cannot publish event %s", name)


def _round(v: float) -> float:
    return float(f"{v:.6g}") if math.isfinite(v) else v


def _meta_bytes(raw: Any) -> bytes:
    import json

    return (json.dumps(dict(raw), indent=1, sort_keys=True) + "\n").encode()


