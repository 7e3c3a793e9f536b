"""Peak RSS of the agent with one model beside the same agent without, and what each import costs.

    python bench/memory.py [--seconds 8]

Each variant is a real ``python -m edge_agent run`` process (one simulated sensor at 100 Hz, a real
mosquitto), run for ``--seconds``; printed is its peak RSS (``VmHWM`` from /proc, read just before it
is stopped) and its RSS at that moment. Variants: no model; the shipped autoencoder
(``builtin:machine_temp_ae``, window 32, hop 4, calibrating); the level-shift detector
(``builtin:level_shift``, window 96). Then, in fresh interpreters, the RSS added by each import step
(python + edge_agent.app, + numpy, + the TFLite runtime, + a loaded model). Target (issue 16): peak RSS
with one model <= 45 MB.
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

MODELS = {
    "no model": "",
    "machine_temp_ae (window 32)": 'path = "builtin:machine_temp_ae"\nwindow = 32\n',
    "level_shift (window 96)": 'path = "builtin:level_shift"\nwindow = 96\n',
}


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_variant(broker: DevBroker, tmp: Path, name: str, model: str, seconds: float) -> tuple[float, float]:
    """(peak RSS, current RSS) in MB of an agent process with ``model`` (a [[models]] body, or '')."""
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
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(seconds)
        if p.poll() is not None:
            raise SystemExit(f"{name}: the agent exited with {p.returncode}")
        return _status_mb(p.pid, "VmHWM"), _status_mb(p.pid, "VmRSS")
    finally:
        p.terminate()
        p.wait(15)


STEPS = r"""
import sys, json
from pathlib import Path
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
out = []
import edge_agent.app, edge_agent.inference.service
out.append(("python + edge_agent (app, inference service)", rss(), "numpy" in sys.modules))
import numpy
out.append(("+ numpy", rss(), True))
from edge_agent.inference import runtime
runtime.unavailable_reason()
out.append(("+ the TFLite runtime", rss(), True))
from edge_agent.config import ModelConfig
from edge_agent.inference.model import load, BUILTIN_DIR
m = load(ModelConfig(name="m", path="builtin:machine_temp_ae", inputs=["s"]), BUILTIN_DIR / "machine_temp_ae.tflite")
out.append(("+ the shipped model loaded", rss(), True))
print(json.dumps(out))
"""


def import_steps() -> list[tuple[str, float, bool]]:
    r = subprocess.run([sys.executable, "-c", STEPS], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    import json

    return [tuple(x) for x in json.loads(r.stdout.strip().splitlines()[-1])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    broker = DevBroker(workdir=tmp / "broker").start()
    try:
        base = None
        for name, model in MODELS.items():
            peak, now = run_variant(broker, tmp, name, model, a.seconds)
            base = peak if base is None else base
            extra = "" if peak == base else f" (+{peak - base:.1f} MB over no model; target <= 45 MB)"
            print(f"agent, 1 simulated sensor at 100 Hz, {name:28s}: peak RSS {peak:5.1f} MB, now {now:5.1f} MB"
                  + extra, flush=True)
    finally:
        broker.close()
    prev = 0.0
    for label, mb, np_loaded in import_steps():
        note = " (numpy already imported)" if np_loaded and prev == 0.0 else ""
        print(f"  {label:46s} {mb:5.1f} MB" + (f" (+{mb - prev:.1f})" if prev else "") + note)
        prev = mb
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
