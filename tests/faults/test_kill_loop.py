"""SIGKILL the agent again and again while it samples and sends; nothing may go missing.

Pass criterion: every seq 1..last_seq reached the subscriber at least once or is covered by an
events/dropped range (reason "crash" for what a kill lost from memory); no seq arrives with two different
readings; duplicates are counted and printed; ``PRAGMA integrity_check`` is ok.
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
    # seqs are never assigned twice: a crash reports the seqs it may have lost instead
    assert acc.conflicts == [], acc.summary()


def test_sigkill_five_times_short(tmp_path: Path, broker: DevBroker) -> None:
    kill_loop(tmp_path, broker, kills=5, interval=0.002, final_count=500, gap=(0.8, 1.6), seed=1)


@long_only
def test_sigkill_twenty_times_100k(tmp_path: Path, broker: DevBroker) -> None:
    # ~2,000 readings/s: 20 runs of ~2.5 s plus a final 50,000 -> 100,000+ readings
    kill_loop(tmp_path, broker, kills=20, interval=0.0005, final_count=50_000, gap=(1.5, 3.5), seed=2)


def test_crash_seqs_never_reassigned_and_reported(tmp_path: Path) -> None:
    """A process dies with rows held in memory (sent or not, never stored): at the next open every seq
    after the last stored one up to the reservation is reported (reason "crash"), and new seqs continue
    after the reservation, so no seq can ever arrive with two different readings."""
    import os
    import subprocess
    import sys

    from edge_agent import codec
    from edge_agent.outbox import Outbox, Outgoing

    db = tmp_path / "o.db"
    code = ("import os, sys; from edge_agent.outbox import Outbox, Outgoing\n"
            f"ob = Outbox({str(db)!r}, 'd1', flush_after=60).open()\n"
            "for i in range(50): ob.put(Outgoing(topic='t', stream='s', data={'i': i}))\n"
            "assert ob.flush()\n"
            "for i in range(50, 80): ob.put(Outgoing(topic='t', stream='s', data={'i': i}))\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
    ob = Outbox(db, "d1").open()
    try:
        assert ob.unclean is not None and ob.unclean.reason in ("crash", "power_cut")
        assert ob.unclean.first == 51 and ob.unclean.last >= 80
        seq = ob.put(Outgoing(topic="t", stream="s", data={"i": "new"}))
        assert seq > ob.unclean.last
        ob.flush()
        rows = ob.begin(1000)
        reports = [codec.decode(r.payload)["data"] for r in rows if r.topic.endswith("events/dropped")]
        assert any(d["reason"] == ob.unclean.reason and [51, ob.unclean.last] in d["ranges"] for d in reports)
    finally:
        ob.close()
    # a clean stop: the next open reports nothing and continues after the last seq handed out
    ob = Outbox(db, "d1").open()
    try:
        assert ob.unclean is None
        assert ob.put(Outgoing(topic="t", stream="s", data={})) > seq
    finally:
        ob.close()


def test_power_cut_is_told_from_a_crash_by_the_boot_id(tmp_path: Path) -> None:
    """The run marker records the boot id: "running" left behind by another boot is a power cut (or an
    OS crash); by this boot, a process crash. (A page-cache drop itself is not simulated here.)"""
    from edge_agent.outbox.runstate import RunState

    boot = tmp_path / "boot_id"
    boot.write_text("aaaa\n")
    rs = RunState(tmp_path / "o.db.run", boot=boot)
    rs.running()
    u = rs.previous(last_stored=10, reserved=20)
    assert u is not None and (u.reason, u.first, u.last) == ("crash", 11, 20)
    boot.write_text("bbbb\n")
    u = rs.previous(last_stored=10, reserved=20)
    assert u is not None and u.reason == "power_cut"
    rs.stopped()
    assert rs.previous(last_stored=10, reserved=20) is None
