"""Peak RSS of the agent with one model beside the same agent without, and what each import costs.

    python bench/memory.py [--seconds 8] [--knobs]

Each variant is a real ``python -m edge_agent run`` process (one simulated sensor at 100 Hz, a real
mosquitto), run for ``--seconds``; printed is its peak RSS (``VmHWM`` from /proc, read just before it
is stopped) and, at that moment, its RSS, its anonymous RSS (``RssAnon``: the process's own memory; the
rest of RSS is clean pages of shared libraries, which the kernel can drop and re-read) and its PSS
(``smaps_rollup``: shared pages divided among the processes mapping them, so it depends on what else
runs on the host, e.g. other Python processes sharing libpython and numpy). Variants: no model; the
shipped autoencoder (``builtin:machine_temp_ae``, window 32, hop 4, calibrating); the level-shift
detector (``builtin:level_shift``, window 96); the shipped model on the Python wrapper + numpy
(``EDGE_AGENT_TFLITE=python``); with ``--knobs`` also the environment settings tried to shrink it
(OpenBLAS threads, glibc arenas). Then, in fresh interpreters, RSS / anonymous / file-backed after each
import step (python + edge_agent.app, [+ numpy,] + the inference service, + the TFLite runtime, + a
loaded model, + ``malloc_trim``), for the default backend (the LiteRT C API) and for the Python wrapper.
Target (issue 16): peak RSS with one model <= 45 MB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.devbroker import DevBroker  # noqa: E402

AE = 'path = "builtin:machine_temp_ae"\nwindow = 32\n'
# (label, [[models]] body or '', environment added)
PYWRAP = {"EDGE_AGENT_TFLITE": "python"}  # force the Python wrapper + numpy instead of the LiteRT C API
VARIANTS: list[tuple[str, str, dict[str, str]]] = [
    ("no model", "", {}),
    ("machine_temp_ae (window 32)", AE, {}),
    ("level_shift (window 96)", 'path = "builtin:level_shift"\nwindow = 96\n', {}),
    ("machine_temp_ae, EDGE_AGENT_TFLITE=python", AE, PYWRAP),
]
BLAS1 = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
EXTRA: list[tuple[str, str, dict[str, str]]] = [  # --knobs: environment settings tried on the shipped model
    ("machine_temp_ae + OPENBLAS/OMP_NUM_THREADS=1", AE, BLAS1),
    ("machine_temp_ae + MALLOC_ARENA_MAX=2", AE, {"MALLOC_ARENA_MAX": "2"}),
    ("machine_temp_ae + both", AE, {**BLAS1, "MALLOC_ARENA_MAX": "2"}),
    ("no model + MALLOC_ARENA_MAX=2", "", {"MALLOC_ARENA_MAX": "2"}),
]


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_variant(broker: DevBroker, tmp: Path, name: str, model: str, seconds: float,
                env: dict[str, str] | None = None) -> tuple[float, float, float, float]:
    """(peak RSS, current RSS, current PSS, current anonymous RSS) in MB of an agent process with ``model``
    (a [[models]] body, or '') and ``env`` added to its environment."""
    cfg = tmp / f"{abs(hash(name))}.toml"
    body = f'[[models]]\nname = "m"\ninputs = ["s"]\nhop = 4\nqueue = 16\n{model}' if model else ""
    cfg.write_text(f"""
[device]
id = "mem"
[mqtt]
port = {broker.port}
[storage]
dir = "{tmp / ('state-' + str(abs(hash(name))))}"
[agent]
status_interval = 3600
[commands]
enabled = false
[messaging]
enabled = false
[[sensors]]
name = "s"
type = "simulated"
interval = 0.01
{body}""")
    p = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    try:
        time.sleep(seconds)
        if p.poll() is not None:
            raise SystemExit(f"{name}: the agent exited with {p.returncode}")
        return (_status_mb(p.pid, "VmHWM"), _status_mb(p.pid, "VmRSS"), _pss_mb(p.pid),
                _status_mb(p.pid, "RssAnon"))
    finally:
        p.terminate()
        p.wait(15)


STEPS = r"""
import sys, json
from pathlib import Path
def mem():
    d = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
            d[line.split(":")[0]] = int(line.split()[1]) / 1024
    return [d["VmRSS"], d["RssAnon"], d["RssFile"]]
out = []
import os
if sys.argv[1] == "pywrap":
    os.environ["EDGE_AGENT_TFLITE"] = "python"
import edge_agent.app
out.append(("python + edge_agent.app", *mem()))
if sys.argv[1] == "pywrap":
    import numpy
    out.append(("+ numpy", *mem()))
import edge_agent.inference.service
out.append(("+ edge_agent.inference.service", *mem()))
from edge_agent.inference import runtime
runtime.unavailable_reason()
out.append(("+ the TFLite runtime (%s)" % runtime.runtime_name(), *mem()))
from edge_agent.config import ModelConfig
from edge_agent.inference.model import load, BUILTIN_DIR
m = load(ModelConfig(name="m", path="builtin:machine_temp_ae", inputs=["s"]),
         BUILTIN_DIR / "machine_temp_ae.tflite")
m.self_test()
out.append(("+ the shipped model loaded and run (numpy imported: %s)" % ("numpy" in sys.modules), *mem()))
import ctypes
ctypes.CDLL("libc.so.6").malloc_trim(0)
out.append(("+ malloc_trim(0)", *mem()))
print(json.dumps(out))
"""


def import_steps(kind: str) -> list[tuple[str, float, float, float]]:
    """(label, RSS, RssAnon, RssFile) in MB after each step, in a fresh interpreter; ``kind`` "capi" (the
    agent's default: the LiteRT C API through ctypes, no numpy) or "pywrap" (numpy + a Python wrapper)."""
    r = subprocess.run([sys.executable, "-c", STEPS, kind], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    import json

    return [tuple(x) for x in json.loads(r.stdout.strip().splitlines()[-1])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--knobs", action="store_true", help="also the environment settings of EXTRA")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    broker = DevBroker(workdir=tmp / "broker").start()
    try:
        print(f"agent, 1 simulated sensor at 100 Hz, {a.seconds:g} s (target with one model: peak RSS <= 45 MB)")
        base = None
        for name, model, env in VARIANTS + (EXTRA if a.knobs else []):
            peak, now, pss, anon = run_variant(broker, tmp, name, model, a.seconds, env)
            base = peak if base is None else base
            extra = "" if peak == base else f" ({peak - base:+4.1f})"
            print(f"{name:44s}: peak RSS {peak:5.1f} MB{extra:8s} | now: RSS {now:5.1f}, anon {anon:5.1f}, "
                  f"PSS {pss:5.1f} MB", flush=True)
    finally:
        broker.close()
    for kind in ("capi", "pywrap"):
        prev = 0.0
        for label, mb, anon, file in import_steps(kind):
            delta = f"({mb - prev:+4.1f})" if prev else "       "
            print(f"  {label:60s} RSS {mb:5.1f} MB {delta}  anon {anon:5.1f}  file-backed {file:5.1f}")
            prev = mb
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
