"""``onewire.ds18b20``: DS18B20 1-Wire temperature through the kernel's w1-therm driver (sysfs).

The kernel does the 1-Wire timing; the plugin reads ``<root>/28-<serial>/w1_slave``::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

and publishes ``{"value": 23.125}`` (°C). Failures are read errors (the sampler reports them as
``events/sensor_error`` and retries with backoff), each saying what happened:

* ``crc=.. NO``: a corrupted transfer (long or unshielded cable, missing pull-up); retried up to
  ``retries`` times at once before the reading fails;
* ``t=85000``: the power-on reset value, i.e. the sensor browned out (parasite power without a strong
  pull-up) — never a real 85 °C;
* the device directory vanished: unplugged, or the bus lost it (a sensor that is absent at start is
  looked for again at each retry, so plugging it in later works).

With ``device = ""`` the only ``28-*`` device on the bus is used; with several, naming one is
required (the error lists them). ``root`` exists for tests and unusual mounts.

Wiring (see hardware/onewire-ds18b20.md)::

    DS18B20 (TO-92, flat side facing you: GND, DQ, VDD)
    VDD -> header pin 1 (3V3)
    DQ  -> header pin 7 (GPIO4), and a 4.7 kΩ resistor from DQ to 3V3
    GND -> header pin 9 (GND)

Enable the bus in /boot/firmware/config.txt: ``dtoverlay=w1-gpio,gpiopin=4`` (then reboot).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import SensorError
from edge_agent.sensors.base import Sensor

SAMPLE = """\
[[sensors]]
name = "tank"
type = "onewire.ds18b20"
interval = 5.0
device = ""                       # 28-xxxxxxxxxxxx; "" = the only DS18B20 on the bus
# root = "/sys/bus/w1/devices"    # sysfs directory of the 1-Wire devices
# retries = 2                     # immediate re-reads after a CRC error
"""

POWER_ON_RESET_MC = 85000
_CRC = re.compile(r"crc=([0-9a-fA-F]{2})\s+(YES|NO)")
_TEMP = re.compile(r"t=(-?\d+)")


@dataclass(frozen=True)
class Ds18b20Options:
    device: str = field(default="", metadata={"doc": "Device id '28-xxxxxxxxxxxx' (empty: the only one).",
                                              "pattern": r"^(28-[0-9a-fA-F]{12})?$"})
    root: str = field(default="/sys/bus/w1/devices", metadata={"doc": "sysfs directory of 1-Wire devices."})
    retries: int = field(default=2, metadata={"doc": "Immediate re-reads after a CRC error.", "ge": 0, "le": 10})
    decimals: int = field(default=3, metadata={"doc": "Decimal places kept.", "ge": 0, "le": 6})


def list_devices(root: str | os.PathLike[str]) -> list[str]:
    try:
        return sorted(p.name for p in Path(root).glob("28-*"))
    except OSError:
        return []


def parse_w1_slave(text: str, where: str = "w1_slave") -> float:
    """Temperature in °C from the w1_slave text; SensorError on a CRC failure or a bad/implausible value."""
    crc = _CRC.search(text)
    if crc is None:
        raise SensorError(f"{where}: unreadable ({text.strip()[:80]!r}): no crc line")
    if crc.group(2) != "YES":
        raise SensorError(f"{where}: CRC check failed (crc={crc.group(1)} NO): noisy bus, long cable or "
                          f"missing 4.7 kΩ pull-up")
    temp = _TEMP.search(text, crc.end())
    if temp is None:
        raise SensorError(f"{where}: no t= value ({text.strip()[:80]!r})")
    milli = int(temp.group(1))
    if milli == POWER_ON_RESET_MC:
        raise SensorError(f"{where}: 85.000 °C power-on reset value: the sensor lost power during the "
                          f"conversion (parasite power? use 3-wire wiring)")
    if not -55000 <= milli <= 125000:
        raise SensorError(f"{where}: {milli / 1000} °C is outside the DS18B20 range (-55..125 °C)")
    return milli / 1000.0


class Ds18b20Sensor(Sensor):
    Options = Ds18b20Options
    SAMPLE = SAMPLE

    def __init__(self, name: str, options: Any, ctx: Any) -> None:
        super().__init__(name, options, ctx)
        self.device = self.options.device

    def open(self) -> None:
        root = Path(self.options.root)
        if not root.is_dir():  # a setup problem, not a flaky sensor: fail at start
            raise SensorError(f"sensor {self.name}: {root} does not exist: 1-Wire is not enabled (add "
                              f"'dtoverlay=w1-gpio,gpiopin=4' to /boot/firmware/config.txt and reboot)")
        try:
            self._discover()
        except SensorError as e:  # no sensor yet: read() reports it and retries (hot-plug)
            self.ctx.log.warning("%s", e)

    def _discover(self) -> None:
        """Pick the only 28-* device when none is configured."""
        if self.device:
            return
        root = self.options.root
        found = list_devices(root)
        if not found:
            raise SensorError(f"sensor {self.name}: no DS18B20 (28-*) under {root}: check wiring and the "
                              f"4.7 kΩ pull-up")
        if len(found) > 1:
            raise SensorError(f"sensor {self.name}: {len(found)} DS18B20 on the bus ({', '.join(found)}): set "
                              f"device = one of them")
        self.device = found[0]

    def read(self) -> dict[str, Any]:
        o = self.options
        self._discover()
        path = Path(o.root) / self.device / "w1_slave"
        last: SensorError | None = None
        for _ in range(o.retries + 1):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                present = list_devices(o.root)
                raise SensorError(f"{self.device}: device missing under {o.root} (unplugged?); present: "
                                  f"{', '.join(present) or 'none'}") from None
            except OSError as e:
                raise SensorError(f"{path}: {e.strerror or e}") from None
            try:
                return {"value": round(parse_w1_slave(text, self.device), o.decimals)}
            except SensorError as e:
                last = e
                if "CRC" not in str(e):
                    raise
        assert last is not None
        raise last
