"""``system``: the host's own health: CPU temperature and use, load, memory, disk, uptime.

Read straight from ``/proc`` and ``/sys`` (no psutil: one less dependency on a Pi Zero), relative to
``root`` so tests can point it at a fake tree::

    {"cpu_temp": 48.3, "cpu_pct": 3.1, "load1": 0.12, "load5": 0.08, "load15": 0.05,
     "mem_used_pct": 41.7, "mem_available": 534773760, "disk_used_pct": 23.4, "disk_free": 22548578304,
     "uptime": 86400.5}

* ``cpu_temp`` (°C) comes from ``sys/class/thermal/thermal_zone<N>/temp``; it is left out on machines
  without a thermal zone (most VMs) rather than failing the reading.
* ``cpu_pct`` is the busy share of all cores since the previous reading (from ``proc/stat``); the
  first reading has none to compare with and leaves it out.
* ``mem_used_pct`` counts MemAvailable as free (page cache is not "used"); needs Linux >= 3.14.
* disk figures are for the filesystem holding ``disk_path`` (the state directory's filesystem is the
  one whose filling up stops the outbox).

No wiring. ``fields`` limits what is published.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import SensorError
from edge_agent.sensors.base import Sensor

SAMPLE = """\
[[sensors]]
name = "system"
type = "system"
interval = 60.0
# disk_path = "/"          # filesystem whose usage is reported
# thermal_zone = 0         # /sys/class/thermal/thermal_zone<N>
# fields = []              # subset of: cpu_temp cpu_pct load1 load5 load15 mem_used_pct mem_available
#                          #   disk_used_pct disk_free uptime  ([] = all)
"""

FIELDS = ("cpu_temp", "cpu_pct", "load1", "load5", "load15", "mem_used_pct", "mem_available",
          "disk_used_pct", "disk_free", "uptime")


@dataclass(frozen=True)
class SystemOptions:
    root: str = field(default="/", metadata={"doc": "Prefix of /proc and /sys (for tests and containers)."})
    disk_path: str = field(default="/", metadata={"doc": "Path on the filesystem whose usage is reported."})
    thermal_zone: int = field(default=0, metadata={"doc": "Thermal zone number for cpu_temp.", "ge": 0})
    fields: list[str] = field(default_factory=list, metadata={"doc": "Fields to publish ([] = all)."})

    @staticmethod
    def validate(o: SystemOptions) -> list[tuple[str, str]]:
        return [(f"fields[{i}]", f"unknown field {f!r} (known: {', '.join(FIELDS)})")
                for i, f in enumerate(o.fields) if f not in FIELDS]


class SystemSensor(Sensor):
    Options = SystemOptions
    SAMPLE = SAMPLE

    def __init__(self, name: str, options: Any, ctx: Any) -> None:
        super().__init__(name, options, ctx)
        self.root = Path(self.options.root)
        self._last_cpu: tuple[int, int] | None = None

    def _text(self, rel: str) -> str | None:
        try:
            return (self.root / rel).read_text()
        except OSError:
            return None

    def open(self) -> None:
        if self._text("proc/loadavg") is None:
            raise SensorError(f"sensor {self.name}: {self.root / 'proc/loadavg'} is not readable: not Linux, "
                              f"or root = {self.options.root!r} is wrong")
        self._cpu_pct()  # prime the CPU counters so the first real reading has a baseline

    def _cpu_pct(self) -> float | None:
        text = self._text("proc/stat")
        if not text:
            return None
        parts = text.split("\n", 1)[0].split()
        if not parts or parts[0] != "cpu":
            return None
        vals = [int(v) for v in parts[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        total = sum(vals[:8])  # guest time is already counted in user
        last, self._last_cpu = self._last_cpu, (total, idle)
        if last is None or total <= last[0]:
            return None
        return round(100.0 * (1 - (idle - last[1]) / (total - last[0])), 2)

    def read(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        temp = self._text(f"sys/class/thermal/thermal_zone{self.options.thermal_zone}/temp")
        if temp and temp.strip().lstrip("-").isdigit():
            out["cpu_temp"] = round(int(temp) / 1000.0, 2)
        cpu = self._cpu_pct()
        if cpu is not None:
            out["cpu_pct"] = cpu
        load = self._text("proc/loadavg")
        if load is None:
            raise SensorError(f"{self.root / 'proc/loadavg'}: not readable")
        l1, l5, l15 = (float(x) for x in load.split()[:3])
        out.update(load1=l1, load5=l5, load15=l15)
        mem = self._text("proc/meminfo")
        if mem:
            info = {}
            for line in mem.splitlines():
                key, _, rest = line.partition(":")
                if rest.strip():
                    info[key] = int(rest.split()[0]) * 1024
            total = info.get("MemTotal", 0)
            avail = info.get("MemAvailable")
            if total and avail is not None:
                out["mem_used_pct"] = round(100.0 * (total - avail) / total, 2)
                out["mem_available"] = avail
        try:
            st = os.statvfs(self.options.disk_path)
        except OSError as e:
            raise SensorError(f"disk_path {self.options.disk_path}: {e.strerror or e}") from None
        size = st.f_blocks * st.f_frsize
        if size:
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            avail_b = st.f_bavail * st.f_frsize
            out["disk_used_pct"] = round(100.0 * used / (used + avail_b), 2) if used + avail_b else 0.0
            out["disk_free"] = avail_b
        up = self._text("proc/uptime")
        if up:
            out["uptime"] = float(up.split()[0])
        if self.options.fields:
            out = {k: v for k, v in out.items() if k in self.options.fields}
        return out
