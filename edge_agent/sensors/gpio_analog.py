"""``gpio.analog``: one channel of an MCP3008 (10 bit) or MCP3208 (12 bit) ADC over SPI, in physical units.

The Pi has no analog inputs; an MCP3x08 on SPI0 gives eight. gpiozero drives the chip (hardware SPI
through ``/dev/spidev0.<ce>`` when enabled, else bit-banged on the same pins). Each reading is::

    {"value": 23.4, "voltage": 0.734, "raw": 228}

``voltage = raw / (2**bits - 1) * vref`` and ``value = offset + scale * voltage`` (e.g. a TMP36:
``scale = 100, offset = -50`` gives °C; a 0-10 bar transducer on a 0-3.3 V divider:
``scale = 3.0303``). ``samples = n`` averages n conversions per reading to cut noise.

Wiring (MCP3008/MCP3208, DIP-16; SPI0 with CE0, see hardware/gpio-analog.md)::

    MCP3x08 pin        Pi header pin (BCM)
    16 VDD, 15 VREF -> 1  3V3
    14 AGND, 9 DGND -> 6  GND
    13 CLK          -> 23 GPIO11 SCLK
    12 DOUT         -> 21 GPIO9  MISO
    11 DIN          -> 19 GPIO10 MOSI
    10 CS/SHDN      -> 24 GPIO8  CE0   (or 26 GPIO7 CE1 with spi_device = 1)
    1-8 CH0-CH7     <- the analog signals, 0..VREF

Enable SPI in /boot/firmware/config.txt with ``dtparam=spi=on``; the agent's user needs the ``spi``
group for /dev/spidev*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_agent.errors import SensorError
from edge_agent.pins import open_device
from edge_agent.sensors.base import Sensor

SAMPLE = """\
[[sensors]]
name = "soil"
type = "gpio.analog"
interval = 1.0
chip = "mcp3008"       # mcp3008 (10 bit) or mcp3208 (12 bit)
channel = 0            # CH0..CH7
# differential = false # true: CH(n) minus its pair CH(n^1)
vref = 3.3             # volts on the VREF pin
spi_device = 0         # 0 = CE0 (GPIO8), 1 = CE1 (GPIO7)
scale = 1.0            # value = offset + scale * voltage
offset = 0.0
# samples = 1          # conversions averaged per reading
# decimals = 4         # rounding of value and voltage
"""

CHIPS = {"mcp3008": ("MCP3008", 10), "mcp3208": ("MCP3208", 12)}


@dataclass(frozen=True)
class GpioAnalogOptions:
    chip: str = field(default="mcp3008", metadata={"doc": "ADC chip: mcp3008 (10 bit) or mcp3208 (12 bit).",
                                                   "choices": tuple(CHIPS)})
    channel: int = field(default=0, metadata={"doc": "Input channel 0-7.", "ge": 0, "le": 7})
    differential: bool = field(default=False, metadata={"doc": "Measure CH(channel) minus CH(channel ^ 1)."})
    vref: float = field(default=3.3, metadata={"doc": "Reference voltage on the VREF pin (volts).",
                                               "gt": 0, "le": 5.5})
    spi_port: int = field(default=0, metadata={"doc": "SPI bus (0 on the 40-pin header).", "ge": 0, "le": 1})
    spi_device: int = field(default=0, metadata={"doc": "Chip select: 0 = CE0 (GPIO8), 1 = CE1 (GPIO7).",
                                                 "ge": 0, "le": 1})
    scale: float = field(default=1.0, metadata={"doc": "value = offset + scale * voltage."})
    offset: float = field(default=0.0, metadata={"doc": "See scale."})
    samples: int = field(default=1, metadata={"doc": "Conversions averaged per reading.", "ge": 1, "le": 1000})
    decimals: int = field(default=4, metadata={"doc": "Decimal places kept in value and voltage.",
                                               "ge": 0, "le": 12})


class GpioAnalogSensor(Sensor):
    Options = GpioAnalogOptions
    SAMPLE = SAMPLE

    def __init__(self, name: str, options: Any, ctx: Any) -> None:
        super().__init__(name, options, ctx)
        self._dev: Any = None

    @property
    def bits(self) -> int:
        return CHIPS[self.options.chip][1]

    def open(self) -> None:
        import gpiozero

        o = self.options
        cls = getattr(gpiozero, CHIPS[o.chip][0])
        self._dev = open_device(cls, channel=o.channel, differential=o.differential, max_voltage=o.vref,
                                port=o.spi_port, device=o.spi_device, pin_factory=self.factory(),
                                what=f"sensor {self.name} ({o.chip} on SPI{o.spi_port} CE{o.spi_device})",
                                pin=f"SPI{o.spi_port}.{o.spi_device}")

    def read(self) -> dict[str, Any]:
        o = self.options
        if self._dev is None:
            raise SensorError(f"sensor {self.name}: ADC is closed")
        raws = [int(self._dev.raw_value) for _ in range(o.samples)]
        raw = sum(raws) / len(raws)
        voltage = raw / (2 ** self.bits - 1) * o.vref
        value = o.offset + o.scale * voltage
        return {"value": round(value, o.decimals), "voltage": round(voltage, o.decimals),
                "raw": int(raw) if o.samples == 1 else round(raw, 2)}

    def close(self) -> None:
        if self._dev is not None:
            self._dev.close()
            self._dev = None
