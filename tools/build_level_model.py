"""Write the shipped level-shift detector, ``edge_agent/data/models/level_shift.tflite`` (+ metadata).

    python tools/build_level_model.py

What the autoencoder (``machine_temp_ae``) cannot see by design, because it centres each window: a
*sustained change of level*. This model is a fixed statistical stage written as a TFLite graph, so it runs
through the same service as any model (windowing, alarms, hot-swap, calibration) and needs no training::

    score = | mean(last RECENT readings) - mean(the BASELINE readings before them) |

one FULLY_CONNECTED row (+1/RECENT on the recent readings, -1/BASELINE on the baseline) and ABS: raw
readings in, one value out (metadata ``"output": "score"``, ``"input": "raw"``). The score is in the
sensor's own unit, so it has no shipped threshold: it is calibrated on the device (metadata
``calibration``: ``margin`` x the ``quantile`` of the warm-up scores), i.e. an alarm means "the last
RECENT readings moved further from the readings before them than this sensor's warm-up ever did, by a
margin". With 5-minute readings: the last 2 h against the 6 h before.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tflite_build import Dense, Unary, build  # noqa: E402

OUT = HERE.parent / "edge_agent" / "data" / "models" / "level_shift.tflite"
BASELINE, RECENT = 72, 24
WINDOW = BASELINE + RECENT
VERSION = "1.0.0"
CALIBRATION = {"windows": 200, "quantile": 0.99, "margin": 2.0}  # fixed before any NAB series was scored


def weights() -> np.ndarray:
    w = np.concatenate([np.full(BASELINE, -1.0 / BASELINE), np.full(RECENT, 1.0 / RECENT)])
    return w.astype(np.float32)[None, :]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    blob = build(WINDOW, [Dense(weights(), np.zeros(1, np.float32)), Unary("abs")],
                 description=f"level_shift {VERSION}: |mean(last {RECENT}) - mean(previous {BASELINE})|")
    meta = {
        "name": "level_shift", "version": VERSION, "sha256": hashlib.sha256(blob).hexdigest(),
        "input_shape": [1, WINDOW], "input_dtype": "float32", "output_shape": [1, 1], "output": "score",
        "labels": [], "window": WINDOW, "inputs": 1, "input": "raw", "mean": [0.0], "std": [1.0],
        "calibration": CALIBRATION,
        "training": {"graph": f"raw window in; FULLY_CONNECTED (+1/{RECENT} on the last {RECENT} readings, "
                              f"-1/{BASELINE} on the {BASELINE} before) then ABS: |recent mean - baseline mean|",
                     "trained": False, "script": "tools/build_level_model.py"},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_bytes(blob)
    a.out.with_name(a.out.name + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{a.out}: {len(blob)} bytes, sha256 {meta['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
