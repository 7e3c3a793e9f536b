"""``edge-agent messages``, ``history_query`` (the history.query command) and the asyncio face."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from edge_agent import AsyncAgent
from edge_agent.cli import main
from edge_agent.devbroker import DevBroker
from edge_agent.messaging.history import HISTORY_FILE, History, HistoryError
from tests.messaging.common import FAST, make_agent

T0 = 1_700_000_000.0


def setup_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    h = History(state / HISTORY_FILE)
    h.add(mid="me:1", sender="me", seq=1, outgoing=True, kind="msg", data={"text": "pump check at noon"}, ts=T0 + 1,
          status="read", peer="bob")
    h.add(mid="bob:4", sender="bob", seq=4, outgoing=False, kind="msg", data={"text": "pump is noisy"}, ts=T0 + 2,
          status="received", peer="bob")
    h.add(mid="ann:9", sender="ann", seq=9, outgoing=False, kind="msg", data="valve stuck", ts=T0 + 3,
          status="received", group="ops")
    h.add(mid="me:2", sender="me", seq=2, outgoing=True, kind="file", data={"name": "m.tflite", "size": 10},
          ts=T0 + 4, status="sent", peer="bob")
    h.close()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[device]\nid = "me"\n[storage]\ndir = "{state}"\n')
    return cfg


def test_messages_cli_filters_search_summary_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup_state(tmp_path)
    assert main(["messages", "--config", str(cfg)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[2] for ln in lines] == ["me:1", "bob:4", "ann:9", "me:2"]  # oldest first
    assert "[file m.tflite 10 B]" in lines[3] and "-> peer bob" in lines[0]

    assert main(["messages", "--config", str(cfg), "--peer", "bob", "--search", "pump", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["id"] for r in rows] == ["me:1", "bob:4"] and rows[1]["data"] == {"text": "pump is noisy"}

    assert main(["messages", "--config", str(cfg), "--group", "ops", "--unread", "--json"]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.strip().splitlines()] == ["ann:9"]

    assert main(["messages", "--config", str(cfg), "--since", str(T0 + 2), "--until", str(T0 + 4), "--limit",
                 "1", "--newest-first", "--json"]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.strip().splitlines()] == ["ann:9"]

    assert main(["messages", "--config", str(cfg), "--kind", "file", "--json"]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.strip().splitlines()] == ["me:2"]

    assert main(["messages", "--config", str(cfg), "--summary", "--json"]) == 0
    summ = {s["conv"]: s for s in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert summ["peer:bob"]["unread"] == 1 and summ["peer:bob"]["last"]["id"] == "me:2"
    assert summ["group:ops"]["unread"] == 1

    assert main(["messages", "--config", str(cfg), "--summary"]) == 0
    assert "peer:bob" in capsys.readouterr().out


def test_messages_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup_state(tmp_path)
    assert main(["messages", "--config", str(cfg), "--since", "last tuesday"]) == 64
    assert "since: expected epoch seconds" in capsys.readouterr().err
    empty = tmp_path / "empty.toml"
    empty.write_text(f'[storage]\ndir = "{tmp_path / "nothing"}"\n')
    assert main(["messages", "--config", str(empty)]) == 66
    assert "no message history here" in capsys.readouterr().err


def test_async_agent_and_history_query(broker: DevBroker, tmp_path: Path) -> None:
    sender = make_agent(broker, tmp_path, "123")

    async def scenario() -> list[str]:
        async with AsyncAgent(device_id="456", host="127.0.0.1", port=broker.port, state_dir=tmp_path / "456",
                              settings={"mqtt": FAST}) as b:
            assert b.wait_online(10)
            with sender:
                m = sender.send("456", {"text": "via asyncio"})
                got = []
                async for msg in b.messages():
                    got.append(msg.data["text"])
                    b.mark_read([msg])
                    break
                done = await asyncio.to_thread(sender.wait_status, m, "read", timeout=10)
                assert done.status == "read"
                rows = b.service.history_query(peer="123", search="asyncio")
                assert [r["id"] for r in rows] == [m.id] and rows[0]["status"] == "read"
                with pytest.raises(HistoryError, match="unknown history filter"):
                    b.service.history_query(colour="red")
                return got

    assert asyncio.run(scenario()) == ["via asyncio"]


def test_daemon_receives_stores_and_acknowledges(broker: DevBroker, tmp_path: Path) -> None:
    """The daemon (``edge-agent run``) is the other user of the messaging service: it stores what it
    receives, returns delivered receipts, and ``edge-agent messages`` reads its history while it runs."""
    import subprocess
    import sys

    from tests.helpers import AgentProcess, write_config

    cfg = write_config(tmp_path / "dev-1.toml", broker.port, tmp_path / "dev-1-state", device="dev-1")
    daemon = AgentProcess(cfg).start()
    try:
        from tests.helpers import wait_for

        # its first connection creates its session (inbox + group subscriptions): wait for it
        wait_for(lambda: "mqtt online" in daemon.output(), 30, msg="daemon online")
        time.sleep(0.5)
        a = make_agent(broker, tmp_path, "app-1")
        with a:
            assert a.wait_online(10)
            m = a.send("dev-1", {"text": "calibrate sensor s1"})
            g = a.send_group("lab", "lab meeting at 3")
            a.wait_status(m, "delivered", timeout=30)
            a.wait_status(g, "delivered", timeout=30)
            assert a.message(g.id).receipts == {"dev-1": "delivered"}  # type: ignore[union-attr]
        out = subprocess.run([sys.executable, "-m", "edge_agent", "messages", "--config", str(cfg), "--json"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        rows = [json.loads(x) for x in out.stdout.strip().splitlines()]
        assert [(r["id"], r["data"]) for r in rows] == [(m.id, {"text": "calibrate sensor s1"}),
                                                         (g.id, "lab meeting at 3")]
        assert rows[1]["group"] == "lab" and rows[0]["peer"] == "app-1" and rows[0]["unread"]
    finally:
        assert daemon.terminate() == 0, daemon.output()[-3000:]


def test_stop_from_inside_a_callback(broker: DevBroker, tmp_path: Path) -> None:
    a = make_agent(broker, tmp_path, "123")
    b = make_agent(broker, tmp_path, "456")
    got: list[str] = []

    @b.on_message
    def on(msg):  # type: ignore[no-untyped-def]
        got.append(msg.data)
        b.stop()

    with a:
        b.start()
        assert b.wait_online(10)
        time.sleep(0.5)  # and its SUBACK: a message sent at once (write-behind) must find the subscription
        a.send("456", "bye")
        from tests.helpers import wait_for

        wait_for(lambda: b._stopped and b.service.history.closed, 15, msg="b stopped itself")
    assert got == ["bye"]
