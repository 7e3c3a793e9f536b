"""CommandService against the fake host (tests/fakes.py): no broker, no App; the service's own logic.

Requests go in through ``FakeHost.deliver`` (the real router and its ack policy); replies are read from
what the service put into the (fake) outbox.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import codec
from edge_agent import config as config_mod
from edge_agent.commands.registry import Registry
from edge_agent.commands.service import CommandContext, CommandService
from edge_agent.commands.signing import Signer
from edge_agent.host import Disposition
from tests.commands.conftest import key_snippet
from tests.fakes import FakeControl, FakeHost
from tests.helpers import wait_for

T = "edge/dev-1/cmd/"
REPLY = "edge/_ctl/op/reply"


class Led:
    def __init__(self) -> None:
        self.on = False

    def set(self, value: Any, duration: float | None = None) -> dict[str, Any]:
        if not isinstance(value, bool):
            raise ValueError("a LED is on or off")
        self.on = value
        return {"on": value}


def make_config(tmp_path: Path, signer: Signer) -> config_mod.Config:
    return config_mod.loads(f'[device]\nid = "dev-1"\ngroups = ["lab"]\n[storage]\ndir = "{tmp_path}"\n'
                            f"[commands]\n{key_snippet(signer)}")


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def host(tmp_path: Path, signer: Signer) -> FakeHost:
    return FakeHost(make_config(tmp_path, signer), tmp_path, control=FakeControl(outputs={"led": Led()}))


@pytest.fixture
def svc(host: FakeHost) -> Iterator[CommandService]:
    s = CommandService(host)
    s.exit_process = lambda code: host.control.shutdowns.append(float(code))  # recorded, not exiting
    s.start()
    yield s
    s.stop()


def request(host: FakeHost, name: str, req: dict[str, Any], corr: bytes = b"c1") -> Disposition | None:
    return host.deliver(T + name, codec.encode(req), response_topic=REPLY, correlation_data=corr)


def replies(host: FakeHost, corr: bytes = b"c1") -> list[dict[str, Any]]:
    out = []
    for msg in host.sent_to(REPLY):
        assert msg.raw is not None and msg.props is not None
        if msg.props.get("correlation_data") == corr:
            out.append(json.loads(msg.raw) if msg.raw[:1] == b"{" else codec.decode(msg.raw))
    return out


def final_reply(host: FakeHost, corr: bytes = b"c1") -> dict[str, Any]:
    wait_for(lambda: any(r.get("status") != "accepted" for r in replies(host, corr)), 5, msg="a final reply")
    return next(r for r in replies(host, corr) if r.get("status") != "accepted")


def test_signed_command_is_run_and_its_reply_put(host: FakeHost, svc: CommandService, signer: Signer) -> None:
    req = signer.sign("device", "dev-1", "output.set", {"output": "led", "value": True})
    assert request(host, "output.set", req) is Disposition.ACK
    assert host.acked_inbound == [T + "output.set"]
    rep = final_reply(host)
    assert rep == {"id": req["id"], "device": "dev-1", "name": "output.set", "status": "ok",
                   "result": {"output": "led", "value": True, "duration": None, "on": True}}
    (msg,) = host.sent_to(REPLY)
    assert msg.cls == "event" and msg.stream == "cmd-reply/output.set" and msg.ttl == 600.0
    assert host.control.outputs["led"].on is True
    assert svc.store.get(req["id"]).state == "done"  # type: ignore[union-attr]


def test_bad_signature_gets_an_error_reply(host: FakeHost, svc: CommandService, signer: Signer) -> None:
    req = signer.sign("device", "dev-1", "output.set", {"output": "led", "value": True})
    req["sig"] = bytes(64)
    request(host, "output.set", req)
    rep = final_reply(host)
    assert rep["status"] == "error" and rep["error"]["code"] == "bad_signature" and rep["id"] == req["id"]
    assert host.acked_inbound == [T + "output.set"]  # refused for good: acknowledged
    assert host.control.outputs["led"].on is False and svc.counters["executed"] == 0
    assert svc.refusals == {"bad_signature": 1}


def test_id_with_a_trailing_newline_is_refused(host: FakeHost, svc: CommandService, signer: Signer) -> None:
    req = signer.sign("device", "dev-1", "ping", cmd_id="abc\n")
    request(host, "ping", req)
    rep = final_reply(host)
    assert rep["status"] == "error" and rep["error"]["code"] == "bad_request" and "is not allowed" in rep["error"][
        "message"]
    assert rep["id"] is None  # an invalid id is not echoed
    assert svc.store.get("abc\n") is None and svc.counters["executed"] == 0


def test_after_reply_runs_once_the_reply_is_put(host: FakeHost, signer: Signer) -> None:
    order: list[str] = []

    def handler(ctx: CommandContext) -> dict[str, Any]:
        ctx.after_reply = lambda: order.append(f"after ({len(host.sent_to(REPLY))} reply put)")
        order.append("handler")
        return {"done": True}

    def register(reg: Registry) -> None:
        reg.add("test.after", handler)

    svc = CommandService(host)
    svc.add_commands(register)
    svc.start()
    try:
        request(host, "test.after", signer.sign("device", "dev-1", "test.after"))
        assert final_reply(host)["result"] == {"done": True}
        wait_for(lambda: len(order) == 2, 5)
        assert order == ["handler", "after (1 reply put)"]
    finally:
        svc.stop()


def test_agent_restart_replies_then_asks_the_agent_to_exit(host: FakeHost, svc: CommandService,
                                                           signer: Signer) -> None:
    request(host, "agent.restart", signer.sign("device", "dev-1", "agent.restart"))
    assert final_reply(host)["result"] == {"restarting": True, "exit_code": 75}
    wait_for(lambda: host.control.shutdowns == [75.0], 5)


def test_builtins_use_the_agent_control(host: FakeHost, svc: CommandService, signer: Signer) -> None:
    request(host, "sensor.set_interval", signer.sign("device", "dev-1", "sensor.set_interval",
                                                     {"sensor": "s1", "interval": 2.5}))
    assert final_reply(host)["status"] == "ok" and host.control.intervals == {"s1": 2.5}
    request(host, "output.set", signer.sign("device", "dev-1", "output.set", {"output": "fan", "value": 1}),
            corr=b"c2")
    assert final_reply(host, b"c2")["error"]["code"] == "no_such_output"
    request(host, "status", {}, corr=b"c3")  # unsigned read-only
    st = final_reply(host, b"c3")["result"]
    assert st["device"] == "dev-1" and st["connection"]["state"] == "online" and st["models"] == {}
    assert st["clock"]["sane"] is True
    request(host, "history.query", signer.sign("device", "dev-1", "history.query"), corr=b"c4")
    assert final_reply(host, b"c4")["error"]["code"] == "unavailable"  # no messaging service on this host


def test_repeat_gets_the_stored_result_and_is_not_run_again(host: FakeHost, svc: CommandService,
                                                            signer: Signer) -> None:
    req = signer.sign("device", "dev-1", "sensor.set_interval", {"sensor": "s1", "interval": 3})
    request(host, "sensor.set_interval", req)
    final_reply(host)
    host.control.intervals.clear()
    request(host, "sensor.set_interval", req, corr=b"again")
    rep = final_reply(host, b"again")
    assert rep["replay"] is True and rep["status"] == "ok" and host.control.intervals == {}
    assert svc.counters["replayed"] == 1 and svc.counters["executed"] == 1


def test_undecodable_and_wrong_target_are_refused_and_acked(host: FakeHost, svc: CommandService) -> None:
    host.deliver(T + "ping", b"\xc1 not msgpack", response_topic=REPLY, correlation_data=b"junk")
    assert final_reply(host, b"junk")["error"]["code"] == "decode_error"
    host.deliver("edge/group/other/cmd/ping", codec.encode({}), response_topic=REPLY, correlation_data=b"grp")
    assert host.router.counters()["inbound_refused"] == 0
    assert len(host.acked_inbound) == 2


def test_command_before_start_is_deferred_not_acked(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = CommandService(host)
    monkeypatch.setattr(svc._ready, "wait", lambda timeout=None: False)  # start() never came
    try:
        assert request(host, "ping", {}) is Disposition.DEFER
        assert host.acked_inbound == [] and host.sent == []  # the broker delivers it again
    finally:
        svc.stop()
