"""The examples, run end to end as real processes against a real broker."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_agent import Agent
from edge_agent.devbroker import DevBroker
from tests.helpers import ROOT, wait_for
from tests.messaging.common import Recorder, make_agent


class Proc:
    """A child process whose stdout lines are collected as they come."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.p = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, cwd=cwd, bufsize=1)
        self.lines: list[str] = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def close(self, timeout: float = 20.0) -> int:
        if self.p.stdin is not None and not self.p.stdin.closed:
            self.p.stdin.close()
        try:
            return self.p.wait(timeout)
        finally:
            if self.p.poll() is None:
                self.p.kill()
            self.t.join(2)

    def output(self) -> str:
        return "\n".join(self.lines)


def test_chat_example_two_terminals(broker: DevBroker, tmp_path: Path) -> None:
    common = ["--port", str(broker.port), "--linger", "5"]
    a = Proc([str(ROOT / "examples" / "chat.py"), "--me", "123", "--peer", "456", "--state-dir",
              str(tmp_path / "a"), *common], tmp_path)
    b = Proc([str(ROOT / "examples" / "chat.py"), "--me", "456", "--peer", "123", "--state-dir",
              str(tmp_path / "b"), *common], tmp_path)
    try:
        wait_for(lambda: a.has("* online") and b.has("* online"), 20, msg="both chats online")
        time.sleep(0.5)  # first connections: let the new sessions' SUBACKs land
        a.send("hello from 123")
        wait_for(lambda: b.has("123: hello from 123"), 15, msg=f"b got it:\n{b.output()}")
        wait_for(lambda: a.has("[123:1] read"), 15, msg=f"a saw read:\n{a.output()}")
        statuses = [ln.split("] ", 1)[1] for ln in a.lines if ln.strip().startswith("[123:1] ")
                    and not ln.strip().endswith("hello from 123")]
        assert statuses == ["queued", "sent", "delivered", "read"], a.output()
        b.send("hi 123, loud and clear")
        wait_for(lambda: a.has("456: hi 123, loud and clear"), 15, msg=f"a got the reply:\n{a.output()}")
        wait_for(lambda: b.has("read"), 15)
        a.send("/history")
        wait_for(lambda: a.has("me: hello from 123 (read)"), 10, msg=f"history:\n{a.output()}")
    finally:
        rc_a, rc_b = a.close(), b.close()
    assert rc_a == 0 and rc_b == 0, a.output() + b.output()


def test_fleet_monitor_splits_the_load_and_alerts_the_group(broker: DevBroker, tmp_path: Path) -> None:
    ops = make_agent(broker, tmp_path, "ops-phone", groups=("ops",))
    rec = Recorder(ops, read=True)
    fleet = [make_agent(broker, tmp_path, f"pi-{i}") for i in (1, 2)]
    mons = [Proc([str(ROOT / "examples" / "fleet_monitor.py"), "--port", str(broker.port), "--id", f"mon-{i}",
                  "--share", "monitors", "--alert-group", "ops", "--cooldown", "0",
                  "--state-dir", str(tmp_path / f"mon-{i}")], tmp_path) for i in (1, 2)]
    try:
        with ops:
            assert ops.wait_online(10)
            wait_for(lambda: all(m.has("watching $share/monitors/edge/+/inference/#") for m in mons), 20,
                     msg="monitors subscribed")
            for a in fleet:
                a.start()
            n = 20
            for _ in range(n):
                for a in fleet:
                    a.publish("inference/m1", {"model": "m1", "score": 0.1, "threshold": 0.5, "alarm": False},
                              cls="inference")
            fleet[1].publish("inference/m1", {"model": "m1", "score": 0.93, "threshold": 0.5, "alarm": True},
                             cls="inference")
            fleet[0].publish("events/m1_anomaly", {"model": "m1", "score": 0.8, "threshold": 0.5}, cls="alarm")
            total = 2 * n + 1

            def results() -> list[int]:
                return [sum(1 for ln in list(m.lines) if ln.startswith("result ")) for m in mons]

            wait_for(lambda: sum(results()) >= total, 30, msg=f"results {results()}")
            wait_for(lambda: len(rec.messages) >= 2, 20, msg="alerts reached the ops group")
            texts = sorted(m.data["text"] for m in rec.messages)
            assert any("pi-2" in t and "0.93" in t for t in texts), texts
            assert any("pi-1" in t and "0.8" in t for t in texts), texts
            assert all(m.group == "ops" for m in rec.messages)
            for a in fleet:
                a.stop()
    finally:
        for m in mons:
            if m.p.poll() is None:
                m.p.send_signal(signal.SIGTERM)
        codes = [m.close() for m in mons]
    split = results()
    assert sum(split) == total, split  # each result handled by exactly one copy
    assert all(c > 0 for c in split), f"shared subscription did not split the load: {split}"
    assert codes == [0, 0], "\n".join(m.output() for m in mons)


# ---------------------------------------------------------------------------------------------------------
# The article's scenarios: examples/stock_alerts.py, flight_delays.py, chatbot.py (data from vega_datasets)

def run_example(name: str, args: list[str], cwd: Path, timeout: float = 90.0) -> tuple[int, list[str]]:
    """Run examples/<name> to its end; its exit code and output lines."""
    p = Proc([str(ROOT / "examples" / name), *args], cwd)
    rc = p.close(timeout)
    return rc, p.lines


def ready(agent: Agent) -> None:
    """Online with the subscriptions in place at the broker (a later PUBLISH's PUBACK comes after them)."""
    assert agent.wait_online(15)
    agent.wait_status(agent.publish("presence", {"online": True}), "sent", timeout=15)


STOCK_ALERTS = {  # (symbol, month) -> (closing price, sign of the move): the real 2007-2009 shocks, |z| >= 2.5
    ("AMZN", "2007-04"): (61.33, +1), ("MSFT", "2007-10"): (35.03, +1), ("AAPL", "2008-01"): (135.36, -1),
    ("MSFT", "2008-02"): (26.07, -1), ("GOOG", "2008-04"): (574.29, +1), ("AAPL", "2008-09"): (113.66, -1),
    ("IBM", "2008-10"): (90.24, -1),
}


def test_stock_alerts_reach_every_investor_with_per_member_receipts(broker: DevBroker, tmp_path: Path) -> None:
    watcher = make_agent(broker, tmp_path, "watcher", groups=("investors",))  # one more member, in the test
    rec = Recorder(watcher)
    with watcher:
        ready(watcher)
        rc, lines = run_example("stock_alerts.py", ["--broker", f"127.0.0.1:{broker.port}", "--pace", "0",
                                                    "--state-dir", str(tmp_path / "stocks")], tmp_path)
        out = "\n".join(lines)
        assert rc == 0, out
        sent = {}  # message id -> text, as the analyst announced them
        for ln in lines:
            m = re.match(r"analyst -> investors \[(analyst:\d+)\]: (.*)$", ln)
            if m:
                sent[m.group(1)] = m.group(2)
        assert len(sent) == len(STOCK_ALERTS), out
        for (sym, month), (price, sign) in STOCK_ALERTS.items():
            assert any(t.startswith(f"{sym} {'jumped' if sign > 0 else 'fell'} ") and f" in {month} to ${price:.2f} "
                       in t for t in sent.values()), (sym, month, out)
        for member in ("alice", "bob", "carol"):  # every member printed every alert, with its text
            for mid, text in sent.items():
                assert any(ln.startswith(f"{member} got [{mid}] from analyst: {text}") for ln in lines), (member, mid)
        table = [ln for ln in lines if re.match(r"\s+analyst:\d+\s+[A-Z]+ \d{4}-\d{2}\s", ln)]
        assert len(table) == len(sent), out
        assert all("alice=read  bob=read  carol=delivered" in ln for ln in table), out
        assert all(f"[{mid}] read by bob" in out and f"[{mid}] delivered by carol" in out for mid in sent)
        assert "read by carol" not in out  # carol never opened them
        # what reached the test's own member: the same alerts, with the analysis in the data
        wait_for(lambda: len(rec.messages) == len(sent), 10, msg=f"watcher got {rec.data()}")
        got = {(m.data["symbol"], m.data["month"]): m for m in rec.messages}
        assert set(got) == set(STOCK_ALERTS)
        for key, (price, sign) in STOCK_ALERTS.items():
            m = got[key]
            assert m.sender == "analyst" and m.group == "investors" and m.id in sent
            assert m.data["price"] == price and m.data["text"] == sent[m.id]
            assert abs(m.data["z"]) >= 2.5 and (m.data["z"] > 0) == (sign > 0) == (m.data["change_pct"] > 0)


@pytest.mark.parametrize(("date", "delayed", "quiet"), [
    ("2012-09-24", {"EA101": 40, "EA205": 40}, {"EA317"}),  # morning fog: the two morning departures
    ("2012-01-21", {"EA101": 26}, {"EA205", "EA317"}),     # wind 8.2 m/s: only the turboprop
])
def test_flight_delay_notice_reaches_that_flights_passengers_only(broker: DevBroker, tmp_path: Path, date: str,
                                                                   delayed: dict[str, int], quiet: set[str]) -> None:
    passengers = {"EA101": ("ana", "ben"), "EA205": ("chen", "dara", "emil"), "EA317": ("fay", "gus")}
    # the test books itself on every flight of the day (one agent per flight)
    spies = {f: make_agent(broker, tmp_path, f"spy-{f}", groups=(f"{f}-{date}",)) for f in passengers}
    recs = {f: Recorder(a) for f, a in spies.items()}
    for a in spies.values():
        a.start()
    try:
        for a in spies.values():
            ready(a)
        rc, lines = run_example("flight_delays.py", ["--broker", f"127.0.0.1:{broker.port}", "--date", date,
                                                     "--state-dir", str(tmp_path / "flights")], tmp_path)
        out = "\n".join(lines)
        assert rc == 0, out
        assert any(ln.startswith(f"ops: weather at SEA on {date} from wx-sea: ") for ln in lines), out
        for f, names in passengers.items():
            for name in names:
                got = [ln for ln in lines if ln.startswith(f"{name} ({f}) got ")]
                if f in delayed:
                    assert len(got) == 1, (name, out)
                    assert f"in {f}-{date}: Flight {f} " in got[0] and f"delayed by about {delayed[f]} min" in got[0]
                else:
                    assert got == [], (name, out)
        notified = sorted(n for f in delayed for n in passengers[f])
        assert (f"summary: {len(delayed)} of 3 flights delayed; notified: {', '.join(notified)}; not disturbed: "
                f"{', '.join(sorted(n for f in quiet for n in passengers[f]))}") in lines, out
        for f in delayed:
            line = next(ln for ln in lines if re.match(rf"ops: \[ops:\d+\] {f}: ", ln))
            assert line.endswith("  ".join(f"{n}=read" for n in passengers[f])), line
        # the notices as they reached the test's own bookings
        for f in delayed:
            wait_for(lambda f=f: len(recs[f].messages) == 1, 10, msg=f"{f}: {recs[f].data()}")
            m = recs[f].messages[0]
            assert m.sender == "ops" and m.group == f"{f}-{date}"
            assert m.data["flight"] == f and m.data["date"] == date and m.data["delay_min"] == delayed[f]
        time.sleep(0.5)  # anything sent to the other flights would be here by now
        for f in quiet:
            assert recs[f].messages == [], (f, recs[f].data())
    finally:
        for a in spies.values():
            a.stop()


CHAT = [  # the chatbot's built-in script and its answers from the real data
    ("hello", "Hello! I know the monthly closing prices of AAPL, AMZN, GOOG, IBM, MSFT (2000-2010) and Seattle's "
              "daily weather (2012-2015). Try 'AAPL 2008-09' or 'weather 2012-01-18'."),
    ("What did Apple close at in 2008-09?", "AAPL closed 2008-09 at $113.66, down 33.0% from $169.53 in 2008-08."),
    ("weather 2012-01-18", "Seattle on 2012-01-18: snow, -2.8 to 0.0 °C, 19.8 mm of precipitation, wind 5.0 m/s."),
    ("How many snow days in 2012?", "Seattle had 21 snow days in 2012 (first 2012-01-14, last 2012-12-25)."),
    ("what is the meaning of life?", "Sorry, I did not understand \"what is the meaning of life?\". "
                                     "Type 'help' to see what I can answer."),
    ("thanks", "You're welcome!"),
    ("bye", "Bye! Talk to you soon."),
]


def test_chatbot_answers_each_question_of_the_user(broker: DevBroker, tmp_path: Path) -> None:
    rc, lines = run_example("chatbot.py", ["--broker", f"127.0.0.1:{broker.port}",
                                           "--state-dir", str(tmp_path / "chat")], tmp_path)
    out = "\n".join(lines)
    assert rc == 0, out
    said = [ln for ln in lines if ln.startswith(("user: ", "bot: "))]
    expected = []
    for q, a in CHAT:
        expected += [f"user: {q}", f"bot: {a}"]
    assert [re.sub(r"  \[user:\d+\]$", "", ln) for ln in said] == expected, out
    # each question was read by the bot before its answer was shown
    assert len([ln for ln in lines if re.match(r"  \(round trip \d+ ms; \[user:\d+\] read\)$", ln)]) == len(CHAT), out


def test_chatbot_alone_answers_another_app_in_real_time(broker: DevBroker, tmp_path: Path) -> None:
    questions = {"GOOG 2008-10": "GOOG closed 2008-10 at $359.36, down 10.3% from $400.52 in 2008-09.",
                 "how many fog days in 2013?": "Seattle had 82 fog days in 2013 (first 2013-03-09, last 2013-12-27).",
                 "Microsoft in 1999-12": "I have MSFT from 2000-01 to 2010-03, not 1999-12."}
    bot = Proc([str(ROOT / "examples" / "chatbot.py"), "--broker", f"127.0.0.1:{broker.port}", "--role", "bot",
                "--max-answers", str(len(questions)), "--state-dir", str(tmp_path / "bot")], tmp_path)
    me = make_agent(broker, tmp_path, "someone")
    rec = Recorder(me, read=True)
    try:
        with me:
            ready(me)
            wait_for(lambda: bot.has("bot: waiting for questions"), 30, msg=bot.output())
            asked = {}
            for q in questions:
                m = me.send("bot", {"text": q})
                asked[m.id] = q
                wait_for(lambda m=m: any(r.data.get("in_reply_to") == m.id for r in list(rec.messages)), 10,
                         msg=f"no answer to {q!r}:\n{bot.output()}")
            replies = {r.data["in_reply_to"]: r for r in rec.messages}
            assert set(replies) == set(asked)
            for mid, q in asked.items():
                assert replies[mid].sender == "bot" and replies[mid].data["text"] == questions[q]
                assert me.wait_status(mid, "read", timeout=10).status == "read"  # the bot read it
    finally:
        rc = bot.close(30)
    assert rc == 0 and bot.has(f"bot: answered {len(questions)} message(s)"), bot.output()
