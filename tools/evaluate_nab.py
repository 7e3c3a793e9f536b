"""Judge the shipped detectors on NAB-format series, replayed through the real agent.

    python tools/evaluate_nab.py                                   # machine temperature (the training series)
    python tools/evaluate_nab.py --csv ../shared/data/nab/nyc_taxi.csv
    python tools/evaluate_nab.py --all --plots docs/               # every series in --nab, one PNG each

What runs, per series: a throwaway mosquitto (DevBroker), the agent (``App``) with a ``replay`` sensor
playing the CSV (``timestamp,value``) as fast as the pipeline takes it with the file's own timestamps,
and on that sensor both shipped detectors with their on-device calibration *as shipped* (no per-series
tuning): ``shape`` = ``builtin:machine_temp_ae`` (window 32) and ``level`` = ``builtin:level_shift``
(window 96), hop 4, ``alarm_after`` 3, ``rearm`` 36. An MQTT subscriber collects every result and
alarm as they arrive at the broker; nothing is scored outside the agent.

Labelled windows: ``--windows`` is a JSON file ``{"<any key>": [[start, end], ...]}`` (NAB's
``labels/combined_windows.json`` format); the key whose last path part is the CSV's file name is used
(or the only key). Default: ``combined_windows_subset.json`` beside the CSV.

Printed per series: for each detector and for both together, the labelled windows with an alarm inside
(and hours from the window's start to the first one), the false-alarm episodes (alarms outside every
window: each alarm is one episode, ``rearm`` windows below the threshold separate episodes), the
learned thresholds, and which labelled windows the warm-up overlapped (no alarm is possible there).
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
DETECTORS = {"shape": ("builtin:machine_temp_ae", 32), "level": ("builtin:level_shift", 96)}


def _t(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


def _fmt(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def labelled_windows(csv: Path, windows: Path | None = None) -> list[tuple[float, float]]:
    """The labelled windows for ``csv`` from a NAB-format windows file (see the module doc)."""
    path = windows or csv.with_name("combined_windows_subset.json")
    d = json.loads(path.read_text())
    if not isinstance(d, dict) or not d:
        raise SystemExit(f"{path}: must be a JSON object of {{name: [[start, end], ...]}}")
    keys = [k for k in d if k.rsplit("/", 1)[-1] == csv.name] or (list(d) if len(d) == 1 else [])
    if not keys:
        raise SystemExit(f"{path}: no key for {csv.name} (keys: {', '.join(d)})")
    return [(_t(s), _t(e)) for s, e in d[keys[0]]]


def config_text(csv: Path, port: int, state: Path, hop: int, alarm_after: int, rearm: int) -> str:
    models = "".join(f"""
[[models]]
name = "{name}"
path = "{path}"
inputs = ["series"]
window = {window}
hop = {hop}
alarm_after = {alarm_after}
rearm = {rearm}
queue = 100000
""" for name, (path, window) in DETECTORS.items())
    return f"""
[device]
id = "nab"
[mqtt]
host = "127.0.0.1"
port = {port}
[storage]
dir = "{state}"
[commands]
enabled = false
[messaging]
enabled = false
[[sensors]]
name = "series"
type = "replay"
path = "{csv}"
time_column = "timestamp"
value_column = "value"
speed = 0
use_file_time = true
""" + models


def run_agent(csv: Path, hop: int = 4, alarm_after: int = 3, rearm: int = 36) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], float]:
    """Replay ``csv`` through the agent with both detectors; (envelopes received, describe(), seconds)."""
    from edge_agent import config as config_mod
    from edge_agent.app import App
    from edge_agent.devbroker import DevBroker
    from tests.helpers import Collector, wait_for

    tmp = Path(tempfile.mkdtemp(prefix="nab-eval-"))
    broker = DevBroker(workdir=tmp / "broker").start()
    t0 = time.monotonic()
    app = App(config_mod.loads(config_text(csv, broker.port, tmp / "state", hop, alarm_after, rearm)))
    col = Collector(broker.port, "edge/nab/#").start()
    try:
        app.start()
        assert app.wait_sensors_done(600), "replay did not finish"
        inf = app.service("inference")
        assert inf.wait_idle(120)
        desc = inf.describe()
        for d in desc:
            wait_for(lambda d=d: len(col.seqs(f"inference/{d['name']}")) >= d["windows_run"], 120, msg="results")
            wait_for(lambda d=d: len(col.seqs(f"events/{d['name']}_anomaly")) >= d["alarms"], 60, msg="alarms")
    finally:
        app.stop()
        col.stop()
        broker.close()
    with col.lock:
        envs = list(col.envelopes)
    return envs, desc, time.monotonic() - t0


def debounce(scores: list[float], thr: float, after: int, rearm: int) -> list[int]:
    """Indices where the service would raise an alarm (same rule as the service's debounce)."""
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
    """Per labelled window: first alarm inside, count inside, alarms in the 24 h before; and the number of
    alarms outside every window (false-alarm episodes)."""
    rows = []
    for a, b in wins:
        inside = [t for t in alarm_ts if a <= t <= b]
        before = [t for t in alarm_ts if a - 86400 <= t < a]
        rows.append({"first": inside[0] if inside else None, "n_inside": len(inside), "before": before})
    false = sum(1 for t in alarm_ts if not any(a <= t <= b for a, b in wins))
    return rows, false


def summarise(envs: list[dict[str, Any]], wins: list[tuple[float, float]]) -> dict[str, Any]:
    """Per detector (and 'both'): results, alarms, the judge() rows, false alarms, calibration."""
    out: dict[str, Any] = {}
    every: list[float] = []
    for name in DETECTORS:
        res = sorted((e["data"] for e in envs if e["stream"] == f"inference/{name}"), key=lambda d: d["window"])
        alarms = sorted(e["data"]["ts"][1] for e in envs if e["stream"] == f"events/{name}_anomaly")
        cal = [e["data"] for e in envs if e["stream"] == "events/model_calibrated" and e["data"]["model"] == name]
        warm = [r["ts"][1] for r in res if r.get("calibrating")]
        rows, false = judge(alarms, wins)
        out[name] = {"results": res, "alarms": alarms, "rows": rows, "false": false,
                     "calibration": cal[0] if cal else None, "warmup_end": max(warm) if warm else None}
        every += alarms
    rows, false = judge(sorted(every), wins)
    out["both"] = {"alarms": sorted(every), "rows": rows, "false": false}
    return out


def _detected(rows: list[dict[str, Any]], wins: list[tuple[float, float]]) -> str:
    hit = [f"{k} ({(r['first'] - wins[k - 1][0]) / 3600:.1f} h)" for k, r in enumerate(rows, 1) if r["first"]]
    return f"{len(hit)}/{len(rows)}" + (": " + ", ".join(hit) if hit else "")


def report(name: str, s: dict[str, Any], wins: list[tuple[float, float]], took: float, n: int) -> list[str]:
    """Markdown table rows for one series (one per detector and one for both)."""
    lines = []
    for det in (*DETECTORS, "both"):
        d = s[det]
        if det == "both":
            extra = "-"
        else:
            cal, end = d["calibration"], d["warmup_end"]
            over = [k for k, (a, _) in enumerate(wins, 1) if end is not None and a <= end]
            extra = (f"thr {cal['threshold']:.4g}, scale {cal['input_scale']:.3g}; warm-up to {_fmt(end)}"
                     + (f" (overlaps window {', '.join(map(str, over))})" if over else "")
                     if cal else "never calibrated")
        lines.append(f"| {name} | {det} | {_detected(d['rows'], wins)} | {d['false']} | {len(d['alarms'])} "
                     f"| {extra} |")
    print(f"{name}: {n} readings replayed in {took:.1f} s", file=sys.stderr)
    return lines


def plot(path: Path, csv: Path, s: dict[str, Any], wins: list[tuple[float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [line.split(",") for line in csv.read_text().splitlines()[1:]]
    ts = [_t(r[0]) for r in rows]
    vals = [float(r[1]) for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(11, 6.5), sharex=True, dpi=72)
    axes[0].plot(_days(ts, ts[0]), vals, lw=0.5, color="k")
    axes[0].set_ylabel("value")
    for ax, det in zip(axes[1:], DETECTORS, strict=True):
        d = s[det]
        x = _days([r["ts"][1] for r in d["results"]], ts[0])
        ax.semilogy(x, [max(r["score"], 1e-9) for r in d["results"]], lw=0.5, label=f"{det} score")
        if d["calibration"]:
            ax.axhline(d["calibration"]["threshold"], color="r", lw=0.8, label="calibrated threshold")
        if d["warmup_end"]:
            ax.axvspan(0, _days([d["warmup_end"]], ts[0])[0], color="0.85", label="warm-up")
        for a in _days(d["alarms"], ts[0]):
            ax.axvline(a, color="r", lw=1.2, ls="--")
        ax.set_ylabel(det)
        ax.legend(loc="upper left", fontsize=7)
    for ax in axes:
        for a, b in wins:
            ax.axvspan(*_days([a, b], ts[0]), color="orange", alpha=0.25)
    axes[-1].set_xlabel(f"days since {_fmt(ts[0])} (orange: labelled windows; dashed red: alarms)")
    fig.suptitle(csv.name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _days(ts: list[float], t0: float) -> list[float]:
    return [(t - t0) / 86400 for t in ts]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, action="append", help="a NAB-format series (repeatable)")
    ap.add_argument("--windows", type=Path, help="labelled windows, NAB format (default: "
                                                 "combined_windows_subset.json beside the CSV)")
    ap.add_argument("--all", action="store_true", help="every *.csv in --nab")
    ap.add_argument("--nab", type=Path, default=NAB)
    ap.add_argument("--hop", type=int, default=4)
    ap.add_argument("--alarm-after", type=int, default=3)
    ap.add_argument("--rearm", type=int, default=36)
    ap.add_argument("--plots", type=Path, help="write nab_<series>.png here")
    a = ap.parse_args(argv)
    csvs = sorted(a.nab.glob("*.csv")) if a.all else (a.csv or [a.nab / "machine_temperature_system_failure.csv"])
    print("| series | detector | labelled windows with an alarm (h after the window opened) | false-alarm "
          "episodes | alarms | calibration (shipped rule) |")
    print("|---|---|---|---|---|---|")
    for csv in csvs:
        if not csv.exists():
            raise SystemExit(f"--csv {csv}: no such file")
        wins = labelled_windows(csv, a.windows)
        envs, _, took = run_agent(csv, a.hop, a.alarm_after, a.rearm)
        s = summarise(envs, wins)
        n = sum(1 for _ in csv.open()) - 1
        for line in report(csv.stem, s, wins, took, n):
            print(line, flush=True)
        if a.plots:
            a.plots.mkdir(parents=True, exist_ok=True)
            plot(a.plots / f"nab_{csv.stem}.png", csv, s, wins)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
