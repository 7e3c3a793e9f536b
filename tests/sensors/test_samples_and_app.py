"""Every plugin's SAMPLE block is valid config; sample-config shows them; the app opens/closes outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import actuators, config, sample, sensors
from edge_agent.app import App
from edge_agent.devbroker import free_port
from tests.helpers import write_config


def _fill(block: str, tmp_path: Path) -> str:
    """Point file/dir options of a sample at things that exist here."""
    f = tmp_path / "rec.csv"
    f.write_text("timestamp,value\n2020-01-01 00:00:00,1\n")
    return block.replace("/var/lib/edge-agent/recordings/machine_temperature.csv", str(f))


@pytest.mark.parametrize("name", sensors.plugin_names())
def test_sensor_sample_is_valid(name: str, tmp_path: Path) -> None:
    cls = sensors.plugin_class(name)
    assert cls.SAMPLE.strip(), f"{name} has no SAMPLE"
    assert cls.__module__ and (cls.__doc__ or __import__(cls.__module__, fromlist=["x"]).__doc__)
    cfg = config.loads(_fill(cls.SAMPLE, tmp_path))
    assert cfg.sensors[0].type == name
    # every option is documented
    import dataclasses
    for f in dataclasses.fields(cls.Options):
        assert f.metadata.get("doc"), f"{name}.{f.name} has no doc"


@pytest.mark.parametrize("name", actuators.plugin_names())
def test_output_sample_is_valid(name: str) -> None:
    cls = actuators.plugin_class(name)
    cfg = config.loads(cls.SAMPLE)
    assert cfg.outputs[0].type == name


def test_sample_config_shows_every_plugin() -> None:
    text = sample.render()
    for name in sensors.plugin_names() + actuators.plugin_names():
        assert f"# --- {name}" in text
    assert '# type = "i2c.bme280"' in text and '# type = "gpio.output"' in text


def test_unknown_type_suggests(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"unknown sensor type 'gpio.digitl' \(did you mean 'gpio.digital'"):
        config.loads('[[sensors]]\nname="x"\ntype="gpio.digitl"\npin=1\n')


def test_app_outputs_safe_state_busy_pin_reported_and_closed(tmp_path: Path) -> None:
    outs = """
[[outputs]]
name = "heater"
type = "gpio.output"
pin = 20
[[outputs]]
name = "clash"
type = "gpio.output"
pin = 20
[[outputs]]
name = "lamp"
type = "gpio.output"
device = "led"
pin = 21
"""
    cfg_file = write_config(tmp_path / "c.toml", free_port(), tmp_path / "state", sensors=outs)
    cfg_file.write_text(cfg_file.read_text().replace("[agent]\n", '[agent]\npin_factory = "mock"\n'))
    app = App(config.load(cfg_file))
    factory = app._get_pin_factory()
    app.start()
    try:
        assert sorted(app.outputs) == ["heater", "lamp"]  # the clash is reported, the agent runs on
        assert factory.pin(20).state == 0 and factory.pin(21).state == 0
        assert app.outputs["lamp"].set(True)["on"] and factory.pin(21).state == 1
        app.outputs["heater"].set(1, 30)
    finally:
        app.stop()
    assert factory.pin(21).state == 0 and factory.pin(20).state == 0  # switched off at stop
    from edge_agent.outbox import Outbox
    box = Outbox(tmp_path / "state" / "outbox.db", "dev-1").open()
    try:
        from edge_agent import codec
        envs = [codec.decode_envelope(p.payload) for p in box.begin(100)]
    finally:
        box.close()
    errs = [e for e in envs if e["stream"] == "events/output_error"]
    assert len(errs) == 1 and errs[0]["data"]["output"] == "clash"
    assert "pin GPIO20 is already used" in errs[0]["data"]["error"]


def test_hardware_reference_kit_config_is_valid() -> None:
    from tests.helpers import ROOT

    cfg = config.load(ROOT / "hardware" / "reference-kit.toml")
    pins_used = [s.options.pin for s in cfg.sensors if hasattr(s.options, "pin")]
    pins_used += [o.options.pin for o in cfg.outputs]
    assert len(pins_used) == len(set(pins_used)) == 7
    assert not {2, 3, 4, 7, 8, 9, 10, 11} & set(pins_used)  # I2C, 1-Wire and SPI pins stay free
