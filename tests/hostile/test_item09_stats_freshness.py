"""Issue 14 item 9: ``edge-agent outbox stats`` said nothing when its figures were frozen (disk full:
the agent's real figures moved on, the database did not). Now every reading carries ``as_of`` (the last
commit), ``age_s`` and ``stale``; an idle writer still records its commit time every 10 s, so ``stale``
means the agent cannot commit. Real loop-mounted ext4 filled to the last byte, the real CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_agent.cli.main import main
from edge_agent.message import Outgoing
from edge_agent.outbox import Outbox
from tests.faultkit import fill_disk, loop_ext4
from tests.helpers import wait_for, write_config


def _cli_stats(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    capsys.readouterr()
    assert main(["outbox", "stats", "--json", "--config", str(cfg)]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def test_stats_say_when_they_are_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        cm = loop_ext4(tmp_path, size_mb=16)
        mnt = cm.__enter__()
    except RuntimeError as e:
        pytest.skip(f"cannot loop-mount ext4 here: {e}")
    ob = None
    try:
        state = mnt / "state"
        cfg = write_config(tmp_path / "c.toml", 1883, state)
        ob = Outbox(state / "outbox.db", "dev-1", min_free=0, reserve_bytes=0).open()

        def put(n: int) -> None:
            for i in range(n):
                ob.put(Outgoing(topic="edge/dev-1/telemetry/s", stream="telemetry/s", data={"v": i, "p": "x" * 300}))

        put(50)
        assert ob.flush()
        d, err = _cli_stats(cfg, capsys)
        assert d["last_seq"] == 50 and d["age_s"] < 3 and d["stale"] is False and not err
        assert abs(d["as_of"] - time.time()) < 3
        filler = fill_disk(mnt)
        t_full = time.time()
        deadline = time.monotonic() + 17
        while time.monotonic() < deadline:  # the agent's figures move on; the database cannot
            put(20)
            time.sleep(0.2)
        assert ob.last_assigned > 1000
        d, err = _cli_stats(cfg, capsys)
        assert d["last_seq"] < ob.last_assigned
        assert d["as_of"] <= t_full + 1 and d["age_s"] >= 15, d
        assert d["stale"] is True and "old" in err, (d, err)
        filler.unlink()
        wait_for(lambda: ob.flush(1.0), 30, 0.2, "commits succeed again")
        d, err = _cli_stats(cfg, capsys)
        assert d["stale"] is False and d["age_s"] < 3 and d["last_seq"] == ob.last_seq and not err
    finally:
        if ob is not None:
            ob.close(5.0)
        cm.__exit__(None, None, None)
