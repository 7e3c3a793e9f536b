"""Draining a backlog after an outage: throttled (``mqtt.max_rate``), live data and alarms still flow,
and alarms jump ahead of old telemetry."""

from __future__ import annotations

import time
from pathlib import Path

from edge_agent.devbroker import DevBroker
from edge_agent.outbox import read_stats
from tests.faultkit import FaultProxy
from tests.faults.common import StampCollector, final_check, ostats, outbox_file
from tests.helpers import AgentProcess, sensors, unique, wait_for, write_config

RATE = 150


def test_throttled_drain_live_data_and_alarms_still_flow(tmp_path: Path, broker: DevBroker) -> None:
    prefix = unique("thr")
    state = tmp_path / "state"
    with FaultProxy(broker.port) as proxy, StampCollector(broker.port, f"{prefix}/dev-1/#") as col:
        proxy.set_mode("refuse")
        cfg = write_config(tmp_path / "c.toml", proxy.port, state, prefix=prefix,
                           sensors=sensors(("bulk", 0.0005, 2000, "telemetry"), ("live", 0.1, 0, "telemetry"),
                                           ("al", 0.5, 0, "alarm")))
        cfg.write_text(cfg.read_text().replace("[mqtt]\n", f"[mqtt]\nmax_rate = {RATE}\n"))
        agent = AgentProcess(cfg).start()
        try:
            wait_for(lambda: (st := ostats(state)) is not None and st.pending >= 2000, 30, 0.2)
            t_up = time.time()
            proxy.set_mode("pass")
            time.sleep(6.0)
            envs = col.envs()
            bulk = [e for e in envs if e["stream"] == "telemetry/bulk"]
            live = [e for e in envs if e["stream"] == "telemetry/live" and e["ts"] > t_up + 0.5]
            alarms = [e for e in envs if e["stream"] == "telemetry/al" and e["ts"] > t_up + 0.5]
            # the backlog drains at about max_rate (plus one bucket of burst) ...
            assert len(bulk) <= RATE * 6.5 + RATE + 50, len(bulk)
            assert len(bulk) >= RATE * 6 * 0.5, len(bulk)
            assert read_stats(outbox_file(state)).pending > 500, "still draining"
            # ... while readings taken now arrive at once, not after the backlog
            assert len(live) >= 30, len(live)
            lat = sorted(e["_rx"] - e["ts"] for e in live)
            print(f"throttled drain: {len(bulk)} backlog msgs in 6 s (max_rate {RATE}/s); live latency "
                  f"median {lat[len(lat) // 2] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms; {len(alarms)} alarms")
            assert lat[len(lat) // 2] < 1.0 and lat[-1] < 3.0  # generous: a loaded 2-core CI box
            assert alarms and max(e["_rx"] - e["ts"] for e in alarms) < 3.0
            proxy.throttle(None)
        finally:
            assert agent.terminate() == 0, agent.output()[-3000:]
        # the rest of the backlog goes on the next start (no sensors), unthrottled
        write_config(cfg, proxy.port, state, prefix=prefix)
        agent = AgentProcess(cfg).start()
        wait_for(lambda: read_stats(outbox_file(state)).pending == 0, 60, 0.3)
        assert agent.terminate() == 0
        final_check(col, state)


def test_alarm_jumps_ahead_of_backlog(tmp_path: Path, broker: DevBroker) -> None:
    """Unthrottled drain of an old telemetry backlog: an alarm raised during the drain goes out before
    the telemetry that was queued before it."""
    prefix = unique("pri")
    state = tmp_path / "state"
    with FaultProxy(broker.port) as proxy, StampCollector(broker.port, f"{prefix}/dev-1/#") as col:
        proxy.set_mode("refuse")
        cfg = write_config(tmp_path / "c.toml", proxy.port, state, prefix=prefix,
                           sensors=sensors(("bulk", 0.0002, 8000, "telemetry"), ("al", 0.05, 0, "alarm")))
        proxy.throttle(100_000)  # a slow link: the drain takes a few seconds
        agent = AgentProcess(cfg).start()
        try:
            wait_for(lambda: (st := ostats(state)) is not None and st.pending >= 8000, 60, 0.2)
            proxy.set_mode("pass")
            wait_for(lambda: read_stats(outbox_file(state)).pending < 100, 60, 0.3)
        finally:
            assert agent.terminate() == 0, agent.output()[-3000:]
        final_check(col, state)
    envs = col.envs()
    order = {e["seq"]: i for i, e in enumerate(envs)}
    alarms = [e for e in envs if e["stream"] == "telemetry/al"]
    bulk_last = max(e["seq"] for e in envs if e["stream"] == "telemetry/bulk")
    # an alarm queued before the last backlog reading must arrive before it (it jumped the queue)
    jumped = [a for a in alarms if a["seq"] < bulk_last and order[a["seq"]] < order[bulk_last]]
    late = [a for a in alarms if a["seq"] < bulk_last and order[a["seq"]] > order[bulk_last]]
    assert len(jumped) >= 10 and not late, (len(jumped), len(late))
    first_alarm_pos = min(order[a["seq"]] for a in alarms)
    assert first_alarm_pos < len(envs) * 0.2, "the backlog's alarms went out first"
