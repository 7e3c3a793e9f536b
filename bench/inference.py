"""Inference bench: the agent's per-window cost against a bare interpreter, latency, saturation, RSS.

    python bench/inference.py [--blocks 9] [--reps 5]

Everything runs the agent's real code (``InferenceService`` with its real tap, ring and worker thread) on
the shipped model (``builtin:machine_temp_ae`` 1.2.0: 32-16-8-16-32 autoencoder whose graph takes the raw
window, centres and scales it and outputs the score, see tools/tflite_build.anomaly_graph), in the same
process as the baseline, in alternating blocks so machine noise hits both sides alike:

* **bare**: ``set_tensor(x) + invoke() + get_tensor()`` with a ready float32 input of the model's input
  shape, in a tight loop (``invoke()`` alone is printed too).
* **agent stage**: readings handed to the service's tap one after the other on this thread (as a sensor
  thread does), the worker thread running the windows (read in place from the ring, model, score, alarm
  state, the result message built), until every window has been run: wall time / windows. The only thing
  left out is storing the result: the service publishes into a counting stand-in for the Pipeline, because
  the outbox insert is the pipeline's cost, not inference's (it is in the saturation figure below).
  The ratio agent/bare is the overhead. A split of the same work single-threaded follows: the tap per
  reading and the worker per window, called directly, each worker block against a bare block of the same
  model instance.
* Both sides run on **one CPU**: the bench's thread and the service's worker thread are pinned to the
  highest CPU this process may use while the blocks run (``--no-pin`` turns it off). Unpinned, the ratio
  measured which vCPU the scheduler gave the worker: this VM's two vCPUs differed by up to 7 %, and the
  256-1024-32-1024-256 model's ratio went 0.98-1.20 between repetitions (bare on one, the worker on the
  other); pinned to one CPU, 1.07-1.08 on either.

Then: **latency** (paced readings, 1 kHz): from handing the window's last reading to the tap to its result
message, through the real wake-up of the worker thread; a **model-cost sweep** (window 256, score in the
graph, hidden width 64..2048), repeated ``--reps`` times: the FIXED COST line (agent - bare, median over
the models) and the RATIO line (agent / bare for models of >= 25 us, per block) give the median and the
range over the repetitions, since one run on a shared machine moves by several per cent; **saturation**:
windows/s through the worker with every result published into a real SQLite outbox; **RSS** added by
the runtime and the model. The backend is the agent's (the LiteRT C API unless ``EDGE_AGENT_TFLITE=python``);
``--backends`` compares the two in one process instead.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.config import ModelConfig  # noqa: E402
from edge_agent.inference import runtime  # noqa: E402
from edge_agent.inference.model import BUILTIN_DIR  # noqa: E402
from edge_agent.inference.service import RUN, InferenceService  # noqa: E402
from edge_agent.sensors.base import Reading  # noqa: E402

MODEL = BUILTIN_DIR / "machine_temp_ae.tflite"
CHUNK = 400  # windows per fill: the tap outruns the worker, so the ring must hold a whole fill (queue)
PIN = True  # stage and bare on one CPU (--no-pin: wherever the scheduler puts them)


@contextlib.contextmanager
def one_cpu(threads: list[Any]) -> Any:
    """Run this thread and ``threads`` on one CPU (the highest this process may use) while inside, so both
    sides of a stage/bare comparison run on the same core, cache and clock. On this 2-vCPU VM the two
    vCPUs differed by up to 7 % in speed, and the scheduler put the worker on either: unpinned, the
    ratio measured which vCPU the worker got (0.98-1.20 between repetitions), not the agent."""
    if not PIN or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = max(before)
    ids = [t.native_id for t in threads if t is not None and t.native_id is not None]
    for tid in (0, *ids):
        os.sched_setaffinity(tid, {cpu})
    try:
        yield cpu
    finally:
        for tid in (0, *ids):
            with contextlib.suppress(OSError):  # a thread that has ended
                os.sched_setaffinity(tid, before)


def bare_calls(m: Any, x: np.ndarray) -> tuple[Any, Any]:
    """(bare, invoke) for model ``m`` on its backend. Python wrapper: ``set_tensor(x) + invoke() +
    get_tensor()`` and ``invoke()``. LiteRT C API: ``score(x)`` (the window copied into the input buffer, run,
    the first output read) and the run alone; ``x`` as the flat float32 buffer the ring gives."""
    it = m.interpreter
    if it is None:
        from array import array

        return functools.partial(m.engine.score, array("f", x.reshape(-1).tolist())), m.engine.invoke
    i_idx = it.get_input_details()[0]["index"]
    o_idx = it.get_output_details()[0]["index"]

    def bare() -> None:
        it.set_tensor(i_idx, x)
        it.invoke()
        it.get_tensor(o_idx)

    return bare, it.invoke


def per_call(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def big_model(tmp: Path, hidden: int, window: int = 256) -> Path:
    """An autoencoder window-hidden-32-hidden-window (tanh), score in the graph (raw in, score out), written by
    tools/tflite_build: a model whose invoke costs more than the shipped one's."""
    sys.path.insert(0, str(ROOT / "tools"))
    import hashlib

    import tflite_build as tb

    rng = np.random.default_rng(3)
    sizes = (window, hidden, 32, hidden, window)
    layers = [tb.Dense(rng.normal(0, 1 / np.sqrt(a), (b, a)), np.zeros(b), "tanh" if k < 3 else "none")
              for k, (a, b) in enumerate(itertools.pairwise(sizes))]
    blob = tb.build(window, tb.anomaly_graph(layers, 85.0, 5.0, window))
    path = tmp / f"big-{hidden}.tflite"
    path.write_bytes(blob)
    meta = {"name": "big", "version": "1", "sha256": hashlib.sha256(blob).hexdigest(), "input_shape": [1, window],
            "output_shape": [1, 1], "output": "score", "mean": [0.0], "std": [1.0]}
    path.with_name(path.name + ".json").write_text(json.dumps(meta))
    return path


class Counting:
    """Stands in for the Pipeline: counts the result messages (built by the service) and notes when each
    arrived; the tap list is where the service would register itself."""

    def __init__(self) -> None:
        self.taps: list[Any] = []
        self.n = 0
        self.stamps: list[tuple[int, float]] | None = None

    def publish(self, stream: str, data: dict[str, Any], **kw: Any) -> int:
        self.n += 1
        if self.stamps is not None:
            self.stamps.append((data["seq"][1], time.perf_counter()))
        return self.n

    def event(self, name: str, data: Any) -> None:
        pass


def readings(n: int, seed: int = 0) -> list[Reading]:
    """A temperature-like signal (slow sine + noise) as the sensor would hand it over."""
    rng = np.random.default_rng(seed)
    v = 85 + 3 * np.sin(np.arange(n) / 50) + 0.5 * rng.standard_normal(n)
    return [Reading("s", 1.7e9 + 300.0 * k, {"value": float(x)}) for k, x in enumerate(v)]


def service(model: Path, window: int, hop: int, queue: int = CHUNK, start: bool = True
            ) -> tuple[InferenceService, Counting]:
    pipe = Counting()
    # threshold far above any score: the common path (no alarm) is what is measured
    cfg = ModelConfig(name="m", path=str(model), inputs=["s"], window=window, hop=hop, queue=queue, threshold=1e9)
    svc = InferenceService([cfg], pipe, tempfile.mkdtemp(prefix="bench-inf-"))
    if start:
        svc.start()
    else:
        svc._load_at_start(svc.slots["m"])  # the model, but no worker thread: for the single-threaded split
    return svc, pipe


def stage_vs_bare(model: Path, window: int, hop: int, blocks: int, n_bare: int) -> dict[str, float]:
    svc, _ = service(model, window, hop, queue=CHUNK + 1)  # the first fill also holds the first window
    slot = svc.slots["m"]
    m = slot.active
    assert m is not None
    data = readings(window + CHUNK * hop * (blocks + 1))
    x = np.array([r.data["value"] for r in data[:window]], np.float32).reshape(1, window)
    bare, invoke = bare_calls(m, x)
    seq = 0

    def stage() -> float:  # one fill of CHUNK windows through the running service
        nonlocal seq
        n0 = slot.run
        tap = svc.tap
        start = seq
        end = start + CHUNK * hop + (window if start == 0 else 0)
        t = time.perf_counter()
        for k in range(start, end):
            tap(data[k], k)
        assert svc.wait_idle(60)
        dt = time.perf_counter() - t
        seq = end
        return dt / (slot.run - n0)

    with one_cpu([slot.thread]):
        stage()  # warm up, and the first window
        per_call(bare, n_bare // 10)
        b, g, inv = [], [], []
        for _ in range(blocks):
            b.append(per_call(bare, n_bare))
            g.append(stage())
            inv.append(per_call(invoke, n_bare))
    assert slot.skipped == 0 and slot.errors == 0, (slot.skipped, slot.errors)
    svc.stop()
    # the split, single-threaded: the tap per reading (no worker running), then the worker per window in
    # blocks alternating with bare blocks of the same model instance (instances differ by a few per cent)
    svc2, _ = service(model, window, hop, queue=4000, start=False)
    s2 = svc2.slots["m"]
    m2 = s2.active
    bare2, _ = bare_calls(m2, x)
    n_read = window + 4000 * hop
    more = readings(n_read, seed=1)
    n_w = 3800 // blocks
    wb, ww = [], []
    with one_cpu([]):
        t = time.perf_counter()
        for k, r in enumerate(more):
            svc2.tap(r, k)
        tap = (time.perf_counter() - t) / n_read
        cut = s2.windower.cut
        s2.next = cut - 4000
        while s2.next < cut - 3800:  # warm-up (a fresh interpreter's first invokes are slow)
            svc2._run(s2, m2, min(cut - 3800, s2.next + RUN))
        for _ in range(blocks):
            wb.append(per_call(bare2, n_w))
            end = s2.next + n_w
            t = time.perf_counter()
            while s2.next < end:  # as the worker runs the windows that piled up: in runs of RUN
                svc2._run(s2, m2, min(end, s2.next + RUN))
            ww.append((time.perf_counter() - t) / n_w)
    assert s2.run == 200 + n_w * blocks and s2.skipped == 0
    return {"bare": statistics.median(b), "stage": statistics.median(g), "invoke": statistics.median(inv),
            "tap": tap, "worker": statistics.median(ww),
            "worker_over": statistics.median(w - v for w, v in zip(ww, wb, strict=True)),
            # each stage block against the bare block just before it (same moment, same noise)
            "ratio": statistics.median(gi / bi for gi, bi in zip(g, b, strict=True))}


def runs_ab(model: Path, window: int, blocks: int) -> dict[str, tuple[float, float]]:
    """The worker's runs (service.RUN windows invoked back to back, then their results) against RUN = 1 (each
    window's invoke, then its result: the interleaving before runs), in alternating blocks of one process
    beside a bare block: {name: (median us per window, median per-block ratio to bare)}."""
    from edge_agent.inference import service as service_mod

    run = service_mod.RUN
    svc, _ = service(model, window, 1, queue=CHUNK + 1)
    slot = svc.slots["m"]
    data = readings(window + CHUNK * (2 * blocks + 2))
    x = np.array([r.data["value"] for r in data[:window]], np.float32).reshape(1, window)
    bare, _ = bare_calls(slot.active, x)
    seq = 0

    def stage() -> float:
        nonlocal seq
        n0, start = slot.run, seq
        seq = start + CHUNK + (window if start == 0 else 0)
        t = time.perf_counter()
        for k in range(start, seq):
            svc.tap(data[k], k)
        assert svc.wait_idle(60)
        return (time.perf_counter() - t) / (slot.run - n0)

    stage()
    r: dict[str, list[float]] = {"bare": [], f"RUN={run}": [], "RUN=1": []}
    try:
        for _ in range(blocks):
            r["bare"].append(per_call(bare, CHUNK))
            service_mod.RUN = run
            r[f"RUN={run}"].append(stage())
            service_mod.RUN = 1
            r["RUN=1"].append(stage())
    finally:
        service_mod.RUN = run
        svc.stop()
    return {k: (statistics.median(v) * 1e6, statistics.median(a / b for a, b in zip(v, r["bare"], strict=True)))
            for k, v in r.items()}


def backends_ab(reps: int, blocks: int) -> None:
    """The LiteRT C API against the Python wrapper (EDGE_AGENT_TFLITE=python) in one process, alternating
    per model and repetition, so machine noise hits both alike: overhead (stage - bare) and ratio per model,
    then the FIXED COST (median over the models) and the ratio of the models of >= 25 us per backend."""
    import os

    tmp = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    models = [("shipped", MODEL, 32, 5000)] + [(f"256-{h}-32-{h}-256", big_model(tmp, h), 256, n)
                                               for h, n in ((64, 2000), (256, 1000), (1024, 400), (2048, 400))]
    res: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for rep in range(reps):
            for name, path, window, n in models:
                for backend in ("c", "python"):
                    os.environ[runtime.BACKEND_ENV] = backend
                    runtime._reset_for_tests()
                    r = stage_vs_bare(path, window, 1, blocks, n)
                    res.setdefault((name, backend), []).append(r)
                    print(f"[{rep + 1}/{reps}] {name:22s} {backend:6s}: bare {r['bare'] * 1e6:7.2f} us | stage "
                          f"{r['stage'] * 1e6:7.2f} us | overhead {(r['stage'] - r['bare']) * 1e6:6.2f} us, ratio "
                          f"{r['ratio']:.3f}", flush=True)
    finally:
        os.environ.pop(runtime.BACKEND_ENV, None)
        runtime._reset_for_tests()
    for backend in ("c", "python"):
        over = {m[0]: statistics.median(r["stage"] - r["bare"] for r in res[(m[0], backend)]) for m in models}
        slow = [m[0] for m in models if statistics.median(r["bare"] for r in res[(m[0], backend)]) >= 25e-6]
        print(f"{backend:6s}: FIXED COST {statistics.median(over.values()) * 1e6:.2f} us (per model: "
              + ", ".join(f"{k} {v * 1e6:.2f}" for k, v in over.items()) + ") | RATIO (>= 25 us): "
              + ", ".join(f"{k} {statistics.median(r['ratio'] for r in res[(k, backend)]):.3f}" for k in slow))


def latency(rate: float, seconds: float) -> tuple[float, float, float, int]:
    """Paced readings (hop 1): seconds from handing a window's last reading to the tap to its result."""
    svc, pipe = service(MODEL, 32, 1, queue=4)
    pipe.stamps = []
    n = int(rate * seconds)
    data = readings(n + 32)
    pushed = [0.0] * len(data)
    period = 1.0 / rate
    t0 = time.perf_counter()
    for k, r in enumerate(data):
        while time.perf_counter() < t0 + k * period:  # spin: sleep() is too coarse at 1 kHz
            time.sleep(0)
        pushed[k] = time.perf_counter()
        svc.tap(r, k)
    assert svc.wait_idle(10)
    svc.stop()
    lat = sorted(t - pushed[s] for s, t in pipe.stamps)
    q = statistics.quantiles(lat, n=100)
    return statistics.median(lat), q[89], q[98], svc.slots["m"].skipped


def saturation() -> tuple[float, int]:
    """Windows/s through the worker, each result published into a real SQLite outbox: readings pushed
    first (no worker yet), then the worker started on a ring full of due windows."""
    from edge_agent.outbox import Outbox
    from edge_agent.pipeline import Pipeline

    tmp = Path(tempfile.mkdtemp(prefix="bench-inf-"))
    ob = Outbox(tmp / "o.db", "bench").open()
    pipe = Pipeline(ob, "edge", "bench")
    n = 20000
    cfg = ModelConfig(name="m", path=str(MODEL), inputs=["s"], window=32, hop=1, queue=n, threshold=1e9)
    svc = InferenceService([cfg], pipe, tmp / "state")
    for k, r in enumerate(readings(n + 31)):
        svc.tap(r, k)
    t = time.perf_counter()
    svc.start()
    assert svc.wait_idle(600)
    dt = time.perf_counter() - t
    run = svc.slots["m"].run
    svc.stop()
    ob.close()
    return run / dt, run


RSS_CODE = """
import json, sys
sys.path.insert(0, {root!r})
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
import edge_agent.inference.service
from edge_agent.config import ModelConfig
from edge_agent.inference import runtime
from edge_agent.inference.model import load
if runtime.os.environ.get("EDGE_AGENT_TFLITE") == "python":
    import numpy  # the wrapper needs it anyway: counted before the runtime, as before
r0 = rss()
runtime.unavailable_reason()  # loads the runtime (libLiteRt.so, or the wrapper package)
r1 = rss()
m = load(ModelConfig(name='m', path={model!r}, inputs=['s'], window=32), __import__('pathlib').Path({model!r}))
m.self_test()
r2 = rss()
print(json.dumps([r0, r1, r2, "numpy" in sys.modules]))
"""


def rss() -> list[float]:
    out = subprocess.run([sys.executable, "-c", RSS_CODE.format(root=str(ROOT), model=str(MODEL))],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=9)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the model sweep (median reported)")
    ap.add_argument("--runs-ab", action="store_true", help="only: the worker's runs against RUN = 1, in one process")
    ap.add_argument("--backends", action="store_true", help="only: C API vs Python wrapper, one process")
    ap.add_argument("--no-pin", action="store_true", help="stage and bare wherever the scheduler puts them")
    a = ap.parse_args()
    global PIN
    PIN = not a.no_pin
    logging.basicConfig(level=logging.ERROR)
    if a.backends:
        backends_ab(a.reps, 5)
        return 0
    if a.runs_ab:
        tmp = Path(tempfile.mkdtemp(prefix="bench-ab-"))
        for label, path, window in (("shipped", MODEL, 32), ("256-1024-32-1024-256", big_model(tmp, 1024), 256)):
            for _ in range(a.reps):
                res = runs_ab(path, window, 25)
                print(f"{label}: " + ", ".join(f"{k} {us:.2f} us (x{q:.3f})" for k, (us, q) in res.items()),
                      flush=True)
        return 0
    print(f"runtime {runtime.runtime_name()} (numpy {np.__version__} in this bench process), model {MODEL.name} "
          f"({MODEL.stat().st_size} B), window 32; medians of {a.blocks} alternating blocks "
          f"({a.n} bare calls / {CHUNK} windows through the service)")
    with one_cpu([]) as cpu:
        print(f"stage and bare blocks (and the worker thread) pinned to CPU {cpu}" if cpu is not None else
              "stage and bare blocks unpinned (--no-pin, or no sched_setaffinity here)")
    for hop in (1, 4, 32):
        r = stage_vs_bare(MODEL, 32, hop, a.blocks, a.n)
        if hop == 1:
            shipped = r
        print(f"hop {hop:>2}: bare invoke() {r['invoke'] * 1e6:5.2f} us, set+invoke+get {r['bare'] * 1e6:5.2f} us | "
              f"agent stage {r['stage'] * 1e6:6.2f} us/window | overhead {(r['stage'] - r['bare']) * 1e6:.2f} us, "
              f"ratio {r['stage'] / r['bare']:.2f}\n"
              f"        split, one thread: tap {r['tap'] * 1e6:.2f} us/reading x {hop} + worker "
              f"{r['worker'] * 1e6:.2f} us/window (its own bare + {r['worker_over'] * 1e6:.2f})")
    med, p90, p99, skipped = latency(1000.0, 3.0)
    print(f"latency, readings at 1 kHz, hop 1 (last reading handed to the tap -> result message built): median "
          f"{med * 1e6:.0f} us, p90 {p90 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us ({skipped} windows skipped)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-big-"))
    sweep = {h: big_model(tmp, h) for h in (64, 256, 1024, 2048)}
    fixed_reps: list[float] = []
    ratios: dict[int, list[float]] = {h: [] for h in sweep}
    bares: dict[int, list[float]] = {h: [] for h in sweep}
    for rep in range(a.reps):
        overheads = [shipped["stage"] - shipped["bare"]]  # the shipped model's, hop 1
        for hidden, path in sweep.items():
            # bare blocks about as long as a stage block (CHUNK windows), so both see the same noise
            r = stage_vs_bare(path, 256, 1, a.blocks, {64: 2000, 256: 1000}.get(hidden, CHUNK))
            print(f"[{rep + 1}/{a.reps}] model 256-{hidden}-32-{hidden}-256 (score in graph), hop 1: bare "
                  f"{r['bare'] * 1e6:6.2f} us | agent stage {r['stage'] * 1e6:6.2f} us | overhead "
                  f"{(r['stage'] - r['bare']) * 1e6:5.2f} us, ratio {r['ratio']:.3f} | split: worker "
                  f"{r['worker'] * 1e6:6.2f} us (+{r['worker_over'] * 1e6:.2f}), tap {r['tap'] * 1e6:.2f} us")
            overheads.append(r["stage"] - r["bare"])
            ratios[hidden].append(r["ratio"])
            bares[hidden].append(r["bare"])
        fixed_reps.append(statistics.median(overheads))
        shipped = stage_vs_bare(MODEL, 32, 1, a.blocks, a.n)  # the shipped model again for the next repetition

    def spread(v: list[float], k: float = 1.0, f: str = ".3f") -> str:
        return f"{statistics.median(v) * k:{f}} [{min(v) * k:{f}}-{max(v) * k:{f}}]"

    print(f"FIXED COST per window (agent stage - bare, median over the shipped + {len(sweep)} sweep models, hop 1; "
          f"median [min-max] of {a.reps} repetitions): {spread(fixed_reps, 1e6, '.2f')} us (target <= 4 us)")
    slow = [h for h in sweep if statistics.median(bares[h]) >= 25e-6]
    print(f"RATIO for models of >= 25 us per invoke (target <= 1.1; per-block stage/bare, median [min-max] of "
          f"{a.reps} repetitions): " + (", ".join(
              f"256-{h}-32-{h}-256 ({statistics.median(bares[h]) * 1e6:.1f} us): {spread(ratios[h])}" for h in slow)
              or "none of the sweep's models took 25 us on this machine"))
    sat, run = saturation()
    print(f"saturation: {sat:,.0f} windows/s through the worker ({run} windows), each result stored in the "
          f"SQLite outbox")
    r0, r1, r2, with_numpy = rss()
    print(f"RSS: {r0:.1f} MB (python+edge_agent{'+numpy' if with_numpy else ', no numpy'}) -> {r1:.1f} MB after "
          f"loading the runtime (+{r1 - r0:.1f}) -> {r2:.1f} MB with the model loaded and run (+{r2 - r1:.1f}; "
          f"+{r2 - r0:.1f} in total)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
