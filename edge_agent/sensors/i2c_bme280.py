"""``i2c.bme280``: Bosch BME280 temperature, humidity and pressure over I2C (smbus2).

Each reading is ``{"temperature": 25.08, "humidity": 46.2, "pressure": 1006.53}`` (°C, %RH, hPa); a
BMP280 (chip id 0x58, no humidity sensor) gives the same without ``humidity``.

The raw ADC values are turned into physical units with the floating-point compensation formulas of
the BME280 datasheet (BST-BME280-DS002, section 8.1), using the chip's own calibration words read
once at start (registers 0x88-0xA1 and 0xE1-0xE7). In ``forced`` mode (the default) each read starts
one conversion and the chip sleeps in between, which avoids self-heating at slow intervals; ``normal``
mode lets the chip convert continuously (with the IIR ``filter``) and a read just fetches the latest.

The bus is any object with smbus2's ``read_byte_data``, ``write_byte_data`` and
``read_i2c_block_data``; tests inject a register-map fake through ``bus=`` or :attr:`bus_factory`.

An unplugged chip is a read error (retried with backoff), not a start failure, so it is picked up
when it comes back.

Wiring (I2C1; see hardware/i2c-bme280.md)::

    BME280 breakout   Pi header pin (BCM)
    VIN / VCC      -> 1  3V3
    GND            -> 9  GND
    SCL            -> 5  GPIO3 SCL1
    SDA            -> 3  GPIO2 SDA1
    SDO            -> GND for address 0x76, 3V3 for 0x77 (many breakouts tie it already)

Enable I2C in /boot/firmware/config.txt with ``dtparam=i2c_arm=on``; the agent's user needs the
``i2c`` group for /dev/i2c-1. ``i2cdetect -y 1`` should show 76 or 77.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge_agent.errors import SensorError
from edge_agent.sensors.base import Sensor

SAMPLE = """\
[[sensors]]
name = "climate"
type = "i2c.bme280"
interval = 10.0
bus = 1                 # /dev/i2c-1 (header pins 3 and 5)
address = 0x76          # 0x76 (SDO to GND) or 0x77 (SDO to 3V3)
mode = "forced"         # forced: one conversion per reading; normal: continuous
# oversampling_t = 1    # 1, 2, 4, 8 or 16 (0 = skip temperature: not allowed)
# oversampling_p = 1    # 0 = skip pressure
# oversampling_h = 1    # 0 = skip humidity
# filter = 0            # IIR filter coefficient: 0, 2, 4, 8, 16
"""

REG_CHIP_ID = 0xD0
REG_RESET = 0xE0
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_DATA = 0xF7
CHIP_BME280 = 0x60
CHIP_BMP280 = 0x58
OSRS = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}
FILTER = {0: 0, 2: 1, 4: 2, 8: 3, 16: 4}
SKIPPED_20BIT = 0x80000  # ADC value when a measurement is skipped or not yet done
SKIPPED_16BIT = 0x8000


@dataclass(frozen=True)
class Bme280Options:
    bus: int = field(default=1, metadata={"doc": "I2C bus number (/dev/i2c-N).", "ge": 0})
    address: int = field(default=0x76, metadata={"doc": "I2C address: 0x76 (118) or 0x77 (119).",
                                                 "choices": (0x76, 0x77)})
    mode: str = field(default="forced", metadata={"doc": "forced (one conversion per read) or normal.",
                                                  "choices": ("forced", "normal")})
    oversampling_t: int = field(default=1, metadata={"doc": "Temperature oversampling.",
                                                     "choices": (1, 2, 4, 8, 16)})
    oversampling_p: int = field(default=1, metadata={"doc": "Pressure oversampling (0 = skip).",
                                                     "choices": tuple(OSRS)})
    oversampling_h: int = field(default=1, metadata={"doc": "Humidity oversampling (0 = skip).",
                                                     "choices": tuple(OSRS)})
    filter: int = field(default=0, metadata={"doc": "IIR filter coefficient.", "choices": tuple(FILTER)})
    decimals: int = field(default=2, metadata={"doc": "Decimal places kept.", "ge": 0, "le": 6})


@dataclass(frozen=True)
class Calibration:
    T1: int
    T2: int
    T3: int
    P1: int
    P2: int
    P3: int
    P4: int
    P5: int
    P6: int
    P7: int
    P8: int
    P9: int
    H1: int = 0
    H2: int = 0
    H3: int = 0
    H4: int = 0
    H5: int = 0
    H6: int = 0


def _u16(b: list[int], i: int) -> int:
    return b[i] | (b[i + 1] << 8)


def _s16(b: list[int], i: int) -> int:
    v = _u16(b, i)
    return v - 0x10000 if v & 0x8000 else v


def _s8(v: int) -> int:
    return v - 0x100 if v & 0x80 else v


def parse_calibration(tp: list[int], hum: list[int] | None) -> Calibration:
    """``tp``: 26 bytes from 0x88 (0x88-0xA1); ``hum``: 7 bytes from 0xE1, or None for a BMP280."""
    words = [_u16(tp, 0)] + [_s16(tp, 2), _s16(tp, 4)] + [_u16(tp, 6)] + [_s16(tp, 8 + 2 * i) for i in range(8)]
    if hum is None:
        return Calibration(*words)
    h4 = (_s8(hum[3]) << 4) | (hum[4] & 0x0F)
    h5 = (_s8(hum[5]) << 4) | (hum[4] >> 4)
    return Calibration(*words, H1=tp[25], H2=_s16(hum, 0), H3=hum[2], H4=h4, H5=h5, H6=_s8(hum[6]))


def compensate_temperature(c: Calibration, adc_t: int) -> tuple[float, int]:
    """°C and t_fine (datasheet 8.1, double precision)."""
    var1 = (adc_t / 16384.0 - c.T1 / 1024.0) * c.T2
    var2 = (adc_t / 131072.0 - c.T1 / 8192.0) * (adc_t / 131072.0 - c.T1 / 8192.0) * c.T3
    t_fine = int(var1 + var2)
    return (var1 + var2) / 5120.0, t_fine


def compensate_pressure(c: Calibration, adc_p: int, t_fine: int) -> float:
    """Pascal (datasheet 8.1, double precision); 0.0 when the calibration would divide by zero."""
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * c.P6 / 32768.0
    var2 = var2 + var1 * c.P5 * 2.0
    var2 = var2 / 4.0 + c.P4 * 65536.0
    var1 = (c.P3 * var1 * var1 / 524288.0 + c.P2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * c.P1
    if var1 == 0.0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = c.P9 * p * p / 2147483648.0
    var2 = p * c.P8 / 32768.0
    return p + (var1 + var2 + c.P7) / 16.0


def compensate_humidity(c: Calibration, adc_h: int, t_fine: int) -> float:
    """%RH clamped to 0..100 (datasheet 8.1, double precision)."""
    h = t_fine - 76800.0
    h = (adc_h - (c.H4 * 64.0 + c.H5 / 16384.0 * h)) * (
        c.H2 / 65536.0 * (1.0 + c.H6 / 67108864.0 * h * (1.0 + c.H3 / 67108864.0 * h)))
    h = h * (1.0 - c.H1 * h / 524288.0)
    return min(100.0, max(0.0, h))


def _smbus(n: int) -> Any:
    from smbus2 import SMBus

    return SMBus(n)


class Bme280Sensor(Sensor):
    Options = Bme280Options
    SAMPLE = SAMPLE
    bus_factory: ClassVar[Callable[[int], Any]] = staticmethod(_smbus)  # type: ignore[assignment]

    def __init__(self, name: str, options: Any, ctx: Any, bus: Any = None) -> None:
        super().__init__(name, options, ctx)
        self._bus = bus
        self._own_bus = bus is None
        self.cal: Calibration | None = None
        self.chip_id = 0

    # ------------------------------------------------------------------ errors
    def _where(self) -> str:
        return f"BME280 at 0x{self.options.address:02x} on /dev/i2c-{self.options.bus}"

    def _io_error(self, e: OSError) -> SensorError:
        if e.errno in (errno.EREMOTEIO, errno.ENXIO, errno.EIO):
            return SensorError(f"{self._where()}: no answer ({e.strerror or e}): check wiring and the address "
                               f"(SDO to GND = 0x76, to 3V3 = 0x77; `i2cdetect -y {self.options.bus}`)")
        return SensorError(f"{self._where()}: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        if self._bus is None:
            try:
                self._bus = type(self).bus_factory(self.options.bus)
            except FileNotFoundError:
                raise SensorError(f"sensor {self.name}: /dev/i2c-{self.options.bus} does not exist: enable I2C "
                                  f"(dtparam=i2c_arm=on in /boot/firmware/config.txt, then reboot)") from None
            except PermissionError:
                raise SensorError(f"sensor {self.name}: permission denied on /dev/i2c-{self.options.bus}: add "
                                  f"the agent's user to the 'i2c' group") from None
        try:
            self._setup()
        except SensorError as e:  # chip absent now: read() retries the setup with backoff
            self.ctx.log.warning("%s", e)

    def _setup(self) -> None:
        o = self.options
        bus = self._bus
        try:
            chip = bus.read_byte_data(o.address, REG_CHIP_ID)
            if chip not in (CHIP_BME280, CHIP_BMP280):
                raise SensorError(f"{self._where()}: chip id 0x{chip:02x} is neither a BME280 (0x60) nor a "
                                  f"BMP280 (0x58)")
            tp = list(bus.read_i2c_block_data(o.address, 0x88, 26))
            hum = list(bus.read_i2c_block_data(o.address, 0xE1, 7)) if chip == CHIP_BME280 else None
            self.cal = parse_calibration(tp, hum)
            if self.cal.T1 == 0 or self.cal.P1 == 0:
                raise SensorError(f"{self._where()}: calibration data is empty (T1={self.cal.T1}, "
                                  f"P1={self.cal.P1}); not a working BME280")
            self.chip_id = chip
            if chip == CHIP_BME280:  # ctrl_hum takes effect only after a write to ctrl_meas
                bus.write_byte_data(o.address, REG_CTRL_HUM, OSRS[o.oversampling_h])
            bus.write_byte_data(o.address, REG_CONFIG, FILTER[o.filter] << 2)  # t_sb 0.5 ms in normal mode
            if o.mode == "normal":
                bus.write_byte_data(o.address, REG_CTRL_MEAS, self._ctrl_meas(0b11))
        except OSError as e:
            self.cal = None
            raise self._io_error(e) from None

    def _ctrl_meas(self, mode: int) -> int:
        o = self.options
        return (OSRS[o.oversampling_t] << 5) | (OSRS[o.oversampling_p] << 2) | mode

    def _measure_time(self) -> float:
        """Worst-case conversion time in seconds (datasheet 9.1)."""
        o = self.options
        ms = 1.25 + 2.3 * o.oversampling_t
        if o.oversampling_p:
            ms += 2.3 * o.oversampling_p + 0.575
        if o.oversampling_h and self.chip_id == CHIP_BME280:
            ms += 2.3 * o.oversampling_h + 0.575
        return ms / 1000.0

    def read(self) -> dict[str, Any]:
        o = self.options
        if self.cal is None:
            self._setup()
        cal = self.cal
        assert cal is not None
        bus = self._bus
        try:
            if o.mode == "forced":
                bus.write_byte_data(o.address, REG_CTRL_MEAS, self._ctrl_meas(0b01))
                time.sleep(self._measure_time())
                for _ in range(20):  # normally already done after the worst-case time
                    if not bus.read_byte_data(o.address, REG_STATUS) & 0x08:
                        break
                    time.sleep(0.001)
                else:
                    raise SensorError(f"{self._where()}: conversion did not finish")
            d = list(bus.read_i2c_block_data(o.address, REG_DATA, 8))
        except OSError as e:
            self.cal = None  # re-read calibration after a replug
            raise self._io_error(e) from None
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        if adc_t == SKIPPED_20BIT:
            raise SensorError(f"{self._where()}: no temperature conversion yet (adc_T = 0x80000)")
        temp, t_fine = compensate_temperature(cal, adc_t)
        out: dict[str, Any] = {"temperature": round(temp, o.decimals)}
        if self.chip_id == CHIP_BME280 and o.oversampling_h and adc_h != SKIPPED_16BIT:
            out["humidity"] = round(compensate_humidity(cal, adc_h, t_fine), o.decimals)
        if o.oversampling_p and adc_p != SKIPPED_20BIT:
            out["pressure"] = round(compensate_pressure(cal, adc_p, t_fine) / 100.0, o.decimals)
        return out

    def close(self) -> None:
        if self._own_bus and self._bus is not None:
            try:
                self._bus.close()
            except Exception:
                pass
            self._bus = None
