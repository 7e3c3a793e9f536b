"""The persisted state machine and the clock rules (a Pi without RTC), in-process with a real broker."""

from __future__ import annotations

import time
from pathlib import Path

from edge_agent.commands import service as service_mod
from edge_agent.commands.signing import Signer
from edge_agent.commands.store import CommandStore
from tests.commands.conftest import Requester, key_snippet
from tests.helpers import wait_for

T = "edge/dev-1/cmd/"


def test_store_states_and_interrupted(tmp_path: Path) -> None:
    s = CommandStore(tmp_path / "c.db").open()
    assert s.add("a", "x", b"d", time.time() + 60, {"args": {}}, {"topic": "t"})
    assert not s.add("a", "x", b"d", time.time() + 60, {}, {})  # known id
    assert s.set_running("a") and not s.set_running("a")
    assert s.add("b", "x", b"d", time.time() + 60, {"args": {"k": 1}}, {"topic": "t"})
    s.close()
    s = CommandStore(tmp_path / "c.db").open()  # "restart": a running row is closed as interrupted, never re-run
    assert s.interrupted == ["a"]
    rec = s.get("a")
    assert rec is not None and rec.state == "done" and rec.result["error"]["code"] == "interrupted"
    assert [r.id for r in s.received()] == ["b"]
    s.set_done("b", {"status": "ok", "result": 1})
    assert s.prune(time.time() + 120) == 2 and s.get("a") is None
    s.raise_time_floor(100.0)
    s.raise_time_floor(50.0)
    s.raise_time_floor(130.0)  # within a minute of progress: not worth a write
    assert s.time_floor() == 100.0
    s.raise_time_floor(1000.0)
    s.close()
    s = CommandStore(tmp_path / "c.db").open()
    assert s.time_floor() == 1000.0
    s.close()


def test_received_but_not_started_runs_after_restart(make_app, requester: Requester, signer: Signer) -> None:
    """The agent died after persisting 'received' (PUBACK sent) and before starting: it runs at the next start."""
    from tests.commands import usercmds

    usercmds.COUNTS.clear()
    app = make_app(keys=key_snippet(signer), commands='modules = ["tests.commands.usercmds"]', start=False)
    svc = app.service("commands")
    req = signer.sign("device", "dev-1", "test.count", {"key": "resume"})
    svc.store.add(req["id"], "test.count", b"digest", req["expires_at"],
                  {"args": {"key": "resume"}, "kind": "device", "target": "dev-1", "operator": "alice",
                   "expires_at": req["expires_at"]},
                  {"topic": requester.reply_topic, "corr": b"c1", "json": False, "name": "test.count"})
    app.start()
    rep = requester.wait_reply(b"c1")
    assert rep["status"] == "ok" and usercmds.COUNTS == {"resume": 1}
    assert svc.store.get(req["id"]).state == "done"


def test_clock_wrong_at_boot(make_app, requester: Requester, signer: Signer) -> None:
    """Clock at 1971 (no RTC, no NTP yet): signed commands are refused with clock_not_synced, unsigned
    read-only ones work, status says so; a replay of an executed command still gets only its stored result."""
    from tests.commands import usercmds

    usercmds.COUNTS.clear()
    app = make_app(keys=key_snippet(signer), commands='modules = ["tests.commands.usercmds"]')
    svc = app.service("commands")
    done = signer.sign("device", "dev-1", "test.count", {"key": "c"})
    assert requester.request(T + "test.count", done)["status"] == "ok"

    svc.clock = lambda: 365 * 86400.0  # the clock jumps back to 1971
    fresh = signer.sign("device", "dev-1", "test.count", {"key": "c"})  # signed with the operator's right time
    rep = requester.request(T + "test.count", fresh)
    assert rep["error"]["code"] == "clock_not_synced" and "1971" in rep["error"]["message"]
    assert requester.request(T + "ping", {})["status"] == "ok"
    st = requester.request(T + "status", {})
    assert st["result"]["clock"]["sane"] is False
    rep = requester.request(T + "test.count", done)
    assert rep.get("replay") is True and usercmds.COUNTS == {"c": 1}

    # clock past the build floor but before what this device has already seen (persisted floor)
    real = time.time()
    svc.clock = lambda: real - 3 * 86400
    rep = requester.request(T + "test.count", signer.sign("device", "dev-1", "test.count", {"key": "c"},
                                                          now=real - 3 * 86400))
    assert rep["error"]["code"] == "clock_not_synced"
    svc.clock = time.time  # NTP synchronised
    rep = requester.request(T + "test.count", fresh)
    assert rep["status"] == "ok" and usercmds.COUNTS == {"c": 2}


def test_floor_survives_restart(make_app, tmp_path: Path, signer: Signer) -> None:
    app = make_app(keys=key_snippet(signer), start=False)
    svc = app.service("commands")
    app.start()
    wait_for(lambda: svc.store.time_floor() > service_mod.BUILD_TIME_FLOOR, 5)
    floor = svc.store.time_floor()
    app.stop()
    s = CommandStore(app.state_dir / service_mod.STORE_FILE).open()
    assert s.time_floor() == floor
    s.close()
