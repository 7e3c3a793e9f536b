"""InferenceService as the agent builds it (from_host): readings through a host tap, results through put()."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edge_agent import config as config_mod
from edge_agent.sensors.base import Reading
from tests.fakes import FakeHost
from tests.inference.conftest import model_cfg, model_files, scale


def test_from_host_taps_readings_and_puts_results(tmp_path: Path) -> None:
    from edge_agent.inference.service import InferenceService

    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=2, version="3")
    base = config_mod.loads(f'[device]\nid = "dev-1"\n[storage]\ndir = "{tmp_path / "state"}"\n')
    cfg = dataclasses.replace(base, models=[model_cfg(p, window=2, threshold=10.0, alarm="hot")])
    host = FakeHost(cfg, tmp_path / "state")
    svc = InferenceService.from_host(host)
    assert len(host.taps) == 1 and svc.state_dir == tmp_path / "state"
    svc.start()
    try:
        for seq, v in enumerate([1.0, 1.0, 5.0, 5.0], start=1):
            host.feed(Reading("s1", 1000.0 + seq, {"value": v}), seq)
        host.feed(Reading("other", 1005.0, {"value": 9.0}), 5)  # no model wants it
        assert svc.wait_idle(10)
    finally:
        svc.stop()
    results = host.sent_to("/inference/m")
    assert [m.topic for m in results] == ["edge/dev-1/inference/m"] * 2
    assert [m.data["score"] for m in results] == [1.0, 25.0]  # type: ignore[index]
    assert [m.data["seq"] for m in results] == [[1, 2], [3, 4]]  # type: ignore[index]
    assert all(m.cls == "inference" for m in results)
    (alarm,) = host.sent_to("/events/hot")
    assert alarm.cls == "alarm" and alarm.topic == "edge/dev-1/events/hot"
