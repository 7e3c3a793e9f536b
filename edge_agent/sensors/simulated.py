"""``simulated``: a deterministic signal generator for development and tests.

No wiring. The value at sample ``n`` is ``offset + amplitude * sin(2*pi*n/period) + noise``, where the
noise comes from a seeded generator, so two runs with the same seed give the same values. With
``spike_every = k`` every k-th sample gets ``spike`` added (an injected anomaly).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from edge_agent.sensors.base import Sensor

SAMPLE = """\
[[sensors]]
name = "s1"
type = "simulated"
interval = 0.5        # seconds between readings
# count = 1000        # stop after this many readings (0 = never)
offset = 20.0
amplitude = 5.0
period = 120          # samples per sine period
noise = 0.1           # standard deviation of gaussian noise
seed = 1
spike_every = 0       # inject a spike every N samples (0 = never)
spike = 15.0          # size of an injected spike
"""


@dataclass(frozen=True)
class SimulatedOptions:
    offset: float = field(default=20.0, metadata={"doc": "Centre value."})
    amplitude: float = field(default=5.0, metadata={"doc": "Sine amplitude."})
    period: float = field(default=120.0, metadata={"doc": "Samples per period.", "gt": 0})
    noise: float = field(default=0.1, metadata={"doc": "Gaussian noise standard deviation.", "ge": 0})
    seed: int = field(default=1, metadata={"doc": "Random seed (same seed, same values)."})
    spike_every: int = field(default=0, metadata={"doc": "Inject a spike every N samples (0 = never).",
                                                  "ge": 0})
    spike: float = field(default=15.0, metadata={"doc": "Spike size."})


class SimulatedSensor(Sensor):
    Options = SimulatedOptions
    SAMPLE = SAMPLE

    def open(self) -> None:
        self._rng = random.Random(self.options.seed)
        self._n = 0

    def read(self) -> dict[str, Any]:
        o = self.options
        n = self._n
        self._n += 1
        v = o.offset + o.amplitude * math.sin(2 * math.pi * n / o.period)
        if o.noise:
            v += self._rng.gauss(0.0, o.noise)
        spike = bool(o.spike_every and n and n % o.spike_every == 0)
        if spike:
            v += o.spike
        return {"value": round(v, 6)}
