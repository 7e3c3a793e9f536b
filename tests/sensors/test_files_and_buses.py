"""onewire.ds18b20 (fake sysfs), i2c.bme280 (fake I2C register map), system (fake /proc and /sys)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from edge_agent import config
from edge_agent.errors import ConfigError, SensorError
from edge_agent.sensors.base import SensorContext
from edge_agent.sensors.i2c_bme280 import (
    Bme280Options,
    Bme280Sensor,
    Calibration,
    compensate_pressure,
    compensate_temperature,
)
from edge_agent.sensors.onewire_ds18b20 import Ds18b20Options, Ds18b20Sensor
from edge_agent.sensors.system import SystemOptions, SystemSensor
from tests.sensors.fakes import (
    DATASHEET_ADC_P,
    DATASHEET_ADC_T,
    DATASHEET_TP,
    HUM_CAL,
    FakeI2CBus,
    bme280_registers,
    proc_tree,
    w1_slave_text,
    w1_tree,
)

DEV = "28-0316a2791cff"
DEV2 = "28-0416b1a2c3d4"


def _ctx() -> SensorContext:
    return SensorContext(emit=lambda *a, **k: None, log=logging.getLogger("test"))


# ---------------------------------------------------------------------------- DS18B20

def test_ds18b20_reads_the_only_device(tmp_path: Path) -> None:
    root = w1_tree(tmp_path / "w1", {DEV: w1_slave_text(23125)})
    s = Ds18b20Sensor("t", Ds18b20Options(root=str(root)), _ctx())
    s.open()
    assert s.device == DEV
    assert s.read() == {"value": 23.125}
    (root / DEV / "w1_slave").write_text(w1_slave_text(-1062))
    assert s.read() == {"value": -1.062}


def test_ds18b20_crc_failure_is_retried_then_reported(tmp_path: Path) -> None:
    root = w1_tree(tmp_path / "w1", {DEV: w1_slave_text(21000, crc_ok=False)})
    s = Ds18b20Sensor("t", Ds18b20Options(root=str(root), device=DEV, retries=2), _ctx())
    s.open()
    with pytest.raises(SensorError, match=r"CRC check failed \(crc=57 NO\).*pull-up"):
        s.read()


def test_ds18b20_crc_failure_recovers_on_retry(tmp_path: Path) -> None:
    root = w1_tree(tmp_path / "w1", {DEV: w1_slave_text(21000, crc_ok=False)})
    s = Ds18b20Sensor("t", Ds18b20Options(root=str(root), device=DEV, retries=1), _ctx())
    s.open()
    calls = {"n": 0}
    real = Path.read_text

    def flaky(self: Path, *a: Any, **k: Any) -> str:
        calls["n"] += 1
        return real(self, *a, **k) if calls["n"] == 1 else w1_slave_text(21000)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "read_text", flaky)
        assert s.read() == {"value": 21.0}
    assert calls["n"] == 2


def test_ds18b20_power_on_reset_value_is_an_error(tmp_path: Path) -> None:
    root = w1_tree(tmp_path / "w1", {DEV: w1_slave_text(85000)})
    s = Ds18b20Sensor("t", Ds18b20Options(root=str(root)), _ctx())
    s.open()
    with pytest.raises(SensorError, match=r"85\.000 °C power-on reset"):
        s.read()


def test_ds18b20_unplugged_device(tmp_path: Path) -> None:
    root = w1_tree(tmp_path / "w1", {DEV: w1_slave_text(20000), DEV2: w1_slave_text(19000)})
    s = Ds18b20Sensor("t", Ds18b20Options(root=str(root), device=DEV), _ctx())
    s.open()
    assert s.read() == {"value": 20.0}
    (root / DEV / "w1_slave").unlink()
    (root / DEV).rmdir()
    with pytest.raises(SensorError, match=f"{DEV}: device missing .*present: {DEV2}"):
        s.read()


def test_ds18b20_several_devices_need_a_name(tmp_path: Path) -> None:
    root = w1_tree(tmp_path / "w1", {DEV: w1_slave_text(1), DEV2: w1_slave_text(2)})
    s = Ds18b20Sensor("t", Ds18b20Options(root=str(root)), _ctx())
    s.open()
    with pytest.raises(SensorError, match=f"2 DS18B20 on the bus \\({DEV}, {DEV2}\\): set device"):
        s.read()


def test_ds18b20_bus_not_enabled(tmp_path: Path) -> None:
    s = Ds18b20Sensor("t", Ds18b20Options(root=str(tmp_path / "nope")), _ctx())
    with pytest.raises(SensorError, match=r"1-Wire is not enabled.*dtoverlay=w1-gpio"):
        s.open()


def test_ds18b20_device_id_validated() -> None:
    with pytest.raises(ConfigError, match=r"sensors\[0\]\.device: '29-12' is not allowed"):
        config.loads('[[sensors]]\nname="t"\ntype="onewire.ds18b20"\ndevice="29-12"\n')


# ---------------------------------------------------------------------------- BME280

def test_datasheet_example_temperature_and_pressure() -> None:
    """BMP280 datasheet 3.12 example (same formulas in the BME280): 25.08 °C, 100653.27 Pa.

    The datasheet's double-precision column carries t_fine unrounded (128422.2869); the reference code
    (and this plugin) truncates it to an integer first, which moves the pressure by 0.01 Pa.
    """
    cal = Calibration(**DATASHEET_TP)
    t, t_fine = compensate_temperature(cal, DATASHEET_ADC_T)
    assert round(t, 2) == 25.08 and t_fine == 128422
    assert compensate_pressure(cal, DATASHEET_ADC_P, t_fine) == pytest.approx(100653.27, abs=0.015)
    assert compensate_pressure(cal, DATASHEET_ADC_P, 128422.2869) == pytest.approx(100653.27, abs=0.005)  # type: ignore[arg-type]


def _int_humidity(c: dict[str, int], adc_h: int, t_fine: int) -> float:
    """The datasheet's 32-bit integer humidity formula (4.2.3), as an independent reference."""
    v = t_fine - 76800
    v = (((((adc_h << 14) - (c["H4"] << 20) - (c["H5"] * v)) + 16384) >> 15)
         * (((((((v * c["H6"]) >> 10) * (((v * c["H3"]) >> 11) + 32768)) >> 10) + 2097152) * c["H2"] + 8192) >> 14))
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * c["H1"]) >> 4)
    v = min(max(v, 0), 419430400)
    return (v >> 12) / 1024.0


def _int_temperature(c: dict[str, int], adc_t: int) -> tuple[float, int]:
    var1 = (((adc_t >> 3) - (c["T1"] << 1)) * c["T2"]) >> 11
    var2 = (((((adc_t >> 4) - c["T1"]) * ((adc_t >> 4) - c["T1"])) >> 12) * c["T3"]) >> 14
    t_fine = var1 + var2
    return ((t_fine * 5 + 128) >> 8) / 100.0, t_fine


def test_bme280_over_a_fake_bus_matches_the_datasheet() -> None:
    bus = FakeI2CBus()
    adc_h = 0x6A00
    bus.add(0x76, bme280_registers(adc_t=DATASHEET_ADC_T, adc_p=DATASHEET_ADC_P, adc_h=adc_h))
    s = Bme280Sensor("climate", Bme280Options(decimals=3), _ctx(), bus=bus)
    s.open()
    assert s.cal is not None and HUM_CAL["H4"] == s.cal.H4 and HUM_CAL["H5"] == s.cal.H5 and s.cal.P6 == -7
    r = s.read()
    t_int, t_fine = _int_temperature(DATASHEET_TP, DATASHEET_ADC_T)
    assert t_int == 25.08 and r["temperature"] == pytest.approx(25.082, abs=0.001)
    assert r["pressure"] == pytest.approx(1006.5327, abs=0.001)  # hPa
    assert r["humidity"] == pytest.approx(_int_humidity(HUM_CAL, adc_h, t_fine), abs=0.01)
    assert 0 < r["humidity"] < 100
    # forced mode: ctrl_hum before ctrl_meas, then one forced conversion per read
    regs = [(reg, val) for _, reg, val in bus.writes]
    assert regs.index((0xF2, 1)) < regs.index((0xF4, 0b001_001_01))


def test_bmp280_has_no_humidity() -> None:
    bus = FakeI2CBus()
    bus.add(0x77, bme280_registers(adc_t=DATASHEET_ADC_T, adc_p=DATASHEET_ADC_P, chip_id=0x58))
    s = Bme280Sensor("c", Bme280Options(address=0x77), _ctx(), bus=bus)
    s.open()
    assert set(s.read()) == {"temperature", "pressure"}


def test_bme280_absent_chip_is_a_read_error_then_recovers() -> None:
    bus = FakeI2CBus()
    s = Bme280Sensor("c", Bme280Options(), _ctx(), bus=bus)
    s.open()  # nothing answers at 0x76: logged, not fatal
    with pytest.raises(SensorError, match=r"BME280 at 0x76 on /dev/i2c-1: no answer.*i2cdetect -y 1"):
        s.read()
    bus.add(0x76, bme280_registers(adc_t=DATASHEET_ADC_T, adc_p=DATASHEET_ADC_P, adc_h=0x6A00))
    assert s.read()["temperature"] == 25.08
    bus.fail = True  # unplugged mid-run
    with pytest.raises(SensorError, match="no answer"):
        s.read()


def test_bme280_wrong_chip_id() -> None:
    bus = FakeI2CBus()
    bus.add(0x76, {0xD0: 0x55})
    s = Bme280Sensor("c", Bme280Options(), _ctx(), bus=bus)
    s.open()
    with pytest.raises(SensorError, match="chip id 0x55 is neither a BME280"):
        s.read()


def test_bme280_missing_bus_device_is_a_start_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_bus(n: int) -> Any:
        raise FileNotFoundError(2, "No such file", f"/dev/i2c-{n}")

    monkeypatch.setattr(Bme280Sensor, "bus_factory", staticmethod(no_bus))
    with pytest.raises(SensorError, match="/dev/i2c-3 does not exist: enable I2C"):
        Bme280Sensor("c", Bme280Options(bus=3), _ctx()).open()


def test_bme280_address_validated() -> None:
    with pytest.raises(ConfigError, match=r"sensors\[0\]\.address: must be one of 118, 119, got 64"):
        config.loads('[[sensors]]\nname="c"\ntype="i2c.bme280"\naddress=0x40\n')


# ---------------------------------------------------------------------------- system

def test_system_reads_fake_proc(tmp_path: Path) -> None:
    root = proc_tree(tmp_path / "root")
    s = SystemSensor("sys", SystemOptions(root=str(root), disk_path=str(tmp_path)), _ctx())
    s.open()
    (root / "proc/stat").write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")  # +100 busy, +100 idle
    r = s.read()
    assert r["cpu_temp"] == 48.31
    assert r["cpu_pct"] == 50.0
    assert (r["load1"], r["load5"], r["load15"]) == (0.12, 0.08, 0.05)
    assert r["mem_used_pct"] == 41.7 and r["mem_available"] == 583000 * 1024
    assert 0 <= r["disk_used_pct"] <= 100 and r["disk_free"] > 0
    assert r["uptime"] == 86400.5


def test_system_without_thermal_zone_omits_cpu_temp(tmp_path: Path) -> None:
    root = proc_tree(tmp_path / "root", temp_milli=None)
    s = SystemSensor("sys", SystemOptions(root=str(root), fields=["cpu_temp", "load1"]), _ctx())
    s.open()
    assert s.read() == {"load1": 0.12}


def test_system_bad_root_and_fields(tmp_path: Path) -> None:
    with pytest.raises(SensorError, match="proc/loadavg is not readable"):
        SystemSensor("sys", SystemOptions(root=str(tmp_path)), _ctx()).open()
    with pytest.raises(ConfigError, match=r"sensors\[0\]\.fields\[1\]: unknown field 'cpu'"):
        config.loads('[[sensors]]\nname="s"\ntype="system"\nfields=["load1", "cpu"]\n')
