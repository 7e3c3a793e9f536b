"""SIGKILL the agent again and again while it samples and sends; nothing may go missing.

Pass criterion: every seq 1..last_seq reached the subscriber at least once or is covered by an
events/dropped range; duplicates are counted and printed; ``PRAGMA integrity_check`` is ok.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from edge_agent.devbroker import DevBroker
from edge_agent.outbox import read_stats
from tests.faults.common import final_check, long_only, outbox_file
from tests.helpers import AgentProcess, Collector, sensors, unique, write_config


def kill_loop(tmp_path: Path, broker: DevBroker, kills: int, interval: float, final_count: int,
              gap: tuple[float, float], seed: int) -> None:
    rng = random.Random(seed)
    prefix = unique("k")
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "c.toml", broker.port, state, prefix=prefix,
                       sensors=sensors(("s1", interval, 0, "telemetry")))
    with Collector(broker.port, f"{prefix}/dev-1/#", persistent=True) as col:
        for _ in range(kills):
            agent = AgentProcess(cfg).start()
            time.sleep(rng.uniform(*gap))
            assert agent.alive(), agent.output()[-3000:]
            agent.kill()
        # a last run that finishes its count and drains the backlog
        write_config(tmp_path / "c.toml", broker.port, state, prefix=prefix,
                     sensors=sensors(("s1", interval, final_count, "telemetry")))
        agent = AgentProcess(cfg, args=["--exit-when-done"]).start()
        assert agent.wait(300) == 0, agent.output()[-3000:]
        acc = final_check(col, state, timeout=60)
    last = read_stats(outbox_file(state)).last_seq
    print(f"{kills} kills, last_seq {last}, duplicates {acc.duplicates}")
    assert last >= final_count
    # every un-acked message in flight at a kill may be sent twice; nothing else
    assert acc.duplicates <= kills * 1000, acc.summary()


def test_sigkill_five_times_short(tmp_path: Path, broker: DevBroker) -> None:
    kill_loop(tmp_path, broker, kills=5, interval=0.002, final_count=500, gap=(0.8, 1.6), seed=1)


@long_only
def test_sigkill_twenty_times_100k(tmp_path: Path, broker: DevBroker) -> None:
    # ~2,000 readings/s: 20 runs of ~2.5 s plus a final 50,000 -> 100,000+ readings
    kill_loop(tmp_path, broker, kills=20, interval=0.0005, final_count=50_000, gap=(1.5, 3.5), seed=2)
