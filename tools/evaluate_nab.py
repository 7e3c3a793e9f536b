"""Judge the shipped anomaly model on NAB's machine temperature series, replayed through the real agent.

    /tmp/venv/bin/python tools/evaluate_nab.py [--hop 4 --alarm-after 3 --rearm 36]

What runs: a throwaway mosquitto (DevBroker), the agent (``App``) with a ``replay`` sensor playing the
CSV as fast as the pipeline takes it with the file's own timestamps, the shipped model
(``builtin:machine_temp_ae``) on that sensor, and an MQTT subscriber collecting every inference result
and alarm *as they arrive at the broker*. Nothing is scored outside the agent.

Printed: a Markdown table per labelled window (first alarm inside it, hours after the window opened
and before it closed; alarms in the 24 h before it opened; peak score), the alarms outside every
window (false alarms), and — computed afterwards from the received scores with the same debounce
logic — how those numbers move with the threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAB = ROOT.parent / "shared" / "data" / "nab"


def _t(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


def _fmt(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def run_agent(hop: int, alarm_after: int, rearm: int) -> tuple[list[dict[str, Any]], dict[str, Any], float]:
    from edge_agent import config as config_mod
    from edge_agent.app import App
    from edge_agent.devbroker import DevBroker
    from tests.helpers import Collector, wait_for

    tmp = Path(tempfile.mkdtemp(prefix="nab-eval-"))
    broker = DevBroker(workdir=tmp / "broker").start()
    text = f"""
[device]
id = "nab"
[mqtt]
host = "127.0.0.1"
port = {broker.port}
[storage]
dir = "{tmp / 'state'}"
[commands]
enabled = false
[messaging]
enabled = false
[[sensors]]
name = "machine_temp"
type = "replay"
path = "{NAB / 'machine_temperature_system_failure.csv'}"
time_column = "timestamp"
value_column = "value"
speed = 0
use_file_time = true
[[models]]
name = "machine"
path = "builtin:machine_temp_ae"
inputs = ["machine_temp"]
window = 32
hop = {hop}
alarm_after = {alarm_after}
rearm = {rearm}
queue = 100000
"""
    t0 = time.monotonic()
    app = App(config_mod.loads(text))
    col = Collector(broker.port, "edge/nab/#").start()
    try:
        app.start()
        assert app.wait_sensors_done(600), "replay did not finish"
        inf = app.service("inference")
        assert inf.wait_idle(120)
        desc = inf.describe()[0]
        wait_for(lambda: len(col.seqs("inference/machine")) >= desc["windows_run"], 120, msg="results")
        wait_for(lambda: len(col.seqs("events/machine_anomaly")) >= desc["alarms"], 60, msg="alarms")
    finally:
        app.stop()
        col.stop()
        broker.close()
    with col.lock:
        envs = [e for e in col.envelopes if e["stream"] in ("inference/machine", "events/machine_anomaly")]
    return envs, desc, time.monotonic() - t0


def debounce(scores: list[float], thr: float, after: int, rearm: int) -> list[int]:
    """Indices where the service would raise an alarm (same rule as InferenceService._run_one)."""
    out, above, below, on = [], 0, 0, False
    for k, s in enumerate(scores):
        if s >= thr:
            above += 1
            below = 0
            if not on and above >= after:
                on = True
                out.append(k)
        else:
            above = 0
            if on:
                below += 1
                if below >= rearm:
                    on, below = False, 0
    return out


def judge(alarm_ts: list[float], wins: list[tuple[float, float]]) -> tuple[list[dict[str, Any]], int]:
    rows = []
    for a, b in wins:
        inside = [t for t in alarm_ts if a <= t <= b]
        before = [t for t in alarm_ts if a - 86400 <= t < a]
        rows.append({"first": inside[0] if inside else None, "n_inside": len(inside), "before": before})
    false = sum(1 for t in alarm_ts if not any(a <= t <= b for a, b in wins))
    return rows, false


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hop", type=int, default=4)
    ap.add_argument("--alarm-after", type=int, default=3)
    ap.add_argument("--rearm", type=int, default=36)
    a = ap.parse_args(argv)
    windows = json.loads((NAB / "machine_temperature_windows.json").read_text())
    wins = [(_t(s), _t(e)) for s, e in next(iter(windows.values()))]
    envs, desc, took = run_agent(a.hop, a.alarm_after, a.rearm)
    results = sorted((e for e in envs if e["stream"] == "inference/machine"), key=lambda e: e["data"]["window"])
    alarms = [e["data"]["ts"][1] for e in envs if e["stream"] == "events/machine_anomaly"]
    alarms.sort()
    thr = results[0]["data"]["threshold"]
    print(f"replayed 22,695 readings through the agent in {took:.1f} s; model {desc['version']} "
          f"sha256 {desc['sha256'][:12]}; window 32, hop {a.hop} ({a.hop * 5} min), alarm_after {a.alarm_after}, "
          f"rearm {a.rearm}; threshold {thr}; windows run {desc['windows_run']}, skipped {desc['windows_skipped']}; "
          f"alarms {len(alarms)} (all received at the broker)\n")
    rows, false = judge(alarms, wins)
    ends = [r["data"]["ts"][1] for r in results]
    scores = [r["data"]["score"] for r in results]
    print("| # | labelled window (UTC) | alarm raised inside? | first alarm | h after start | h before end "
          "| alarms in 24 h before | first score >= threshold inside | peak score inside |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, ((s, e), r) in enumerate(zip(wins, rows, strict=True), 1):
        peak = max((sc for t, sc in zip(ends, scores, strict=True) if s <= t <= e), default=float("nan"))
        over = next((t for t, sc in zip(ends, scores, strict=True) if s <= t <= e and sc >= thr), None)
        over_s = f"{(over - s) / 3600:.1f} h after start" if over is not None else "never"
        before = ", ".join(f"{(s - t) / 3600:.1f} h before" for t in r["before"]) or "none"
        if r["first"] is None:
            print(f"| {i} | {_fmt(s)} to {_fmt(e)} | no | - | - | - | {before} | {over_s} | {peak:.3g} |")
        else:
            f = r["first"]
            print(f"| {i} | {_fmt(s)} to {_fmt(e)} | yes ({r['n_inside']}) | {_fmt(f)} | {(f - s) / 3600:.1f} | "
                  f"{(e - f) / 3600:.1f} | {before} | {over_s} | {peak:.3g} |")
    print(f"\nalarms outside every window (false alarms): {false} of {len(alarms)}")
    outside = [_fmt(t) for t in alarms if not any(s <= t <= e for s, e in wins)]
    print("  at: " + ", ".join(outside))
    print("\nthreshold sweep (post hoc, from the received scores, same debounce):")
    print("| threshold | x train max | windows with an alarm inside | false alarms |")
    print("|---|---|---|---|")
    train_max = thr / 3.0
    for f in (1.5, 3, 5, 10, 20):
        idx = debounce(scores, train_max * f, a.alarm_after, a.rearm)
        r2, f2 = judge([ends[k] for k in idx], wins)
        hit = "".join("✓" if r["first"] is not None else "·" for r in r2)
        print(f"| {train_max * f:.4g} | {f:g} | {sum(r['first'] is not None for r in r2)}/4 ({hit}) | {f2} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
