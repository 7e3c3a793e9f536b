"""Inference bench: the agent's per-window cost against a bare interpreter, saturation rate, RSS.

    /tmp/venv/bin/python bench/inference.py [--seconds 1.0]

All on the shipped model (``builtin:machine_temp_ae`` 1.2.0: 32-16-8-16-32 autoencoder whose graph takes
the raw window, centres and scales it and outputs the score, see tools/tflite_build.anomaly_graph),
same interpreter instance, same process, measured in alternating blocks so machine noise hits both sides alike:

* **bare**: ``set_tensor(x) + invoke() + get_tensor()`` with a ready float32 input of the model's input
  shape (what the model itself needs: for the shipped model the raw window, since its graph standardises).
* **agent**: what the service does per window: ``hop`` x ``Windower.push`` (the tap's ring-buffer work,
  incl. cutting the window: copy + Window tuple) + the hand-off through a deque (append by the tap,
  popleft + unpack by the worker) + the bad-input check + ``Model.score`` (for the shipped model:
  set_tensor of the window as cut + invoke + get_tensor + reading the float + its finiteness check; for a
  "reconstruction" model also the numpy standardisation and MSE).
  The ratio agent/bare is the overhead (target <= 1.2).

The same two measurements are printed for the previous shipped model (1.0.0, "reconstruction" output:
standardisation and MSE in numpy, kept in tests/inference/data) and for a larger model (window 256) in
both formats, to show what the in-graph score buys and that the agent's cost is a fixed few microseconds.

Then **saturation**: windows/s through a running InferenceService worker with a permanently full
queue, including publishing each result into a real SQLite outbox (the whole stage, not just the model).
And **RSS**: resident memory of a fresh process before and after loading the runtime and the model.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.config import ModelConfig  # noqa: E402
from edge_agent.inference import runtime  # noqa: E402
from edge_agent.inference.model import BUILTIN_DIR, load  # noqa: E402
from edge_agent.inference.window import Windower  # noqa: E402

MODEL = BUILTIN_DIR / "machine_temp_ae.tflite"
OLD_MODEL = ROOT / "tests" / "inference" / "data" / "machine_temp_ae-1.0.0.tflite"


def per_call(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def big_model(tmp: Path, window: int = 256, score: bool = False) -> Path:
    """A larger autoencoder (window 256, 256-128-32-128-256, ~80k parameters) written by tools/tflite_build,
    to show the agent's per-window cost is a fixed few microseconds, not a factor. ``score``: built with
    anomaly_graph (raw in, score out), else a plain reconstruction output scored by the agent in numpy."""
    sys.path.insert(0, str(ROOT / "tools"))
    import hashlib

    import tflite_build as tb

    rng = np.random.default_rng(3)
    sizes = (window, 128, 32, 128, window)
    layers = [tb.Dense(rng.normal(0, 1 / np.sqrt(a), (b, a)), np.zeros(b), "tanh" if k < 3 else "none")
              for k, (a, b) in enumerate(itertools.pairwise(sizes))]
    if score:
        blob = tb.build(window, tb.anomaly_graph(layers, 85.0, 5.0, window))
        kind = {"output_shape": [1, 1], "output": "score", "mean": [0.0], "std": [1.0]}
    else:
        blob = tb.build(window, layers)
        kind = {"output_shape": [1, window], "output": "reconstruction", "mean": [85.0], "std": [5.0]}
    path = tmp / f"big-{kind['output']}.tflite"
    path.write_bytes(blob)
    meta = {"name": "big", "version": "1", "sha256": hashlib.sha256(blob).hexdigest(), "input_shape": [1, window],
            **kind}
    path.with_name(path.name + ".json").write_text(json.dumps(meta))
    return path


def latency(hop: int, blocks: int, n: int, model: Path = MODEL, window: int = 32) -> tuple[float, float]:
    cfg = ModelConfig(name="m", path=str(model), inputs=["s"], window=window, hop=hop)
    m = load(cfg, model)
    it = m.interpreter
    i_idx = it.get_input_details()[0]["index"]
    o_idx = it.get_output_details()[0]["index"]
    rng = np.random.default_rng(0)
    size = 4096
    raw = (85 + 5 * rng.standard_normal(size + hop)).astype(np.float32)
    # bare gets exactly what the model's input tensor needs, ready-made: the raw window for a model that
    # standardises in its graph, else the standardised one
    x = raw[:window].reshape(1, window).copy() if m.identity else m.preprocess(raw[:window]).reshape(1, window).copy()
    rawf = [float(v) for v in raw]  # the tap hands the windower Python floats...
    tsf = [1.7e9 + 300.0 * k for k in range(size + hop)]  # ...and the reading's timestamp
    w = Windower(window, hop)
    for k in range(window):
        w.push(rawf[k], k, k, tsf[k])
    spans = [range(k, k + hop) for k in range(0, size, hop)]  # the readings of each window, prebuilt
    q: collections.deque = collections.deque()
    j = 0

    def bare() -> None:
        it.set_tensor(i_idx, x)
        it.invoke()
        it.get_tensor(o_idx)

    def agent() -> None:
        nonlocal j
        j = j + 1 if j + 1 < len(spans) else 0
        win = None
        for k in spans[j]:  # the tap, once per reading
            win = w.push(rawf[k], k, k, tsf[k])
        q.append(win)  # tap -> worker
        xw, _first, _last, _t0, _t1, _idx, bad, _ = q.popleft()  # the worker's unpack (as in _run_one)
        if not bad:
            m.score(xw)

    for f in (bare, agent):
        per_call(f, n // 10)  # warm up
    b, a = [], []
    for _ in range(blocks):
        b.append(per_call(bare, n))
        a.append(per_call(agent, n))
    return statistics.median(b), statistics.median(a)


def saturation(seconds: float) -> tuple[float, float]:
    from edge_agent.inference.service import InferenceService
    from edge_agent.inference.window import Window
    from edge_agent.outbox import Outbox
    from edge_agent.pipeline import Pipeline

    tmp = Path(tempfile.mkdtemp(prefix="bench-inf-"))
    ob = Outbox(tmp / "o.db", "bench")
    pipe = Pipeline(ob, "edge", "bench")
    cfg = ModelConfig(name="m", path=str(MODEL), inputs=["s"], window=32, queue=100000)
    svc = InferenceService([cfg], pipe, tmp / "state")
    svc.start()
    slot = svc.slots["m"]
    vals = (85 + 5 * np.random.default_rng(1).standard_normal((1, 32))).astype(np.float32)
    n = 20000
    with slot.cond:  # fill the queue first: the worker then runs flat out
        for k in range(n):
            slot.queue.append(Window(vals, k * 32, k * 32 + 31, 0.0, 0.0, k))
        slot.cond.notify()
    t = time.perf_counter()
    assert svc.wait_idle(600)
    dt = time.perf_counter() - t
    svc.stop()
    ob.close()
    # the model alone, same process, for comparison
    m = load(cfg, MODEL)
    t = time.perf_counter()
    k = 0
    while time.perf_counter() - t < seconds:
        for _ in range(1000):
            m.score(vals)
        k += 1000
    return n / dt, k / (time.perf_counter() - t)


RSS_CODE = """
import json, sys
sys.path.insert(0, {root!r})
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
import numpy, edge_agent.inference.service
from edge_agent.config import ModelConfig
from edge_agent.inference import runtime
from edge_agent.inference.model import load
r0 = rss()
runtime.make_interpreter  # module imported, runtime not yet
runtime.unavailable_reason()  # imports the runtime package
r1 = rss()
m = load(ModelConfig(name='m', path={model!r}, inputs=['s'], window=32), __import__('pathlib').Path({model!r}))
r2 = rss()
print(json.dumps([r0, r1, r2]))
"""


def rss() -> list[float]:
    out = subprocess.run([sys.executable, "-c", RSS_CODE.format(root=str(ROOT), model=str(MODEL))],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--n", type=int, default=5000)
    a = ap.parse_args()
    print(f"runtime {runtime.runtime_name()}, numpy {np.__version__}, model {MODEL.name} "
          f"({MODEL.stat().st_size} B), window 32; medians of {a.blocks} alternating blocks of {a.n} calls")
    for hop in (1, 4, 32):
        b, g = latency(hop, a.blocks, a.n)
        print(f"hop {hop:>2}: bare set+invoke+get {b * 1e6:6.2f} us | agent stage ({hop} push + hand-off + "
              f"set+invoke+get + score) {g * 1e6:6.2f} us | overhead ratio {g / b:.2f} (target <= 1.2)")
    if OLD_MODEL.exists():
        for hop in (1, 4):
            b, g = latency(hop, a.blocks, a.n, OLD_MODEL)
            print(f"previous model 1.0.0 (reconstruction output, numpy standardise + MSE), hop {hop}: bare "
                  f"{b * 1e6:6.2f} us | agent {g * 1e6:6.2f} us | overhead ratio {g / b:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-big-"))
    for score in (False, True):
        big = big_model(tmp, score=score)
        what = "score in the graph" if score else "reconstruction output, numpy scoring"
        for hop in (1, 4):
            b, g = latency(hop, a.blocks, max(200, a.n // 10), big, 256)
            print(f"larger model (window 256, 256-128-32-128-256, {what}), hop {hop}: bare {b * 1e6:6.2f} us | "
                  f"agent {g * 1e6:6.2f} us | overhead ratio {g / b:.2f}")
    sat, model_only = saturation(a.seconds)
    print(f"saturation: {sat:,.0f} windows/s through the service worker incl. publishing each result to the "
          f"SQLite outbox; {model_only:,.0f} windows/s for Model.score alone")
    r0, r1, r2 = rss()
    print(f"RSS: {r0:.1f} MB (python+numpy+edge_agent) -> {r1:.1f} MB after importing the runtime "
          f"(+{r1 - r0:.1f}) -> {r2:.1f} MB with the model loaded (+{r2 - r1:.1f}; +{r2 - r0:.1f} in total)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
