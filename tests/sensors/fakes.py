"""Fakes of the hardware each plugin talks to (the software stack above them is real).

* :class:`MockMCP3x08`: the slave side of an MCP3008/MCP3208 on gpiozero's mock SPI pins, answering
  the real bit-level protocol (start bit, single/diff bit, 3 channel bits, then a null bit and the
  result MSB first), like gpiozero's own test suite does.
* :class:`FakeI2CBus`: smbus2's interface over a 256-byte register map per address.
* :func:`w1_tree`, :func:`proc_tree`: fake sysfs / procfs trees in a temp dir.
"""

from __future__ import annotations

import errno
import struct
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockPWMPin, MockSPIClockPin, MockSPIDevice, MockSPISelectPin


class _PWMClockPin(MockSPIClockPin, MockPWMPin):
    pass


class _PWMSelectPin(MockSPISelectPin, MockPWMPin):
    pass


class MockMCP3x08(MockSPIDevice):
    """An MCP3008 (bits=10) or MCP3208 (bits=12) on SPI0 CE0 (or CE1) of a MockFactory."""

    def __init__(self, factory: Any, bits: int = 10, vref: float = 3.3, select_pin: int = 8) -> None:
        # Create the pins ourselves: a MockFactory with PWM pins (edge_agent.pins.make_factory("mock"))
        # refuses non-PWM pin classes, which MockSPIDevice.__init__ would ask for.
        pwm = issubclass(factory.pin_class, MockPWMPin)
        self.clock_pin = factory.pin(11, pin_class=_PWMClockPin if pwm else MockSPIClockPin)
        self.mosi_pin = factory.pin(10)
        self.miso_pin = factory.pin(9)
        self.select_pin = factory.pin(select_pin, pin_class=_PWMSelectPin if pwm else MockSPISelectPin)
        self.clock_polarity = False
        self.clock_phase = False
        self.lsb_first = False
        self.bits_per_word = 8
        self.select_high = False
        self.rx_bit = 0
        self.rx_buf: list[int] = []
        self.tx_buf: list[int] = []
        self.clock_pin.spi_devices.append(self)
        self.select_pin.spi_device = self
        self.bits = bits
        self.vref = vref
        self.channels = [0.0] * 8
        self.state = "idle"
        self.conversions = 0

    def on_start(self) -> None:
        super().on_start()
        self.state = "idle"

    def on_clock(self) -> None:
        # PWM mock pins report their state as a float; the SPI logic wants bits
        if self.select_pin.state == self.select_high and bool(self.clock_pin.state):
            self.rx_bit += 1
            self.rx_buf.append(int(bool(self.mosi_pin.state)))
            tx = self.tx_buf.pop(0) if self.tx_buf else 0
            if tx:
                self.miso_pin.drive_high()
            else:
                self.miso_pin.drive_low()
            self.on_bit()

    def on_select(self) -> None:
        if bool(self.select_pin.state) == self.select_high:
            self.on_start()

    def code(self, volts: float) -> int:
        v = min(max(volts, 0.0), self.vref)
        return round(v / self.vref * (2 ** self.bits - 1))

    def on_bit(self) -> None:
        if self.state == "idle":
            if self.rx_buf[-1]:  # start bit
                self.state, self.rx_buf = "mode", []
        elif self.state == "mode":
            self.state, self.rx_buf = ("single" if self.rx_buf[-1] else "diff"), []
        elif self.state in ("single", "diff"):
            if len(self.rx_buf) == 3:
                ch = self.rx_word()
                if self.state == "diff":
                    volts = self.channels[ch] - self.channels[ch ^ 1]
                else:
                    volts = self.channels[ch]
                self.conversions += 1
                self.tx_word(self.code(volts), self.bits + 2)  # sample bit + null bit + result
                self.state = "result"
        elif self.state == "result" and not self.tx_buf:
            self.state, self.rx_buf = "idle", []


# ---------------------------------------------------------------------------- I2C

class FakeI2CBus:
    """smbus2's SMBus methods over register maps; ``present`` addresses answer, others raise EREMOTEIO."""

    def __init__(self) -> None:
        self.regs: dict[int, bytearray] = {}
        self.writes: list[tuple[int, int, int]] = []
        self.closed = False
        self.fail = False  # simulate an unplugged chip

    def add(self, address: int, regs: dict[int, int]) -> bytearray:
        mem = bytearray(256)
        for r, v in regs.items():
            mem[r] = v
        self.regs[address] = mem
        return mem

    def _mem(self, address: int) -> bytearray:
        if self.fail or address not in self.regs:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return self.regs[address]

    def read_byte_data(self, address: int, register: int) -> int:
        return self._mem(address)[register]

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        mem = self._mem(address)
        self.writes.append((address, register, value))
        mem[register] = value & 0xFF
        if register == 0xF4 and value & 0x03:  # a measurement: status 'measuring' bit is cleared at once
            mem[0xF3] = 0

    def read_i2c_block_data(self, address: int, register: int, length: int) -> list[int]:
        mem = self._mem(address)
        return list(mem[register:register + length])

    def close(self) -> None:
        self.closed = True


# Calibration of the BMP280 datasheet's worked example (BST-BMP280-DS001, 3.12); the BME280 uses the
# same registers and formulas for temperature and pressure. Humidity words: a plausible chip's.
DATASHEET_TP = dict(T1=27504, T2=26435, T3=-1000, P1=36477, P2=-10685, P3=3024, P4=2855, P5=140, P6=-7,
                    P7=15500, P8=-14600, P9=6000)
DATASHEET_ADC_T = 519888
DATASHEET_ADC_P = 415148
HUM_CAL = dict(H1=75, H2=362, H3=0, H4=313, H5=50, H6=30)


def bme280_registers(tp: dict[str, int] | None = None, hum: dict[str, int] | None = None, adc_t: int = 0,
                     adc_p: int = 0, adc_h: int = 0, chip_id: int = 0x60) -> dict[int, int]:
    """A BME280 register map holding calibration words and one raw measurement."""
    tp = tp or DATASHEET_TP
    hum = hum or HUM_CAL
    regs: dict[int, int] = {0xD0: chip_id}
    raw = struct.pack("<Hhh", tp["T1"], tp["T2"], tp["T3"]) + struct.pack(
        "<Hhhhhhhhh", tp["P1"], tp["P2"], tp["P3"], tp["P4"], tp["P5"], tp["P6"], tp["P7"], tp["P8"], tp["P9"])
    for i, b in enumerate(raw):
        regs[0x88 + i] = b
    regs[0xA1] = hum["H1"]
    h2 = struct.pack("<h", hum["H2"])
    h4, h5 = hum["H4"] & 0xFFF, hum["H5"] & 0xFFF
    for i, b in enumerate([h2[0], h2[1], hum["H3"], h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4,
                           hum["H6"] & 0xFF]):
        regs[0xE1 + i] = b
    data = [adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4, adc_t >> 12, (adc_t >> 4) & 0xFF,
            (adc_t & 0x0F) << 4, adc_h >> 8, adc_h & 0xFF]
    for i, b in enumerate(data):
        regs[0xF7 + i] = b
    return regs


# ---------------------------------------------------------------------------- sysfs / procfs

def w1_slave_text(milli: int, crc_ok: bool = True) -> str:
    raw = "72 01 4b 46 7f ff 0e 10 57"
    return f"{raw} : crc=57 {'YES' if crc_ok else 'NO'}\n{raw} t={milli}\n"


def w1_tree(root: Path, devices: dict[str, str]) -> Path:
    """``root`` as /sys/bus/w1/devices with one directory per device id holding w1_slave."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "w1_bus_master1").mkdir(exist_ok=True)
    for dev, text in devices.items():
        (root / dev).mkdir(exist_ok=True)
        (root / dev / "w1_slave").write_text(text)
    return root


def proc_tree(root: Path, *, temp_milli: int | None = 48312, loadavg: str = "0.12 0.08 0.05 1/123 4567\n",
              mem_total_kb: int = 1000000, mem_available_kb: int = 583000, uptime: str = "86400.50 170000.00\n",
              stat_line: str = "cpu  100 0 100 800 0 0 0 0 0 0") -> Path:
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/loadavg").write_text(loadavg)
    (root / "proc/meminfo").write_text(f"MemTotal:       {mem_total_kb} kB\nMemFree:          100000 kB\n"
                                       f"MemAvailable:   {mem_available_kb} kB\nBuffers: 1000 kB\n")
    (root / "proc/uptime").write_text(uptime)
    (root / "proc/stat").write_text(stat_line + "\ncpu0 1 2 3 4\n")
    if temp_milli is not None:
        tz = root / "sys/class/thermal/thermal_zone0"
        tz.mkdir(parents=True, exist_ok=True)
        (tz / "temp").write_text(f"{temp_milli}\n")
    return root
