"""Every sensor plugin and the gpio.output actuator, in one in-process agent, against a real Mosquitto.

Only the hardware is faked (MockFactory pins and a mock SPI ADC, a fake 1-Wire sysfs tree, a fake I2C
register map, a fake /proc); config parsing, sampling, pipeline, outbox (SQLite), forwarder, MQTT and
the subscriber are the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent import config
from edge_agent.app import App
from edge_agent.devbroker import DevBroker
from edge_agent.sensors.i2c_bme280 import Bme280Sensor
from tests.helpers import Collector, unique, wait_for, write_config
from tests.sensors.fakes import (
    DATASHEET_ADC_P,
    DATASHEET_ADC_T,
    FakeI2CBus,
    MockMCP3x08,
    bme280_registers,
    proc_tree,
    w1_slave_text,
    w1_tree,
)

SENSORS = """
[agent]
pin_factory = "mock"
stop_timeout = 5

[[sensors]]
name = "sim"
type = "simulated"
interval = 0.2
count = 3

[[sensors]]
name = "rep"
type = "replay"
path = "{csv}"
speed = 0
use_file_time = true

[[sensors]]
name = "sys"
type = "system"
interval = 0.2
count = 2
root = "{proc}"
disk_path = "{tmp}"

[[sensors]]
name = "door"
type = "gpio.digital"
device = "reed"
pin = 17
bounce_time = 0

[[sensors]]
name = "soil"
type = "gpio.analog"
chip = "mcp3008"
channel = 3
interval = 0.2
count = 2
batch = 2

[[sensors]]
name = "tank"
type = "onewire.ds18b20"
interval = 0.2
count = 2
root = "{w1}"

[[sensors]]
name = "climate"
type = "i2c.bme280"
interval = 0.2
count = 2

[[outputs]]
name = "pump"
type = "gpio.output"
device = "relay"
pin = 23
active_high = false
"""


def test_every_plugin_reaches_the_broker(tmp_path: Path, broker: DevBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = tmp_path / "rec.csv"
    csv.write_text("timestamp,value\n2013-12-02 21:15:00,73.5\n2013-12-02 21:20:00,74.25\n")
    proc = proc_tree(tmp_path / "root")
    w1 = w1_tree(tmp_path / "w1", {"28-0316a2791cff": w1_slave_text(23125)})
    bus = FakeI2CBus()
    bus.add(0x76, bme280_registers(adc_t=DATASHEET_ADC_T, adc_p=DATASHEET_ADC_P, adc_h=0x6A00))
    monkeypatch.setattr(Bme280Sensor, "bus_factory", staticmethod(lambda n: bus))
    prefix = unique("hw")
    cfg_file = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", prefix=prefix,
                            sensors=SENSORS.format(csv=csv, proc=proc, tmp=tmp_path, w1=w1))
    text = cfg_file.read_text().replace("[agent]\nstop_timeout = 5\n", "", 1)  # ours carries pin_factory
    cfg_file.write_text(text)
    cfg = config.load(cfg_file)
    app = App(cfg)
    factory: Any = app.devices.pin_factory()
    adc = MockMCP3x08(factory, bits=10)
    adc.channels[3] = 1.65
    with Collector(broker.port, f"{prefix}/dev-1/#") as col:
        app.start()
        try:
            relay = factory.pin(23)
            assert relay.state == 1  # active-low relay held off from the start
            assert app.outputs["pump"].set(True, 0.2)["on"] is True
            assert relay.state == 0
            wait_for(lambda: relay.state == 1, 5, msg="auto-off")
            door = factory.pin(17)
            wait_for(lambda: "door" in app.sensors, 5)
            door.drive_low()   # reed closes (pull-up: active low)
            door.drive_high()

            def streams() -> set[str]:
                with col.lock:
                    return {e["stream"] for e in col.envelopes}

            want = {"telemetry/sim", "telemetry/rep", "telemetry/sys", "events/door", "telemetry/soil",
                    "telemetry/tank", "telemetry/climate"}
            wait_for(lambda: want <= streams(), 20, msg=f"streams {want}")
            for stream, n in (("events/door", 2), ("telemetry/sim", 3), ("telemetry/rep", 2)):
                wait_for(lambda s=stream, n=n: len([e for e in col.envelopes if e["stream"] == s]) >= n, 10,
                         msg=f"{n} on {stream}")
        finally:
            app.stop()
        assert relay.state == 1 or relay.function == "input"
        envs = list(col.envelopes)
    by: dict[str, list[dict[str, Any]]] = {}
    for e in envs:
        by.setdefault(e["stream"], []).append(e)
    assert all(e["dev"] == "dev-1" and e["v"] == 1 for e in envs)
    assert [e["data"] for e in by["telemetry/rep"]] == [{"value": 73.5}, {"value": 74.25}]
    assert [e["ts"] for e in by["telemetry/rep"]] == [1386018900.0, 1386019200.0]
    assert [(e["data"]["event"], e["cls"]) for e in by["events/door"]] == [("closed", "event"), ("open", "event")]
    soil = by["telemetry/soil"][0]["data"]  # batch = 2: arrays
    assert soil["raw"] == [512, 512] and len(soil["ts"]) == 2
    assert by["telemetry/tank"][0]["data"] == {"value": 23.125}
    climate = by["telemetry/climate"][0]["data"]
    assert climate["temperature"] == 25.08 and climate["pressure"] == pytest.approx(1006.53, abs=0.01)
    assert 0 < climate["humidity"] < 100
    sys_data = by["telemetry/sys"][-1]["data"]
    assert sys_data["cpu_temp"] == 48.31 and sys_data["load1"] == 0.12
    assert len(by["telemetry/sim"]) == 3
    assert "events/sensor_error" not in by and "events/output_error" not in by
