#!/usr/bin/env python3
"""Stock quotes analysed as they stream in, alerts sent to a group of investors (the article's first scenario).

Real prices, offline: the monthly closing prices of MSFT, AMZN, IBM, GOOG and AAPL from January 2000 to
March 2010 that the ``vega_datasets`` package ships (``pip install 'edge-agent[examples]'``).

Who takes part, each an :class:`edge_agent.Agent` with its own id and state directory:

* ``quote-feed`` replays the quotes in date order as a stream (``publish("quotes/<SYMBOL>", ...)``);
* ``analyst`` subscribes to that stream and keeps each symbol's price history in numpy arrays. For every new
  month it computes the z-score of the month's log return against the previous 24 months' returns and the
  3- versus 12-month moving averages; a move of ``|z| >= --z`` inside the ``--from``/``--to`` window is an
  alert, sent with ``send_group()`` to the ``investors`` group;
* the members of ``investors`` (``--members``, default alice, bob and carol) print each alert as it
  arrives; all but the last (``--unread``, default carol) open it, i.e. ``mark_read`` it.

The analyst prints every status change of its alerts with the member that caused it
(``[analyst:42] delivered by bob``), then waits until every member has each alert (read for those who read,
delivered for the others) and prints the per-member receipts. Exits 0 when every member got every alert::

    python examples/stock_alerts.py --broker 127.0.0.1:1883
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _article import broker_address, out, ready, vega_data, wait_receipts

from edge_agent import Agent

GROUP = "investors"
SETTINGS: dict[str, dict[str, Any]] = {"mqtt": {"reconnect_min": 0.2, "reconnect_max": 5.0},
                                       "agent": {"stop_timeout": 2.0}}

def load_quotes() -> list[tuple[str, str, float]]:
    """(month 'YYYY-MM', symbol, price) in date order, from vega_datasets' local copy (no download)."""
    data = vega_data()

    df = data.stocks().sort_values(["date", "symbol"], kind="stable")
    return [(d.strftime("%Y-%m"), str(s), float(p)) for d, s, p in zip(df["date"], df["symbol"], df["price"],
                                                                         strict=True)]


@dataclass
class Series:
    months: list[str] = field(default_factory=list)
    prices: list[float] = field(default_factory=list)


class Analyst:
    """z-score of monthly log returns and a moving-average trend, per symbol, with numpy."""

    def __init__(self, *, z_limit: float, lookback: int, first: str, last: str) -> None:
        self.z_limit = z_limit
        self.lookback = lookback
        self.first, self.last = first, last
        self.series: dict[str, Series] = {}
        self.count = 0  # quotes taken in (repeats not counted)

    def add(self, month: str, symbol: str, price: float) -> dict[str, Any] | None:
        s = self.series.setdefault(symbol, Series())
        if s.months and month <= s.months[-1]:
            return None  # a repeat (QoS 1 redelivery) or out of order: already counted
        self.count += 1
        s.months.append(month)
        s.prices.append(price)
        p = np.asarray(s.prices)
        if len(p) < self.lookback + 2 or not (self.first <= month <= self.last):
            return None
        r = np.diff(np.log(p))
        past = r[-1 - self.lookback:-1]
        sd = past.std(ddof=1)
        if sd == 0:
            return None
        z = float((r[-1] - past.mean()) / sd)
        if abs(z) < self.z_limit:
            return None
        fast, slow = float(p[-3:].mean()), float(p[-12:].mean())
        change = float(np.expm1(r[-1]) * 100)
        trend = "above" if fast > slow else "below"
        text = (f"{symbol} {'jumped' if z > 0 else 'fell'} {abs(change):.1f}% in {month} to ${price:.2f} "
                f"(z {z:+.1f}; 3-month average {trend} the 12-month)")
        return {"text": text, "symbol": symbol, "month": month, "price": price, "change_pct": round(change, 2),
                "z": round(z, 2), "ma3": round(fast, 2), "ma12": round(slow, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", type=broker_address, default=("127.0.0.1", 1883), metavar="HOST:PORT")
    p.add_argument("--state-dir", default=None, help="where each agent's outbox and history live (default: a temp dir)")
    p.add_argument("--members", default="alice,bob,carol", help="the investors group, comma-separated ids")
    p.add_argument("--unread", default="carol", help="members who receive the alerts but do not open them")
    p.add_argument("--from", dest="first", default="2007-01", help="first month that can raise an alert")
    p.add_argument("--to", dest="last", default="2009-12", help="last month that can raise an alert")
    p.add_argument("--z", type=float, default=2.5, help="alert when |z-score of the month's return| >= this")
    p.add_argument("--lookback", type=int, default=24, help="months of returns the z-score compares with")
    p.add_argument("--max-alerts", type=int, default=20, help="stop the analysis after this many alerts")
    p.add_argument("--pace", type=float, default=0.01, help="seconds between two months of quotes (0: no pause)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the quotes and the receipts")
    args = p.parse_args(argv)

    host, port = args.broker
    tmp = None if args.state_dir else tempfile.TemporaryDirectory(prefix="stock-alerts-")
    root = Path(args.state_dir or tmp.name)  # type: ignore[union-attr]
    members = [m for m in args.members.split(",") if m]
    unread = {m for m in args.unread.split(",") if m}

    def make(dev: str, groups: list[str] | None = None) -> Agent:
        return Agent(device_id=dev, host=host, port=port, state_dir=root / dev, groups=groups or [],
                     settings=SETTINGS)

    quotes = load_quotes()
    feed, analyst = make("quote-feed"), make("analyst")
    people = {m: make(m, [GROUP]) for m in members}
    prefix = analyst.cfg.mqtt.topic_prefix
    brain = Analyst(z_limit=args.z, lookback=args.lookback, first=args.first, last=args.last)
    alerts: list[str] = []
    quotes_seen = threading.Event()
    expected: list[int] = []  # the count the feed announced at its end

    # --- the analyst: quotes in, alerts out -------------------------------------------------------
    analyst.subscribe(f"{prefix}/quote-feed/quotes/+")

    @analyst.on_message
    def on_quote(msg: Any) -> None:
        if msg.kind != "stream" or not msg.stream.startswith("quotes/"):
            return
        if msg.stream == "quotes/END":
            expected.append(msg.data["count"])
        else:
            d = msg.data
            alert = brain.add(d["month"], d["symbol"], d["price"])
            if alert is not None and len(alerts) < args.max_alerts:
                m = analyst.send_group(GROUP, alert, ttl=3600)
                alerts.append(m.id)
                out(f"analyst -> {GROUP} [{m.id}]: {alert['text']}")
        if expected and brain.count >= expected[0]:
            quotes_seen.set()

    @analyst.on_message_status
    def on_status(msg: Any) -> None:
        if msg.group != GROUP:
            return
        for member, st in sorted(msg.receipts.items()):
            key = (msg.id, member, st)
            if key not in seen_receipts:
                seen_receipts.add(key)
                out(f"  [{msg.id}] {st} by {member}")
        if msg.status in ("sent", "failed", "expired") and (msg.id, msg.status) not in seen_receipts:
            seen_receipts.add((msg.id, msg.status))
            out(f"  [{msg.id}] {msg.status}" + (f" ({msg.reason})" if msg.reason else ""))

    seen_receipts: set[tuple[str, ...]] = set()

    # --- the investors ------------------------------------------------------------------------------
    got: dict[str, list[str]] = {m: [] for m in members}
    for name, agent in people.items():
        def on_alert(msg: Any, name: str = name, agent: Agent = agent) -> None:
            if msg.group != GROUP:
                return
            got[name].append(msg.id)
            opened = name not in unread
            out(f"{name} got [{msg.id}] from {msg.sender}: {msg.data['text']}"
                + ("" if opened else "  (not opened)"))
            if opened:
                agent.mark_read([msg])
        agent.on_message(on_alert)

    everyone = [feed, analyst, *people.values()]
    for a in everyone:
        a.start()
    try:
        for a in everyone:
            ready(a)
        out(f"{len(everyone)} agents online via {host}:{port}; group {GROUP}: {', '.join(members)}")
        out(f"replaying {len(quotes)} monthly quotes ({quotes[0][0]} .. {quotes[-1][0]}), alerts for "
            f"{args.first} .. {args.last} when |z| >= {args.z}")
        for _, month_quotes in itertools.groupby(quotes, key=lambda q: q[0]):
            for month, symbol, price in month_quotes:
                feed.publish(f"quotes/{symbol}", {"month": month, "symbol": symbol, "price": price}, cls="event")
            if args.pace:
                time.sleep(args.pace)
        feed.publish("quotes/END", {"count": len(quotes)}, cls="event")
        if not quotes_seen.wait(args.timeout):
            out(f"analyst: the quote stream did not finish within {args.timeout} s ({brain.count} seen)")
            return 1
        want = {m: ("delivered" if m in unread else "read") for m in members}
        final = {mid: wait_receipts(analyst, mid, want, args.timeout) for mid in alerts}
        complete = True
        out(f"analyst: {brain.count} quotes analysed, {len(alerts)} alert(s) sent; receipts per member:")
        for mid, receipts in final.items():
            ok = all(receipts.get(m) in (("delivered", "read") if w == "delivered" else ("read",))
                     for m, w in want.items())
            complete &= ok
            sym = analyst.message(mid)
            label = f"{sym.data['symbol']} {sym.data['month']}" if sym is not None else mid
            out(f"  {mid:<12} {label:<13} " + "  ".join(f"{m}={receipts.get(m, '-')}" for m in members)
                + ("" if ok else "  INCOMPLETE"))
        missing = {m: len(alerts) - len(set(ids)) for m, ids in got.items() if len(set(ids)) != len(alerts)}
        if missing:
            out(f"members missing alerts: {missing}")
        return 0 if complete and not missing else 1
    finally:
        for a in reversed(everyone):
            a.stop()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
