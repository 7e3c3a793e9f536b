"""Golden cases: ``cases/<name>/config.toml`` + input files -> ``expected.json`` (the stored envelopes).

Each case runs in the real :class:`~edge_agent.app.App` (config parsing, sampler, pipeline with
batching, sensor_error events, SQLite outbox) with no broker reachable; the envelopes are then read
back from the outbox in seq order. Inputs, by file name:

* ``input.csv`` / ``input.jsonl``: replay data (``{case}`` in the config is the case directory);
* ``w1/``, ``root/``: fake sysfs / procfs trees;
* ``registers.json``: the I2C register map per address (``{"0x76": {"0xD0": "0x60", ...}}``);
* ``adc.json``: ``{"bits": 10, "channels": {"0": 0.75}}`` volts on a mock MCP3x08;
* ``pins.json``: ``[["drive_low", 17], ["sleep", 1.2], ...]`` applied to MockFactory pins;
* ``sequence.json``: ``{"relative/file": [content before read 1, before read 2, ...]}``.

``expected.json`` lists ``{"stream", "data", "cls"?, "ts"?}``; ``ts`` is compared only where given
(file times). Regenerate after a deliberate change with ``EDGE_AGENT_UPDATE_GOLDEN=1`` and review the
diff.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent import codec, config
from edge_agent.app import OUTBOX_FILE, App
from edge_agent.devbroker import free_port
from edge_agent.outbox import Outbox
from edge_agent.sensors.i2c_bme280 import Bme280Sensor
from edge_agent.sensors.onewire_ds18b20 import Ds18b20Sensor
from tests.sensors.fakes import FakeI2CBus, MockMCP3x08

CASES = Path(__file__).parent / "cases"
HEADER = """
[device]
id = "golden"
[mqtt]
port = {port}
reconnect_min = 5.0
reconnect_max = 10.0
[storage]
dir = "{state}"
[agent]
pin_factory = "mock"
stop_timeout = 0
[commands]
enabled = false
[messaging]
enabled = false
"""


def _sequence(case: Path, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rewrite files before each DS18B20 read, as the kernel does between conversions."""
    seq_file = case / "sequence.json"
    if not seq_file.exists():
        return
    seq: dict[str, list[str]] = json.loads(seq_file.read_text())
    calls = {"n": 0}
    orig = Ds18b20Sensor.read

    def read(self: Ds18b20Sensor) -> dict[str, Any]:
        i = calls["n"]
        calls["n"] += 1
        for rel, contents in seq.items():
            if i < len(contents):
                (work / rel).write_text(contents[i])
        return orig(self)

    monkeypatch.setattr(Ds18b20Sensor, "read", read)


def run_case(case: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    work = tmp / "case"
    shutil.copytree(case, work)
    text = HEADER.format(port=free_port(), state=tmp / "state") + (work / "config.toml").read_text().replace(
        "{case}", str(work))
    cfg = config.loads(text, str(work / "config.toml"))
    if (work / "registers.json").exists():
        bus = FakeI2CBus()
        for addr, regs in json.loads((work / "registers.json").read_text()).items():
            bus.add(int(addr, 16), {int(r, 16): int(v, 16) for r, v in regs.items()})
        monkeypatch.setattr(Bme280Sensor, "bus_factory", staticmethod(lambda n: bus))
    _sequence(case, work, monkeypatch)
    app = App(cfg)
    factory = app.devices.pin_factory()
    if (work / "adc.json").exists():
        spec = json.loads((work / "adc.json").read_text())
        adc = MockMCP3x08(factory, bits=spec["bits"])
        for ch, volts in spec["channels"].items():
            adc.channels[int(ch)] = volts
    app.start()
    try:
        if (work / "pins.json").exists():
            for op, arg in json.loads((work / "pins.json").read_text()):
                if op == "sleep":
                    time.sleep(arg)
                else:
                    getattr(factory.pin(arg), op)()
        assert app.wait_sensors_done(30), "sensors did not finish"
    finally:
        app.stop()
    box = Outbox(tmp / "state" / OUTBOX_FILE, "golden").open()
    try:
        envs = [codec.decode_envelope(p.payload) for p in box.begin(100000)]
    finally:
        box.close()
    envs.sort(key=lambda e: e["seq"])
    assert [e["seq"] for e in envs] == list(range(1, len(envs) + 1))
    return envs


def _view(env: dict[str, Any], with_ts: bool) -> dict[str, Any]:
    v = {"stream": env["stream"], "data": env["data"]}
    if "cls" in env:
        v["cls"] = env["cls"]
    if with_ts:
        v["ts"] = env["ts"]
    data = v["data"]
    if isinstance(data, dict) and isinstance(data.get("ts"), list) and not with_ts:
        v["data"] = {k: x for k, x in data.items() if k != "ts"}  # batch arrays carry per-reading ts
    return v


@pytest.mark.parametrize("name", sorted(p.name for p in CASES.iterdir() if (p / "config.toml").exists()))
def test_golden(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES / name
    envs = run_case(case, tmp_path, monkeypatch)
    with_ts = "use_file_time = true" in (case / "config.toml").read_text()
    got = [_view(e, with_ts) for e in envs]
    exp_file = case / "expected.json"
    if os.environ.get("EDGE_AGENT_UPDATE_GOLDEN") == "1":
        exp_file.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
    expected = json.loads(exp_file.read_text())
    assert got == expected
