"""Storage faults with the real agent process: capacity and TTL eviction while the broker is unreachable,
disk full on a loop-mounted ext4, damaged databases at start, graceful stop with a 10,000-message backlog.

"The broker is down" is a FaultProxy in ``refuse`` mode between the agent and a real Mosquitto: the
subscriber stays connected the whole time, so everything the agent sends afterwards is seen.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from edge_agent.devbroker import DevBroker
from edge_agent.outbox import read_stats
from tests.faultkit import FaultProxy, disk_free, fill_disk, loop_ext4, loop_mount_unavailable
from tests.faults.common import StampCollector, final_check, ostats, outbox_file
from tests.helpers import AgentProcess, sensors, unique, wait_for, write_config


def test_capacity_eviction_while_down_alarms_survive_oldest_telemetry_first(tmp_path: Path,
                                                                             broker: DevBroker) -> None:
    prefix = unique("cap")
    state = tmp_path / "state"
    with FaultProxy(broker.port) as proxy, StampCollector(broker.port, f"{prefix}/dev-1/#") as col:
        proxy.set_mode("refuse")
        cfg = write_config(tmp_path / "c.toml", proxy.port, state, prefix=prefix,
                           sensors=sensors(("s1", 0.0005, 0, "telemetry"), ("al", 0.25, 0, "alarm")))
        text = cfg.read_text().replace("[storage]\n", "[storage]\nmax_bytes = 1048576\nmin_free = 0\n")
        cfg.write_text(text)
        agent = AgentProcess(cfg).start()
        try:
            wait_for(lambda: (st := ostats(state)) is not None and st.counters["evicted"] > 2000,
                     60, 0.3, "capacity eviction while the broker is unreachable")
            st = read_stats(outbox_file(state))
            assert st.used_bytes <= 1024 * 1024 * 1.05, st
            # evicted while the broker was unreachable (eviction may go on during the drain on a slow
            # machine: the sensor keeps writing at 2 kHz, and then it takes the oldest rows *still stored*)
            evicted_during_outage = st.counters["evicted"]
            proxy.set_mode("pass")
            wait_for(lambda: read_stats(outbox_file(state)).pending < 100, 60, 0.3)
        finally:
            assert agent.terminate() == 0, agent.output()[-3000:]
        acc = final_check(col, state)
    envs = col.envs()
    cap = acc.dropped.get("capacity", set())
    assert cap, acc.summary()
    by_seq = {e["seq"]: e for e in envs}
    alarm_seqs = {s for s, e in by_seq.items() if e["stream"] == "telemetry/al"}
    assert alarm_seqs and not (alarm_seqs & cap), "alarms are never evicted while telemetry is left"
    tele = [s for s, e in by_seq.items() if e["stream"] == "telemetry/s1"]
    first = sorted(cap)[:evicted_during_outage]
    assert first and max(first) < min(tele), "telemetry is evicted oldest first"
    assert read_stats(outbox_file(state)).counters['evicted'] == len(cap)


def test_ttl_expiry_while_down_is_reported(tmp_path: Path, broker: DevBroker) -> None:
    prefix = unique("ttl")
    state = tmp_path / "state"
    with FaultProxy(broker.port) as proxy, StampCollector(broker.port, f"{prefix}/dev-1/#") as col:
        proxy.set_mode("refuse")
        cfg = write_config(tmp_path / "c.toml", proxy.port, state, prefix=prefix,
                           sensors=sensors(("s1", 0.02, 0, "telemetry")))
        cfg.write_text(cfg.read_text().replace("[storage]\n", "[storage]\nmax_age = 2.0\n"))
        agent = AgentProcess(cfg).start()
        try:
            wait_for(lambda: (st := ostats(state)) is not None and st.counters["expired"] > 50,
                     30, 0.3, "expiry while the broker is unreachable")
            proxy.set_mode("pass")
            wait_for(lambda: read_stats(outbox_file(state)).pending < 20, 30, 0.3)
        finally:
            assert agent.terminate() == 0, agent.output()[-3000:]
        acc = final_check(col, state)
    exp = acc.dropped.get("expired", set())
    assert len(exp) > 50 and min(exp) == 1
    for e in col.envs():  # nothing delivered was older than its TTL when it left
        if e["stream"] == "telemetry/s1":
            assert e["_rx"] - e["ts"] < 2.0 + 3.0


needs_loop = pytest.mark.skipif(loop_mount_unavailable() is not None,
                                reason=f"loop-mounted ext4: {loop_mount_unavailable()}")


@needs_loop
def test_disk_full_no_crash_keeps_sampling_recovers(tmp_path: Path, broker: DevBroker) -> None:
    try:
        cm = loop_ext4(tmp_path, size_mb=24)
        mnt = cm.__enter__()
    except RuntimeError as e:
        pytest.skip(f"cannot loop-mount ext4 here: {e}")
    prefix = unique("df")
    state = mnt / "state"
    try:
        with FaultProxy(broker.port) as proxy, StampCollector(broker.port, f"{prefix}/dev-1/#") as col:
            proxy.set_mode("refuse")
            cfg = write_config(tmp_path / "c.toml", proxy.port, state, prefix=prefix,
                               sensors=sensors(("s1", 0.001, 0, "telemetry"), ("al", 0.5, 0, "alarm")))
            cfg.write_text(cfg.read_text().replace(
                "[storage]\n", "[storage]\nmin_free = 0\nmemory_buffer = 2000\nmax_bytes = 16777216\n"))
            agent = AgentProcess(cfg).start()
            try:
                wait_for(lambda: (st := ostats(state)) is not None and st.pending > 3000,
                         30, 0.3)
                filler = fill_disk(mnt)
                t_full = time.time()
                assert disk_free(mnt) < 256 * 1024
                time.sleep(4.0)
                assert agent.alive(), "disk full must not crash the agent:\n" + agent.output()[-3000:]
                assert "disk full" in agent.output()
                filler.unlink()
                t_back = time.time()
                time.sleep(2.0)
                proxy.set_mode("pass")
                wait_for(lambda: read_stats(outbox_file(state)).pending < 200, 60, 0.3)
                assert agent.alive()
            finally:
                assert agent.terminate() == 0, agent.output()[-3000:]
            acc = final_check(col, state)
            st = read_stats(outbox_file(state))
        print(f"disk full: store_errors={st.counters['store_errors']} dropped_memory={st.counters['dropped_memory']} "
              f"evicted={st.counters['evicted']}; {acc.summary()}")
        assert st.counters["store_errors"] > 0
        during = [e for e in col.envs() if e["stream"] == "telemetry/s1" and t_full < e["ts"] < t_back]
        assert during, "sampling went on while the disk was full (kept in memory, stored after)"
        alarms = [e for e in col.envs() if e["stream"] == "telemetry/al" and t_full < e["ts"] < t_back]
        assert alarms, "alarms during the disk-full episode survive"
    finally:
        cm.__exit__(None, None, None)


def _make_outbox_with_data(tmp_path: Path, broker: DevBroker, prefix: str) -> tuple[Path, Path, int]:
    """A state dir whose outbox holds un-sent rows (the agent ran against a refusing proxy, then was killed)."""
    state = tmp_path / "state"
    with FaultProxy(broker.port) as proxy:
        proxy.set_mode("refuse")
        cfg = write_config(tmp_path / "c.toml", proxy.port, state, prefix=prefix,
                           sensors=sensors(("s1", 0.005, 400, "telemetry")))
        agent = AgentProcess(cfg).start()
        wait_for(lambda: (st := ostats(state)) is not None and st.last_seq >= 400, 30, 0.2)
        time.sleep(0.3)
        agent.kill()
    return state, cfg, read_stats(outbox_file(state)).last_seq


def _live_wal_end(wal: Path) -> int:
    """The offset just after the last frame of the WAL's live generation (frames carrying its salts)."""
    data = wal.read_bytes()
    page = int.from_bytes(data[8:12], "big")
    salts, off = data[16:24], 32
    while off + 24 + page <= len(data) and data[off + 8:off + 16] == salts:
        off += 24 + page
    return off


@pytest.mark.parametrize("kind", ["flipped_bytes", "truncated_wal", "not_a_database"])
def test_corrupt_database_at_start(tmp_path: Path, broker: DevBroker, kind: str) -> None:
    prefix = unique("cor")
    state, cfg, old_last = _make_outbox_with_data(tmp_path, broker, prefix)
    db = outbox_file(state)
    wal = Path(f"{db}-wal")
    if kind == "flipped_bytes":
        with sqlite3.connect(db) as c:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = bytearray(db.read_bytes())
        for off in range(2 * 4096, len(data), 4096):
            data[off:off + 8] = b"\xff\x13\x37\x00\xfe\xed\xfa\xce"
        db.write_bytes(bytes(data))
    elif kind == "truncated_wal":
        # the outbox checkpoints every 2 s and SQLite then restarts the WAL from its start: frames of
        # older generations may follow the live ones (tearing those loses nothing); tear the live one
        end = _live_wal_end(wal) if wal.exists() else 0
        if end < 32 + 4120:
            pytest.skip("the killed agent left no WAL to tear")
        with open(wal, "r+b") as f:
            f.truncate(end - 1000)
    else:
        for p in (wal, Path(f"{db}-shm")):
            p.unlink(missing_ok=True)
        db.write_bytes(os.urandom(100_000))
    write_config(cfg, broker.port, state, prefix=prefix, sensors=sensors(("s1", 0.01, 50, "telemetry")))
    with StampCollector(broker.port, f"{prefix}/dev-1/#") as col:
        agent = AgentProcess(cfg, args=["--exit-when-done"]).start()
        assert agent.wait(60) == 0, agent.output()[-3000:]
        wait_for(lambda: any(e["stream"] == "events/outbox_corrupt" for e in col.envs()), 20)
        # no crash loop: a second start on the recovered database is clean
        agent2 = AgentProcess(cfg, args=["--exit-when-done"]).start()
        assert agent2.wait(60) == 0, agent2.output()[-3000:]
        envs = col.envs()
        time.sleep(0.5)
    alarms = [e for e in envs if e["stream"] == "events/outbox_corrupt"]
    assert len(alarms) == 1 and alarms[0]["cls"] == "alarm"
    assert list((state / "quarantine").glob("outbox.db.corrupt-*")), "the damaged file is kept aside"
    st = read_stats(db)
    assert st.counters["corrupt_recovered"] == 1
    new_seqs = [e["seq"] for e in envs if e["stream"] == "telemetry/s1"]
    lost = set()
    for e in envs:
        if e["stream"] == "events/dropped" and e["data"]["reason"] == "corrupt":
            for a, b in e["data"]["ranges"]:
                lost.update(range(a, b + 1))
    # seqs never reused: whatever was not salvaged is reported, fresh readings continue above old_last
    fresh = [s for s in new_seqs if s not in lost and s > old_last]
    assert len(fresh) >= 100
    assert all(s > old_last for s in new_seqs if s not in range(1, old_last + 1))
    got = {e["seq"] for e in envs}
    unaccounted = [s for s in range(1, old_last + 1) if s not in got and s not in lost]
    assert not unaccounted, unaccounted[:20]


def test_graceful_stop_with_10000_backlog(tmp_path: Path, broker: DevBroker) -> None:
    prefix = unique("gs")
    state = tmp_path / "state"
    with FaultProxy(broker.port) as proxy, StampCollector(broker.port, f"{prefix}/dev-1/#") as col:
        proxy.set_mode("refuse")
        cfg = write_config(tmp_path / "c.toml", proxy.port, state, prefix=prefix,
                           sensors=sensors(("s1", 0.0002, 10_000, "telemetry")))
        agent = AgentProcess(cfg).start()
        wait_for(lambda: (st := ostats(state)) is not None and st.pending >= 10_000, 60, 0.2)
        t0 = time.monotonic()
        assert agent.terminate(20) == 0
        dt = time.monotonic() - t0
        print(f"stopped with a 10,000-message backlog in {dt:.2f} s")
        assert dt < 5.0
        st = read_stats(outbox_file(state))
        assert st.pending >= 10_000 and st.last_seq >= 10_000
        # restart without sensors, the link up: the whole backlog goes out
        proxy.set_mode("pass")
        write_config(cfg, proxy.port, state, prefix=prefix)
        agent = AgentProcess(cfg).start()
        wait_for(lambda: read_stats(outbox_file(state)).pending == 0, 60, 0.3)
        assert agent.terminate() == 0
        acc = final_check(col, state)
        assert not acc.dropped


def test_graceful_stop_while_draining_slowly(tmp_path: Path, broker: DevBroker) -> None:
    """Connected but throttled: stop gives the drain agent.stop_timeout, then exits; the rest waits."""
    prefix = unique("gd")
    state = tmp_path / "state"
    with FaultProxy(broker.port) as proxy:
        proxy.set_mode("refuse")
        cfg = write_config(tmp_path / "c.toml", proxy.port, state, prefix=prefix,
                           sensors=sensors(("s1", 0.0005, 3000, "telemetry")))
        cfg.write_text(cfg.read_text().replace("[mqtt]\n", "[mqtt]\nmax_rate = 200\n")
                       .replace("stop_timeout = 5", "stop_timeout = 2"))
        agent = AgentProcess(cfg).start()
        wait_for(lambda: (st := ostats(state)) is not None and st.pending >= 3000, 60, 0.2)
        proxy.set_mode("pass")
        time.sleep(1.5)
        t0 = time.monotonic()
        assert agent.terminate(20) == 0
        dt = time.monotonic() - t0
        assert dt < 2 + 4.0, dt
        assert read_stats(outbox_file(state)).pending > 1000, "the throttled backlog is kept for the next start"
    shutil.rmtree(state, ignore_errors=True)
