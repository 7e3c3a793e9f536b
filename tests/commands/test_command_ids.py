"""Command ids follow the one id rule (edge_agent.ids) at admission: a trailing newline is refused and
never echoed (it would split the log line and the reply's id)."""

from __future__ import annotations

from tests.commands.conftest import Requester

T = "edge/dev-1/cmd/"


def test_command_id_with_a_trailing_newline_is_refused(make_app, requester: Requester) -> None:
    app = make_app(sensors=False)
    ok = requester.request(T + "ping", {"id": "abc"})
    assert ok["status"] == "ok" and ok["id"] == "abc"
    for bad in ("abc\n", "abc\r\n", "_abc", "a/b", "x" * 65, ""):
        rep = requester.request(T + "ping", {"id": bad})
        assert rep["status"] == "error" and rep["error"]["code"] == "bad_request", (bad, rep)
        assert rep["id"] is None, (bad, rep)
        assert "is not allowed: letters, digits" in rep["error"]["message"]
    assert app.service("commands").counters["executed"] == 1
