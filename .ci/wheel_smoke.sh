#!/bin/sh
# Build the wheel, install it (not editable) into a clean venv, and run the agent from it for a few
# seconds with the shipped model (builtin:machine_temp_ae) on a simulated sensor and a throwaway
# mosquitto: passes when inference results and a calibration event arrive at the broker.
# Catches what the editable test install cannot: a data file the code loads but the wheel leaves out.
# Usage: .ci/wheel_smoke.sh [python]   (default python3; needs mosquitto and network for the deps)
set -eu
cd "$(dirname "$0")/.."
PY=${1:-python3}
work=$(mktemp -d /tmp/edge-wheel-smoke.XXXXXX)
trap 'rm -rf "$work"' EXIT
# from a clean copy of the checkout: a stale build/ here could put files in the wheel that the config leaves out
mkdir "$work/src"
git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$work/src"
"$PY" -m pip wheel --no-deps -q -w "$work/dist" "$work/src"
"$PY" -m venv "$work/venv"
whl=$(ls "$work"/dist/edge_agent-*.whl)
"$work/venv/bin/pip" install -q "$whl[tflite]"
cd "$work"  # away from the source tree: edge_agent must come from the installed wheel
unset PYTHONPATH
"$work/venv/bin/python" - <<'PY'
import os, subprocess, sys, time
from pathlib import Path

import edge_agent
from edge_agent.devbroker import DevBroker
from edge_agent.transport.mqtt import MqttTransport
from edge_agent.config import MqttConfig
from edge_agent import codec

assert "site-packages" in edge_agent.__file__, f"edge_agent imported from {edge_agent.__file__}, not the wheel"
work = Path.cwd()
broker = DevBroker(workdir=work / "broker").start()
cfg = work / "agent.toml"
cfg.write_text(f"""
[device]
id = "smoke"
[mqtt]
host = "127.0.0.1"
port = {broker.port}
[storage]
dir = "{work / 'state'}"
[[sensors]]
name = "temp"
type = "simulated"
interval = 0.01
offset = 80.0
amplitude = 5.0
[[models]]
name = "machine"
path = "builtin:machine_temp_ae"
inputs = ["temp"]
window = 32
hop = 4
warmup_windows = 50
""")
got: list[dict] = []
t = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port), client_id="smoke-sub",
                  on_message=lambda m: got.append(codec.decode_envelope(m.payload)))
t.subscribe("edge/smoke/inference/#", qos=1)
t.subscribe("edge/smoke/events/#", qos=1)
t.start()
agent = subprocess.Popen([str(Path(sys.executable).with_name("edge-agent")), "run", "-c", str(cfg)])
try:
    deadline = time.monotonic() + 30
    def streams() -> set[str]:
        return {e["stream"] for e in list(got)}
    bad = {"events/model_error", "events/inference_unavailable"}
    while time.monotonic() < deadline and not {"inference/machine", "events/model_calibrated"} <= streams():
        if streams() & bad:
            break
        if agent.poll() is not None:
            sys.exit(f"wheel smoke: the agent exited with {agent.returncode}")
        time.sleep(0.2)
    errors = [e for e in list(got) if e["stream"] in bad]
    assert not errors, f"wheel smoke: {errors}"
    res = [e for e in list(got) if e["stream"] == "inference/machine"]
    cal = [e for e in list(got) if e["stream"] == "events/model_calibrated"]
    assert res and cal, f"wheel smoke: no results/calibration within 30 s; streams seen: {sorted(streams())}"
    print(f"wheel smoke: OK, {len(res)} results from the shipped model, calibrated threshold "
          f"{cal[0]['data']['threshold']:.4g}, from {edge_agent.__file__}")
finally:
    agent.terminate()
    agent.wait(10)
    t.stop()
    broker.close()
PY
