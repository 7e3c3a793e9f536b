"""Sampling benchmark: timing quality, CPU cost and idle memory, each beside a baseline from the same run.

1. **Jitter and drift at 1 kHz for 10 s**: :class:`edge_agent.sampling.SensorRunner` with a sensor that
   records when it is read. Lateness of tick k = read time - (t0 + k * interval). Printed: p50/p99/max
   lateness and the lateness of the last tick (total drift). Baseline: the naive loop
   ``read(); sleep(interval)``, whose drift grows every tick.
2. **CPU with 10 sensors at 1 Hz**: a real ``edge-agent run`` process with 10 simulated sensors at 1 Hz
   publishing to a real Mosquitto; CPU seconds (utime + stime from /proc) over the window as a percent
   of one core. Baseline: the same agent with no sensors. Target: <= 2 %.
3. **Idle RSS beside mqtt-io 2.7**: the agent with a gpio.digital input and a gpio.output on the mock
   pin factory, and mqtt-io (in its own venv, ``--mqttio-venv``, installed with pip if missing) with a
   digital input and output on its ``mock`` GPIO module, both connected to the same broker, measured
   at the same time. If mqtt-io cannot be installed the comparison is skipped with the reason.

Run: ``python bench/sampling.py`` (about 1.5 min); ``--quick`` for a shorter smoke run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.devbroker import DevBroker  # noqa: E402
from edge_agent.sampling import SensorRunner  # noqa: E402
from edge_agent.sensors.base import Reading, Sensor, SensorContext  # noqa: E402


class Tick(Sensor):
    def __init__(self) -> None:
        import logging

        super().__init__("tick", None, SensorContext(emit=lambda *a, **k: None, log=logging.getLogger("bench")))
        self.times: list[float] = []

    def read(self) -> dict[str, Any]:
        self.times.append(time.monotonic())
        return {"value": 1}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def bench_jitter(rate: float, seconds: float) -> None:
    interval = 1.0 / rate
    n = int(rate * seconds)
    sensor = Tick()
    sink: list[Reading] = []
    runner = SensorRunner(sensor, interval, n, "telemetry", sink.append, lambda *a: None)
    c0 = time.process_time()
    runner.start()
    runner.done.wait(seconds * 3 + 10)
    cpu = time.process_time() - c0
    lat = [t - (runner.t0 + k * interval) for k, t in enumerate(sensor.times)]
    # skipped ticks shift k; recompute lateness against the nearest scheduled slot
    lat = [x - round(x / interval) * interval if x > interval else x for x in lat]
    wall = sensor.times[-1] - runner.t0
    drift = wall - (len(sensor.times) - 1 + runner.skipped) * interval
    print(f"[1] drift-free runner, {rate:g} Hz for {seconds:g} s: {len(sensor.times)} reads, "
          f"{runner.skipped} skipped")
    print(f"    lateness p50 {pct(lat, 50) * 1e6:.0f} us, p99 {pct(lat, 99) * 1e6:.0f} us, "
          f"max {max(lat) * 1e6:.0f} us; total drift {drift * 1e3:+.3f} ms; CPU {cpu / wall * 100:.1f} % of a core")

    # baseline: sleep(interval) after each read
    times: list[float] = []
    t0 = time.monotonic()
    for _ in range(n):
        times.append(time.monotonic())
        time.sleep(interval)
    b_wall = times[-1] - t0
    b_drift = b_wall - (n - 1) * interval
    b_gaps = [b - a - interval for a, b in itertools.pairwise(times)]
    print(f"    baseline read();sleep(interval): gap error p50 {pct(b_gaps, 50) * 1e6:.0f} us, "
          f"p99 {pct(b_gaps, 99) * 1e6:.0f} us; total drift {b_drift * 1e3:+.1f} ms "
          f"(runner drift is {abs(drift) / max(abs(b_drift), 1e-9) * 100:.2f} % of the baseline's)")


def _proc_cpu(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _agent_config(path: Path, port: int, state: Path, body: str) -> Path:
    path.write_text(f"""
[device]
id = "bench"
[mqtt]
port = {port}
topic_prefix = "bench"
[storage]
dir = "{state}"
[agent]
pin_factory = "mock"
status_interval = 3600
[commands]
enabled = false
{body}
""")
    return path


def _start_agent(cfg: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    return subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def bench_cpu(broker: DevBroker, tmp: Path, seconds: float) -> None:
    ten = "".join(f'\n[[sensors]]\nname = "s{i}"\ntype = "simulated"\ninterval = 1.0\n' for i in range(10))
    results = {}
    for label, body in (("no sensors (baseline)", ""), ("10 sensors at 1 Hz", ten)):
        cfg = _agent_config(tmp / f"cpu-{len(body)}.toml", broker.port, tmp / f"state-cpu-{len(body)}", body)
        p = _start_agent(cfg)
        try:
            time.sleep(4)  # imports, outbox open, connect
            c0, w0 = _proc_cpu(p.pid), time.monotonic()
            time.sleep(seconds)
            c1, w1 = _proc_cpu(p.pid), time.monotonic()
            results[label] = (c1 - c0) / (w1 - w0) * 100
        finally:
            _stop(p)
    base, ten_pct = results["no sensors (baseline)"], results["10 sensors at 1 Hz"]
    print(f"[2] agent CPU over {seconds:g} s (% of one core): no sensors {base:.2f} %, 10 sensors at 1 Hz "
          f"{ten_pct:.2f} % (target <= 2 %: {'ok' if ten_pct <= 2 else 'MISSED'}); sensors add "
          f"{ten_pct - base:+.2f} points")


MQTTIO_YML = """
mqtt:
  host: 127.0.0.1
  port: {port}
  topic_prefix: mqttio-bench
gpio_modules:
  - name: mock
    module: mock
digital_inputs:
  - name: button
    module: mock
    pin: 17
digital_outputs:
  - name: led
    module: mock
    pin: 18
"""


def _mqttio_python(venv: Path) -> tuple[Path | None, str]:
    py = venv / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import mqtt_io"], capture_output=True).returncode == 0
    if ok:
        return py, ""
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "mqtt-io==2.7.*"], capture_output=True,
                           text=True, timeout=600)
        if r.returncode != 0:
            return None, (r.stderr.strip().splitlines() or ["pip failed"])[-1]
    except (OSError, subprocess.SubprocessError) as e:
        return None, str(e)
    return py, ""


def bench_rss(broker: DevBroker, tmp: Path, venv: Path, settle: float) -> None:
    body = """
[[sensors]]
name = "button"
type = "gpio.digital"
device = "button"
pin = 17
[[outputs]]
name = "led"
type = "gpio.output"
device = "led"
pin = 18
"""
    cfg = _agent_config(tmp / "rss.toml", broker.port, tmp / "state-rss", body)
    py, why = _mqttio_python(venv)
    agent = _start_agent(cfg)
    mq: subprocess.Popen[bytes] | None = None
    if py is not None:
        yml = tmp / "mqttio.yml"
        yml.write_text(MQTTIO_YML.format(port=broker.port))
        mq = subprocess.Popen([str(py), "-m", "mqtt_io", str(yml)], cwd=tmp, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(settle)
        samples: dict[str, list[float]] = {"agent": [], "mqtt-io": []}
        cpu0 = {"agent": _proc_cpu(agent.pid), "mqtt-io": _proc_cpu(mq.pid) if mq else 0.0}
        t0 = time.monotonic()
        for _ in range(5):
            samples["agent"].append(_proc_rss_mb(agent.pid))
            if mq is not None and mq.poll() is None:
                samples["mqtt-io"].append(_proc_rss_mb(mq.pid))
            time.sleep(1)
        wall = time.monotonic() - t0
        a_cpu = (_proc_cpu(agent.pid) - cpu0["agent"]) / wall * 100
        a = statistics.median(samples["agent"])
        print(f"[3] idle (1 digital input + 1 output, mock GPIO, same broker): edge-agent RSS {a:.1f} MB, "
              f"CPU {a_cpu:.2f} %")
        if mq is None:
            print(f"    mqtt-io comparison SKIPPED: mqtt-io 2.7 could not be installed into {venv}: {why}")
        elif not samples["mqtt-io"]:
            print("    mqtt-io comparison SKIPPED: mqtt-io exited during the measurement")
        else:
            m = statistics.median(samples["mqtt-io"])
            m_cpu = (_proc_cpu(mq.pid) - cpu0["mqtt-io"]) / wall * 100
            print(f"    mqtt-io 2.7 RSS {m:.1f} MB, CPU {m_cpu:.2f} % (it polls inputs every 0.1 s); "
                  f"edge-agent / mqtt-io RSS = {a / m:.2f}")
    finally:
        _stop(agent)
        if mq is not None:
            _stop(mq)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short windows (smoke run)")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--cpu-seconds", type=float, default=30.0)
    ap.add_argument("--mqttio-venv", type=Path, default=Path("/tmp/mqttio-venv"))
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.cpu_seconds = 2.0, 5.0
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s), load {os.getloadavg()[0]:.2f}")
    bench_jitter(args.rate, args.seconds)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = DevBroker(workdir=tmp / "broker").start()
        try:
            bench_cpu(broker, tmp, args.cpu_seconds)
            bench_rss(broker, tmp, args.mqttio_venv, settle=3.0 if args.quick else 8.0)
        finally:
            broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
