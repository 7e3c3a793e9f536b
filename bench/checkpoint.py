"""Cost of the outbox's periodic PASSIVE checkpoint (issue 14 item 4): bytes written and time per call.

Usage::

    python bench/checkpoint.py [--dir /var/tmp] [--seconds 20]

For each rate (10 and 1,000 msg/s) an outbox runs ``--seconds`` with readings acked as they go (a
connected agent), once with the checkpoint effectively off and once every ``CHECKPOINT_INTERVAL`` s.
Prints ``/proc/self/io`` ``write_bytes`` per message and the time of each checkpoint call. The
directory must be on a real disk (not tmpfs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import edge_agent.outbox.reopen as upkeep_mod
from edge_agent.message import Outgoing
from edge_agent.outbox import Outbox


def write_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def run(interval: float, rate: int, seconds: float, base: str) -> None:
    upkeep_mod.CHECKPOINT_INTERVAL = interval
    times: list[float] = []
    orig = upkeep_mod.Upkeep.committed

    def timed(self: upkeep_mod.Upkeep, db: Any) -> None:
        t, before = time.perf_counter(), self.last_ckpt
        orig(self, db)
        if self.last_ckpt != before:
            times.append(time.perf_counter() - t)

    upkeep_mod.Upkeep.committed = timed  # type: ignore[method-assign]
    tmp = tempfile.TemporaryDirectory(dir=base, prefix="ckpt-bench-")
    ob = Outbox(Path(tmp.name) / "outbox.db", "d1").open()
    t0, w0, n = time.monotonic(), write_bytes(), 0
    try:
        while time.monotonic() - t0 < seconds:
            for _ in range(max(1, rate // 10)):
                ob.put(Outgoing(topic="edge/d1/telemetry/s", stream="telemetry/s", data={"value": 20.5 + n % 7}))
                n += 1
            rows = ob.begin(1000)
            if rows:
                ob.accept([r.seq for r in rows])
            time.sleep(0.1)
        ob.flush()
        os.sync()
        w = write_bytes() - w0
    finally:
        ob.close()
        tmp.cleanup()
        upkeep_mod.Upkeep.committed = orig  # type: ignore[method-assign]
    label = "off" if interval > 1e6 else f"{interval:g} s"
    print(f"checkpoint {label:>5}, {rate:>5} msg/s: {n} msgs, {w / 1024:.0f} KiB written = {w / max(n, 1):.0f} B/msg; "
          f"{len(times)} checkpoints, mean {1000 * sum(times) / max(len(times), 1):.2f} ms, "
          f"max {1000 * max(times, default=0):.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()
    interval = upkeep_mod.CHECKPOINT_INTERVAL
    for rate in (10, 1000):
        for iv in (1e9, interval):
            run(iv, rate, a.seconds, a.dir)


if __name__ == "__main__":
    main()
