#!/usr/bin/env python3
"""A chatbot that answers each message in real time, and a user talking to it (the article's third scenario).

The bot is an :class:`edge_agent.Agent` (id ``bot``) that reads every direct message, marks it read (the
sender sees "read") and answers at once with ``send(sender, {"text": ..., "in_reply_to": <id>})``. It
understands a few intents with plain rules, and answers from real data shipped by the ``vega_datasets``
package (``pip install 'edge-agent[examples]'``), read locally: monthly closing prices of MSFT, AMZN, IBM,
GOOG and AAPL (2000-2010) and Seattle's daily weather (2012-2015).

* greeting (``hi``, ``hello``), ``help``, ``thanks``, ``bye``;
* a stock price: a symbol or company name and a month, ``AAPL 2008-09``, ``what did Apple close at in 2008-09?``;
* the weather on a day, ``weather 2012-01-18``;
* a count, ``how many snow days in 2012?`` (sun, fog, rain, drizzle, snow);
* anything else: "Sorry, I did not understand ...".

By default both run in this process: the user (id ``user``) asks the questions given with ``--ask`` (or a
built-in script) one after the other, each as soon as the previous one was answered, and prints the answer,
the round trip and the status of the question. ``--role bot`` runs only the bot (until ``--seconds`` or
``--max-answers``), for other apps to talk to; ``--role user`` only the user, talking to a bot elsewhere::

    python examples/chatbot.py --broker 127.0.0.1:1883
    python examples/chatbot.py --broker 127.0.0.1:1883 --role bot --seconds 600
    python examples/chatbot.py --broker 127.0.0.1:1883 --role user --ask "GOOG 2008-10" --ask "weather 2014-12-25"
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _article import broker_address, out, ready, vega_data

from edge_agent import Agent

SETTINGS: dict[str, dict[str, Any]] = {"mqtt": {"reconnect_min": 0.2, "reconnect_max": 5.0},
                                       "agent": {"stop_timeout": 2.0}}
SCRIPT = ("hello", "What did Apple close at in 2008-09?", "weather 2012-01-18", "How many snow days in 2012?",
          "what is the meaning of life?", "thanks", "bye")
COMPANIES = {"apple": "AAPL", "microsoft": "MSFT", "amazon": "AMZN", "google": "GOOG", "ibm": "IBM"}
KINDS = ("sun", "fog", "rain", "drizzle", "snow")

class Brain:
    """Intent rules over the stock prices and the Seattle weather (vega_datasets, local files)."""

    def __init__(self) -> None:
        data = vega_data()

        st = data.stocks()
        self.prices: dict[str, tuple[list[str], np.ndarray]] = {}
        for sym, g in st.groupby("symbol", sort=True):
            g = g.sort_values("date")
            self.prices[str(sym)] = (list(g["date"].dt.strftime("%Y-%m")), g["price"].to_numpy(float))
        wx = data.seattle_weather()
        self.wx_days = np.asarray(wx["date"].dt.strftime("%Y-%m-%d"))
        self.wx = {c: wx[c].to_numpy() for c in ("precipitation", "temp_max", "temp_min", "wind", "weather")}
        self.rules: list[tuple[str, re.Pattern[str], Callable[[re.Match[str], str], str]]] = [
            ("greeting", re.compile(r"^\s*(hi|hello|hey)\b", re.I), lambda m, t: (
                "Hello! I know the monthly closing prices of " + ", ".join(self.prices) + " (2000-2010) and "
                "Seattle's daily weather (2012-2015). Try 'AAPL 2008-09' or 'weather 2012-01-18'.")),
            ("help", re.compile(r"^\s*help\b", re.I), lambda m, t: (
                "Ask me: '<symbol or company> YYYY-MM' for a closing price, 'weather YYYY-MM-DD' for Seattle's "
                "weather, 'how many <sun|fog|rain|drizzle|snow> days in YYYY'.")),
            ("weather_count", re.compile(r"how many (\w+) days in (\d{4})", re.I), self.count_days),
            ("weather", re.compile(r"weather\D*(\d{4}-\d{2}-\d{2})", re.I), self.weather),
            ("stock", re.compile(r"\b(" + "|".join([*self.prices, *COMPANIES]) + r")\b.*?\b(\d{4}-\d{2})\b", re.I),
             self.stock),
            ("thanks", re.compile(r"\b(thanks|thank you)\b", re.I), lambda m, t: "You're welcome!"),
            ("bye", re.compile(r"^\s*(bye|goodbye)\b", re.I), lambda m, t: "Bye! Talk to you soon."),
        ]

    def answer(self, text: str) -> tuple[str, str]:
        for intent, rx, fn in self.rules:
            m = rx.search(text)
            if m:
                return intent, fn(m, text)
        return "unknown", f"Sorry, I did not understand \"{text}\". Type 'help' to see what I can answer."

    def stock(self, m: re.Match[str], text: str) -> str:
        sym = COMPANIES.get(m.group(1).lower(), m.group(1).upper())
        month = m.group(2)
        months, p = self.prices[sym]
        if month not in months:
            return f"I have {sym} from {months[0]} to {months[-1]}, not {month}."
        i = months.index(month)
        line = f"{sym} closed {month} at ${p[i]:.2f}"
        if i > 0:
            change = (p[i] / p[i - 1] - 1) * 100
            line += f", {'up' if change >= 0 else 'down'} {abs(change):.1f}% from ${p[i - 1]:.2f} in {months[i - 1]}"
        return line + "."

    def weather(self, m: re.Match[str], text: str) -> str:
        day = m.group(1)
        idx = np.flatnonzero(self.wx_days == day)
        if not len(idx):
            return f"I have Seattle's weather from {self.wx_days[0]} to {self.wx_days[-1]}, not {day}."
        i = int(idx[0])
        w = {k: v[i] for k, v in self.wx.items()}
        return (f"Seattle on {day}: {w['weather']}, {w['temp_min']:.1f} to {w['temp_max']:.1f} °C, "
                f"{w['precipitation']:.1f} mm of precipitation, wind {w['wind']:.1f} m/s.")

    def count_days(self, m: re.Match[str], text: str) -> str:
        kind, year = m.group(1).lower(), m.group(2)
        if kind not in KINDS:
            return f"I know these kinds of day: {', '.join(KINDS)}."
        in_year = np.char.startswith(self.wx_days.astype(str), year)
        if not in_year.any():
            return f"I have Seattle's weather for 2012 to 2015, not {year}."
        hits = self.wx_days[in_year & (self.wx["weather"] == kind)]
        if not len(hits):
            return f"No {kind} days in Seattle in {year}."
        return (f"Seattle had {len(hits)} {kind} day{'s' if len(hits) != 1 else ''} in {year} "
                f"(first {hits[0]}, last {hits[-1]}).")


def run_bot(bot: Agent, brain: Brain, answered: list[str]) -> None:
    @bot.on_message
    def on_question(msg: Any) -> None:
        if msg.kind != "msg" or msg.group:
            return
        t0 = time.monotonic()
        text = msg.data.get("text", "") if isinstance(msg.data, dict) else str(msg.data)
        bot.mark_read([msg])
        intent, reply = brain.answer(text)
        r = bot.send(msg.sender, {"text": reply, "in_reply_to": msg.id, "intent": intent}, ttl=600)
        answered.append(msg.id)
        out(f"  bot: [{msg.id}] from {msg.sender} -> {intent}, answered [{r.id}] in "
            f"{(time.monotonic() - t0) * 1000:.1f} ms")


def run_user(user: Agent, bot_id: str, questions: list[str], timeout: float) -> int:
    replies: dict[str, Any] = {}
    cond = threading.Condition()

    @user.on_message
    def on_reply(msg: Any) -> None:
        if msg.kind != "msg" or msg.sender != bot_id or not isinstance(msg.data, dict):
            return
        user.mark_read([msg])
        with cond:
            replies[msg.data.get("in_reply_to", "")] = msg
            cond.notify_all()

    failures = 0
    for q in questions:
        t0 = time.monotonic()
        m = user.send(bot_id, {"text": q}, ttl=600)
        out(f"{user.device_id}: {q}  [{m.id}]")
        with cond:
            cond.wait_for(lambda m=m: m.id in replies, timeout)
            reply = replies.get(m.id)
        if reply is None:
            out(f"  (no answer from {bot_id} within {timeout} s)")
            failures += 1
            continue
        rtt = (time.monotonic() - t0) * 1000
        try:
            status = user.wait_status(m, "read", timeout=5).status
        except TimeoutError as e:
            status = str(e)
        out(f"{bot_id}: {reply.data['text']}")
        out(f"  (round trip {rtt:.0f} ms; [{m.id}] {status})")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", type=broker_address, default=("127.0.0.1", 1883), metavar="HOST:PORT")
    p.add_argument("--state-dir", default=None, help="where each agent's outbox and history live (default: a temp dir)")
    p.add_argument("--role", choices=("both", "bot", "user"), default="both")
    p.add_argument("--bot-id", default="bot")
    p.add_argument("--user-id", default="user")
    p.add_argument("--ask", action="append", help="a question for the bot (repeat; default: a built-in script)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for each answer")
    p.add_argument("--seconds", type=float, default=0.0, help="--role bot: stop after this long (0: until SIGTERM)")
    p.add_argument("--max-answers", type=int, default=0, help="--role bot: stop after this many answers (0: no limit)")
    args = p.parse_args(argv)

    host, port = args.broker
    tmp = None if args.state_dir else tempfile.TemporaryDirectory(prefix="chatbot-")
    root = Path(args.state_dir or tmp.name)  # type: ignore[union-attr]

    def make(dev: str) -> Agent:
        return Agent(device_id=dev, host=host, port=port, state_dir=root / dev, settings=SETTINGS)

    agents: list[Agent] = []
    answered: list[str] = []
    if args.role in ("both", "bot"):
        brain = Brain()
        bot = make(args.bot_id)
        run_bot(bot, brain, answered)
        agents.append(bot)
    user = make(args.user_id) if args.role in ("both", "user") else None
    if user is not None:
        agents.append(user)
    stop = threading.Event()
    if args.role == "bot":
        signal.signal(signal.SIGTERM, lambda s, f: stop.set())
        signal.signal(signal.SIGINT, lambda s, f: stop.set())
    for a in agents:
        a.start()
    try:
        for a in agents:
            ready(a)
        out(f"{' and '.join(a.device_id for a in agents)} online via {host}:{port}")
        if user is None:
            out(f"{args.bot_id}: waiting for questions")
            deadline = time.monotonic() + args.seconds if args.seconds else float("inf")
            while not stop.is_set() and time.monotonic() < deadline and not (
                    args.max_answers and len(answered) >= args.max_answers):
                stop.wait(0.1)
            out(f"{args.bot_id}: answered {len(answered)} message(s)")
            return 0
        return run_user(user, args.bot_id, args.ask or list(SCRIPT), args.timeout)
    finally:
        for a in reversed(agents):
            a.stop()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
