"""Idempotency across restarts: a real `python -m edge_agent run` process, SIGTERM and SIGKILL."""

from __future__ import annotations

import time
from pathlib import Path

from edge_agent import codec
from edge_agent.commands.signing import Signer
from tests.commands.conftest import Requester, agent_config, key_snippet
from tests.helpers import AgentProcess, wait_for

T = "edge/dev-1/cmd/"


def _agent(tmp_path: Path, port: int, signer: Signer) -> AgentProcess:
    cfg = agent_config(tmp_path / "agent.toml", port, tmp_path / "state", keys=key_snippet(signer),
                       commands='modules = ["tests.commands.usercmds"]', sensors=False)
    return AgentProcess(cfg).start()


def _ready(r: Requester, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        corr = r.publish(T + "ping", codec.encode({}))
        try:
            r.wait_reply(corr, timeout=1.0)
            return
        except AssertionError:
            continue
    raise AssertionError("agent did not answer ping")


def _lines(p: Path) -> list[str]:
    return p.read_text().splitlines() if p.exists() else []


def test_replay_after_restart_gets_stored_result(broker, tmp_path: Path, signer: Signer, requester: Requester) -> None:
    marker = tmp_path / "marker"
    agent = _agent(tmp_path, broker.port, signer)
    try:
        _ready(requester)
        raw = codec.encode(signer.sign("device", "dev-1", "test.slow", {"seconds": 0, "marker": str(marker)}))
        first = requester.wait_reply(requester.publish(T + "test.slow", raw))
        assert first["status"] == "ok" and len(_lines(marker)) == 1
        before = requester.wait_reply(requester.publish(T + "test.slow", raw))  # replay, same process
        assert before.get("replay") is True and len(_lines(marker)) == 1
        assert agent.terminate() == 0
        agent = AgentProcess(agent.config).start()
        _ready(requester)
        after = requester.wait_reply(requester.publish(T + "test.slow", raw))  # replay after the restart
        assert after["status"] == "ok" and after.get("replay") is True and after["result"] == first["result"]
        time.sleep(0.5)
        assert len(_lines(marker)) == 1, agent.output()
    finally:
        if agent.alive():
            agent.terminate()


def test_sigkill_during_command_then_redelivery_runs_once(broker, tmp_path: Path, signer: Signer,
                                                          requester: Requester) -> None:
    marker = tmp_path / "marker"
    agent = _agent(tmp_path, broker.port, signer)
    try:
        _ready(requester)
        raw = codec.encode(signer.sign("device", "dev-1", "test.slow", {"seconds": 60, "marker": str(marker)},
                                       ttl=600))
        corr = requester.publish(T + "test.slow", raw)
        assert requester.wait_reply(corr, final=False)["status"] == "accepted"
        wait_for(lambda: len(_lines(marker)) == 1, 10, msg="command started")
        agent.kill()  # SIGKILL mid-command
        agent = AgentProcess(agent.config).start()
        _ready(requester)
        rep = requester.wait_reply(requester.publish(T + "test.slow", raw))  # the operator/broker re-sends it
        assert rep["status"] == "error" and rep["error"]["code"] == "interrupted" and rep["replay"] is True
        time.sleep(1.0)
        assert len(_lines(marker)) == 1, "the command ran again after the restart"
        assert "interrupted by the last stop" in agent.output()
    finally:
        if agent.alive():
            agent.terminate()


def test_agent_restart_replies_then_exits_nonzero(broker, tmp_path: Path, signer: Signer,
                                                  requester: Requester) -> None:
    agent = _agent(tmp_path, broker.port, signer)
    try:
        _ready(requester)
        rep = requester.wait_reply(requester.publish(T + "agent.restart", codec.encode(
            signer.sign("device", "dev-1", "agent.restart", {}))))
        assert rep["status"] == "ok" and rep["result"]["exit_code"] == 75
        assert agent.wait(20) == 75  # systemd's Restart=on-failure starts it again
    finally:
        if agent.alive():
            agent.terminate()


def test_broker_redelivers_after_agent_killed_before_puback(broker, tmp_path: Path, signer: Signer,
                                                            requester: Requester) -> None:
    """The agent is frozen (SIGSTOP) when the command arrives, then SIGKILLed: no PUBACK was ever sent, so the
    broker redelivers from the agent's persistent session after the restart; it runs once, and a later
    duplicate gets the stored result."""
    import signal

    marker = tmp_path / "marker"
    agent = _agent(tmp_path, broker.port, signer)
    try:
        _ready(requester)
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGSTOP)
        raw = codec.encode(signer.sign("device", "dev-1", "test.slow", {"seconds": 0, "marker": str(marker)},
                                       ttl=600))
        corr = requester.publish(T + "test.slow", raw)
        time.sleep(0.5)
        agent.kill()
        assert not marker.exists()
        agent = AgentProcess(agent.config).start()
        rep = requester.wait_reply(corr, timeout=30)  # the redelivered request, answered to its Response Topic
        assert rep["status"] == "ok" and not rep.get("replay"), rep
        again = requester.wait_reply(requester.publish(T + "test.slow", raw))
        assert again.get("replay") is True
        time.sleep(0.5)
        assert len(_lines(marker)) == 1
    finally:
        if agent.alive():
            agent.terminate()
