"""Issue 14 item 14: a TTL means time actually elapsed since the message was queued (see
edge_agent/outbox/ageclock.py), whatever the wall clock does. Real SQLite outbox, injected clocks: the
wall clock (envelope ``ts``) and the boot clock (CLOCK_BOOTTIME) are separate, as on a device whose NTP
steps the wall clock while uptime runs on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edge_agent.message import Outgoing
from edge_agent.outbox import Outbox
from tests.faults.test_outbox_faults import assert_accounted, drain_all, dropped
from tests.helpers import wait_for

DAY = 86400.0
T0 = 1_800_000_000.0
TOPIC = "edge/d1/telemetry/s"


class Clocks:
    def __init__(self, wall: float, boot: float = 1000.0, boot_id: str = "boot-1") -> None:
        self.lock = threading.Lock()
        self.wall_at, self.boot_at, self.id = wall, boot, boot_id

    def wall(self) -> float:
        with self.lock:
            return self.wall_at

    def boot(self) -> float:
        with self.lock:
            return self.boot_at

    def boot_id(self) -> str:
        return self.id

    def elapse(self, seconds: float) -> None:
        """Real time passes: both clocks move on."""
        with self.lock:
            self.wall_at += seconds
            self.boot_at += seconds

    def step_wall(self, seconds: float) -> None:
        """NTP or an operator steps the wall clock; uptime does not move."""
        with self.lock:
            self.wall_at += seconds


def _open(path: Path, c: Clocks) -> Outbox:
    return Outbox(path, "d1", max_age=7 * DAY, maintenance_interval=0.05, clock=c.wall, boot_clock=c.boot,
                  boot_id=c.boot_id).open()


def _put(ob: Outbox, n: int) -> list[int]:
    return [ob.put(Outgoing(topic=TOPIC, stream="telemetry/s", data={"v": i})) for i in range(n)]


def _settle(ob: Outbox) -> None:
    time.sleep(0.4)  # several maintenance passes
    assert ob.flush()


def test_readings_taken_behind_are_not_expired_when_the_clock_is_corrected(tmp_path: Path) -> None:
    c = Clocks(wall=T0 - 10 * DAY)  # booted 10 days behind
    ob = _open(tmp_path / "o.db", c)
    seqs = _put(ob, 100)
    assert ob.flush()
    c.elapse(60)
    c.step_wall(10 * DAY)  # NTP corrects the clock
    _settle(ob)
    assert ob.counters["expired"] == 0 and ob.pending == 100
    c.elapse(7 * DAY - 120)  # not yet 7 days since they were queued (60 s + this)
    _settle(ob)
    assert ob.counters["expired"] == 0
    c.elapse(120)  # now they are
    wait_for(lambda: ob.counters["expired"] == 100, 10, 0.05, "expired after 7 days of elapsed time")
    envs = drain_all(ob)
    assert dropped(envs)["expired"] == set(seqs)
    ob.close()


def test_rows_after_a_live_row_in_seq_order_are_expired(tmp_path: Path) -> None:
    c = Clocks(wall=T0)
    ob = _open(tmp_path / "o.db", c)
    first = _put(ob, 1)
    c.step_wall(-10 * DAY)  # the clock is set back 10 days
    later = _put(ob, 50)
    assert ob.flush()
    c.elapse(6 * DAY)
    _settle(ob)
    assert ob.counters["expired"] == 0
    c.elapse(2 * DAY)  # every row has waited 8 days > max_age, whatever their ts says
    wait_for(lambda: ob.counters["expired"] == 51, 10, 0.05, "all 51 expired")
    envs = drain_all(ob)
    assert dropped(envs)["expired"] == set(first + later)
    assert_accounted(envs, ob.last_seq)
    ob.close()


def test_restart_in_the_same_boot_keeps_the_age_and_a_reboot_behind_never_ages_rows(tmp_path: Path) -> None:
    c = Clocks(wall=T0)
    ob = _open(tmp_path / "o.db", c)
    _put(ob, 20)
    ob.close()
    c.elapse(3600)
    c.step_wall(+30 * DAY)  # stepped far ahead while the agent was down (same boot)
    ob = _open(tmp_path / "o.db", c)
    _settle(ob)
    assert ob.counters["expired"] == 0 and ob.pending == 20
    assert ob.status()["oldest_age_s"] < 2 * 3600
    ob.close()
    c2 = Clocks(wall=T0 - 365 * DAY, boot=5.0, boot_id="boot-2")  # reboot with a clock a year behind
    ob = _open(tmp_path / "o.db", c2)
    _put(ob, 5)
    _settle(ob)
    assert ob.counters["expired"] == 0 and ob.pending == 25
    c2.elapse(7 * DAY + 3700)  # 7 days after the new rows: the old ones (queued earlier) expire too
    wait_for(lambda: ob.counters["expired"] == 25, 10, 0.05, "all expired after 7 days more")
    ob.close()
