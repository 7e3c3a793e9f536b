"""The inference service: a pipeline tap, one worker thread per model, hot-swap with rollback.

Off the sampling path (see docs/inference.md). The tap runs on the sensor's thread for every stored reading: O(1), no
allocation: a row into the model's ring (:mod:`.window`), a wake-up only if the worker sleeps. The worker reads due
windows in place from the ring and runs those that piled up in *runs* of up to ``RUN`` windows: first the invokes back
to back (a big model's invoke evicts Python's own data), then each result's message and alarm state. More than
``queue`` windows behind, the oldest are skipped and counted; sampling never waits for inference. Results on
``inference/<model>``; alarms on ``events/<alarm>`` after ``alarm_after`` windows in a row at/above the threshold
(re-armed after ``rearm``).

Hot-swap: :meth:`InferenceService.install` validates a new model completely on the caller's thread, writes its files
(:mod:`.files`), then swaps one reference under a lock; the worker picks the model once per run, so the switch lands
between windows and none is lost. ``max_failures`` run-time failures of a new model roll it back. Calibration
(:mod:`.calibration`): a warm-up marks results ``"calibrating"`` (no alarm), then threshold and input scale are
learned and applied (windows already in the ring are rescaled by the worker). Without a runtime: one log line,
``events/inference_unavailable``, idle.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.config import ModelConfig
from edge_agent.errors import ModelError
from edge_agent.host import Host, PipelineView
from edge_agent.inference import files, runtime
from edge_agent.inference.metadata import parse_metadata
from edge_agent.inference.model import Model, load
from edge_agent.inference.numeric import copy_f32
from edge_agent.inference.slot import Slot, calibration_event, debounce, describe_slot, round6
from edge_agent.inference.window import Window, as_float
from edge_agent.sensors.base import Reading

log = logging.getLogger("edge_agent.inference")

ERROR_EVENT_EVERY = 100  # after the first, publish every N-th run-time error as an event
RUN = 16  # windows invoked back to back before their results are published (when the worker is behind)


class InferenceService:
    name = "inference"
    stops_after_drain = False

    def __init__(self, models: list[ModelConfig], pipeline: Any, state_dir: str | os.PathLike[str]) -> None:
        self.pipeline = pipeline
        self.state_dir = Path(state_dir)
        self.slots: dict[str, Slot] = {m.name: Slot(m, self.state_dir) for m in models}
        self._by_sensor: dict[str, list[tuple[Slot, int]]] = {}
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
            log.error("inference: models not loaded (%s): %s", ", ".join(self.slots), self.unavailable)
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

    def _load_at_start(self, slot: Slot) -> None:
        if runtime.uses_numpy():  # a Python wrapper: windows as numpy views (set_tensor takes them as they are)
            slot.windower.use_numpy()
        tried: list[str] = []
        for path in files.start_candidates(slot.cfg, slot.load_path, slot.install_path):
            try:
                slot.active = load(slot.cfg, path)
            except ModelError as e:
                tried.append(str(e))
                continue
            slot.error = ""
            slot.load_path = path
            with slot.lock:
                self._attach(slot, slot.active)
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
            if self.tap in self.pipeline.taps:
                self.pipeline.taps.remove(self.tap)
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
                value *= slot.scale  # the calibrated input scale (1.0 unless learned): a float multiply
                if rows.n == 1:
                    due = slot.windower.push(value, seq, seq, reading.ts)
                elif rows.put(col, value, seq):
                    due = slot.windower.push(rows.values, min(rows.seqs), seq, reading.ts)
                else:
                    continue
                if due and slot.waiting:  # a busy worker finds the new window itself: no wake-up
                    slot.waiting = False
                    slot.cond.notify()

    # ------------------------------------------------------------------ worker
    def _worker(self, slot: Slot) -> None:
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
            if cut - slot.next > keep:  # more than `queue` windows behind: the oldest are skipped, and counted
                slot.skipped += cut - keep - slot.next
                slot.next = cut - keep
            try:
                while slot.next < cut:  # without the lock: the windows are read lock-free (Windower.get)
                    # the model is picked once per run, so a hot-swap lands between windows
                    self._run(slot, slot.active, min(cut, slot.next + RUN))
            finally:
                slot.next = cut
                with slot.cond:
                    slot.busy = False
                    slot.cond.notify_all()

    def _run(self, slot: Slot, model: Model | None, end: int) -> None:
        """Windows ``slot.next`` .. ``end - 1``: the invokes back to back, then each result published (the
        run ends early after a failure or a warm-up window, so those are handled before the next invoke)."""
        if model is None:  # no model loaded: dropped, and counted
            slot.skipped += end - slot.next
            slot.next = end
            return
        done: list[tuple[Window, Any, Exception | None, Any]] = []
        try:
            self._invoke_run(slot, model, end, done)
        except Exception:  # never let one window kill the worker
            log.exception("inference: model %s: unexpected error", slot.name)
        for w, res, failed, kept in done:
            try:
                if failed is not None:
                    self._failure(slot, model, w, failed)
                else:
                    self._publish(slot, model, w, res, kept)
            except Exception:
                log.exception("inference: model %s: unexpected error", slot.name)

    def _invoke_run(self, slot: Slot, model: Model, end: int, done: list[Any]) -> None:
        if model.raw_score and not slot.calibrating and slot.next >= slot.from_k and slot.run_direct(model, end, done):
            return
        windower = slot.windower
        while slot.next < end:
            k = slot.next
            slot.next = k + 1
            w = windower.get(k)
            if w is None:  # lapped by the writer: dropped, and counted
                slot.skipped += 1
                continue
            x = w[0]
            if k < slot.from_k:  # holds rows from before the input scale changed: rescale them (a copy)
                x = slot.rescaled(k, x)
            if w[6]:  # bad: NaN in, NaN out would be the input's fault, not the model's (and could roll it back)
                slot.bad_input += 1
                continue
            kept = copy_f32(x) if slot.calibrating else None  # before the intact check: a copy of what it saw
            failed = None
            try:  # an anomaly score: straight to a float, no Result object
                res = model.infer(x) if model.classifier else model.score(x)
            except Exception as e:
                res, failed = None, e
            if not windower.intact(k):  # the ring moved on while the model read it: neither the result
                slot.skipped += 1        # nor a failure says anything about the model
                continue
            done.append((w, res, failed, kept))
            if failed is not None or kept is not None:
                return

    def _publish(self, slot: Slot, model: Model, w: Window, res: Any, kept: Any) -> None:
        """One window's result: counters, alarm state, the result message, the warm-up, an alarm."""
        _, first_seq, last_seq, first_ts, last_ts, index, _, _ = w  # one unpack of the window tuple
        if res.__class__ is float:  # an anomaly score
            score, labels, top = res, None, None
        else:  # a classifier's Result
            score, labels, top = res.score, res.labels, res.top
        calibrating = kept is not None
        slot.run += 1
        slot.last_score = score
        seq = [first_seq, last_seq]
        slot.last_seq = seq
        thr = model.threshold
        above = not calibrating and thr > 0 and score >= thr
        raise_alarm = debounce(slot, above)
        # the score as the model gave it (a float32's value): rounding it for looks cost 0.4 us a window
        data: dict[str, Any] = {"model": slot.name, "version": model.version, "score": score,
                                "threshold": thr, "alarm": above, "seq": seq, "ts": [first_ts, last_ts],
                                "window": index}
        if labels is not None:
            data["labels"] = {lab: round6(v) for lab, v in labels.items()}
            data["top"] = top
        if calibrating:  # warm-up: the result is published, marked, and raises no alarm
            data["calibrating"] = True
        self.pipeline.publish(slot.stream, data, cls="inference", ts=last_ts)
        if kept is not None:
            self._calibration_step(slot, model, kept, index, last_ts)
        if raise_alarm:
            slot.alarms += 1
            alarm = {k: data[k] for k in ("model", "version", "score", "threshold", "seq", "ts")}
            if top is not None:
                alarm["top"] = top
            log.warning("inference: alarm %s: model %s score %.4g >= %g (seq %d-%d)", slot.alarm_name, slot.name,
                        score, thr, first_seq, last_seq)
            self.pipeline.publish(f"events/{slot.alarm_name}", alarm, cls="alarm", ts=last_ts)

    def _calibration_step(self, slot: Slot, model: Model, kept: Any, k: int, ts: float) -> None:
        """Worker, for a window run while ``slot.calibrating``: feed the warm-up."""
        if not slot.calib.busy:  # the warm-up ended (or another model without a rule took over)
            slot.calibrating = False
            return
        try:
            cal = slot.calib.add(model, kept, ts)
        except ModelError as e:
            log.error("inference: model %s: calibration failed, warming up again: %s", slot.name, e)
            self._event("model_calibration_failed", {"model": slot.name, "error": str(e)})
            return
        if cal is not None:
            with slot.lock:
                slot.set_scale(cal.input_scale)
            log.info("inference: model %s calibrated on %d windows: threshold %g, input scale %g", slot.name,
                     cal.windows, cal.threshold, cal.input_scale)
            self._event("model_calibrated", calibration_event(slot.name, model, cal))

    def _attach(self, slot: Slot, model: Model | None) -> None:
        """``model`` became active (the caller holds ``slot.lock``): apply its stored calibration (threshold,
        input scale) or start its warm-up (input scale 1: the warm-up learns from raw readings)."""
        if model is None:
            return
        stored = slot.calib.attach(model)
        slot.set_scale(stored.input_scale if stored is not None else 1.0)
        if stored is not None:
            log.info("inference: model %s: calibration from %s: threshold %g, input scale %g", slot.name,
                     slot.calib.path, stored.threshold, stored.input_scale)
        elif slot.calib.busy:
            log.info("inference: model %s: calibrating on this sensor (results marked, no alarms)", slot.name)

    def calibrate(self, name: str) -> dict[str, Any]:
        """Start a new warm-up for ``name`` (the model.calibrate command); ModelError if it cannot."""
        slot = self._slot(name)
        with slot.cond:
            try:
                slot.calib.request(slot.active)
            except ModelError as e:
                raise ModelError(f"model {name!r}: {e}") from None
            slot.set_scale(1.0)
            slot.reset_alarm()
        return self._describe(slot)

    def _failure(self, slot: Slot, model: Model, w: Window, err: Exception) -> None:
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
    def _slot(self, name: str) -> Slot:
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
            files.write_install(slot.install_path, slot.active, new)
            slot.load_path = slot.install_path
            with slot.cond:
                old = slot.active
                slot.previous, slot.active = old, new
                slot.on_probation = old is not None
                slot.failures_since_install = 0
                slot.error = ""
                slot.reset_alarm()
                self._attach(slot, new)
        old_v = old.version if old is not None else None
        log.info("inference: model %s %s installed (was %s), sha256 %s", name, new.version, old_v, new.sha256[:16])
        self._event("model_installed", {"model": name, "version": new.version, "previous": old_v,
                                        "sha256": new.sha256})
        return self._describe(slot)

    def rollback(self, name: str, reason: str = "requested") -> dict[str, Any]:
        """Restore the previous model (in memory and on disk); ModelError if there is none."""
        slot = self._slot(name)
        with slot.swap_lock:
            with slot.cond:
                prev, bad = slot.previous, slot.active
            if prev is None:
                raise ModelError(f"model {name!r}: no previous model to roll back to")
            files.write_rollback(slot.install_path, prev, bad)
            with slot.cond:
                slot.active, slot.previous = prev, None
                slot.on_probation, slot.failures_since_install = False, 0
                slot.reset_alarm()
                self._attach(slot, prev)
        bad_v = bad.version if bad is not None else None
        log.warning("inference: model %s rolled back from %s to %s: %s", name, bad_v, prev.version, reason)
        self._event("model_rollback", {"model": name, "from": bad_v, "to": prev.version, "reason": reason})
        return self._describe(slot)

    def describe(self) -> list[dict[str, Any]]:
        return [self._describe(s) for s in self.slots.values()]

    def register_commands(self, registry: Any) -> None:
        """``model.list`` (read-only), ``model.rollback``, ``model.calibrate`` (``model.update``: builtins)."""
        from edge_agent.inference.commands import register

        register(self, registry)

    def _describe(self, slot: Slot) -> dict[str, Any]:
        return describe_slot(slot, runtime.runtime_name())

    # ------------------------------------------------------------------ helpers
    def _event(self, name: str, data: dict[str, Any]) -> None:
        try:
            self.pipeline.event(name, data)
        except Exception:
            log.exception("inference: cannot publish event %s", name)
