#!/usr/bin/env python3
"""Weather -> flight delay estimate -> a notice to that flight's group of passengers (the article's second scenario).

Real weather, offline: the Seattle daily observations of 2012-2015 (precipitation, temperatures, wind,
weather) and the FAA airport list that the ``vega_datasets`` package ships
(``pip install 'edge-agent[examples]'``). The airline, its three departures from Seattle-Tacoma and the
passengers are made up for the example.

Who takes part, each an :class:`edge_agent.Agent` with its own id and state directory:

* ``wx-sea``, a weather station, publishes the day's observation on its ``weather/SEA`` stream;
* ``ops``, the airline's operations desk, subscribes to it, estimates each departure's delay from the
  weather with a few rules (snow: de-icing for every flight; fog: morning departures; wind: turboprops
  first; heavy rain) and, for every flight delayed by ``--min-delay`` minutes or more, sends one notice to
  that flight's group ``<flight>-<date>``;
* every passenger is an Agent whose ``groups`` is the flight they are booked on: the passengers of a delayed
  flight get the notice (and open it: ``mark_read``), the others get nothing.

``ops`` prints each notice's delivered/read receipts per passenger and a summary; exits 0 when every
passenger of a delayed flight has read the notice and nobody else got one::

    python examples/flight_delays.py --broker 127.0.0.1:1883 --date 2012-01-21
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _article import broker_address, out, ready, vega_data, wait_receipts

from edge_agent import Agent

SETTINGS: dict[str, dict[str, Any]] = {"mqtt": {"reconnect_min": 0.2, "reconnect_max": 5.0},
                                       "agent": {"stop_timeout": 2.0}}


@dataclass(frozen=True)
class Flight:
    number: str
    dest: str
    departs: str  # local time HH:MM
    aircraft: str
    turboprop: bool
    passengers: tuple[str, ...]


# Made up for the example (the weather and the airports are real).
SCHEDULE = (
    Flight("EA101", "PDX", "07:05", "Dash 8 Q400", True, ("ana", "ben")),
    Flight("EA205", "SFO", "09:40", "Airbus A320", False, ("chen", "dara", "emil")),
    Flight("EA317", "ANC", "18:20", "Boeing 737-800", False, ("fay", "gus")),
)

def seattle_weather(date: str) -> dict[str, Any]:
    """The day's observation from vega_datasets' local copy (no download)."""
    data = vega_data()

    df = data.seattle_weather()
    row = df[df["date"].dt.strftime("%Y-%m-%d") == date]
    if row.empty:
        first, last = df["date"].min().strftime("%Y-%m-%d"), df["date"].max().strftime("%Y-%m-%d")
        raise SystemExit(f"no Seattle observation for {date} (the data covers {first} .. {last})")
    r = row.iloc[0]
    return {"date": date, "station": "SEA", "weather": str(r["weather"]),
            "precipitation_mm": float(r["precipitation"]), "temp_max_c": float(r["temp_max"]),
            "temp_min_c": float(r["temp_min"]), "wind_ms": float(r["wind"])}


def airports(codes: set[str]) -> dict[str, dict[str, Any]]:
    data = vega_data()

    df = data.airports()
    df = df[df["iata"].isin(codes)]
    return {str(r["iata"]): {"name": str(r["name"]), "city": str(r["city"]), "lat": float(r["latitude"]),
                             "lon": float(r["longitude"])} for _, r in df.iterrows()}


def distance_km(a: dict[str, Any], b: dict[str, Any]) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (a["lat"], a["lon"], b["lat"], b["lon"]))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def estimate_delay(wx: dict[str, Any], f: Flight) -> tuple[int, list[str]]:
    """Minutes of delay and why, from the departure airport's weather (a rule of thumb, not a model)."""
    minutes, why = 0.0, []
    morning = int(f.departs[:2]) < 11
    rain = wx["precipitation_mm"]
    if wx["weather"] == "snow":
        m = 45 + 3 * rain
        minutes += m
        why.append(f"snow ({rain:.1f} mm): de-icing and runway clearing +{m:.0f} min")
    elif wx["temp_min_c"] <= 0 and rain > 0 and morning:
        minutes += 30
        why.append(f"frost ({wx['temp_min_c']:.1f} °C): de-icing +30 min")
    if wx["weather"] == "fog" and morning:
        minutes += 40
        why.append("morning fog: reduced departure rate +40 min")
    wind = wx["wind_ms"]
    if wind >= 9:
        minutes += 20
        why.append(f"wind {wind:.1f} m/s: +20 min")
    elif f.turboprop and wind >= 6:
        m = 8 * (wind - 5)
        minutes += m
        why.append(f"wind {wind:.1f} m/s on a turboprop: +{m:.0f} min")
    if rain >= 20 and wx["weather"] != "snow":
        minutes += 20
        why.append(f"heavy rain ({rain:.1f} mm): +20 min")
    return round(minutes), why


def later(hhmm: str, minutes: int) -> str:
    t = int(hhmm[:2]) * 60 + int(hhmm[3:]) + minutes
    return f"{t // 60 % 24:02d}:{t % 60:02d}" + (" (+1 day)" if t >= 24 * 60 else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", type=broker_address, default=("127.0.0.1", 1883), metavar="HOST:PORT")
    p.add_argument("--state-dir", default=None, help="where each agent's outbox and history live (default: a temp dir)")
    p.add_argument("--date", default="2012-01-21", help="the day of operations, 2012-01-01 .. 2015-12-31")
    p.add_argument("--min-delay", type=int, default=15, help="notify the passengers from this many minutes on")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the weather and the receipts")
    args = p.parse_args(argv)

    host, port = args.broker
    tmp = None if args.state_dir else tempfile.TemporaryDirectory(prefix="flight-delays-")
    root = Path(args.state_dir or tmp.name)  # type: ignore[union-attr]
    wx_today = seattle_weather(args.date)
    ports = airports({"SEA", *(f.dest for f in SCHEDULE)})

    def make(dev: str, groups: list[str] | None = None) -> Agent:
        return Agent(device_id=dev, host=host, port=port, state_dir=root / dev, groups=groups or [],
                     settings=SETTINGS)

    def group_of(f: Flight) -> str:
        return f"{f.number}-{args.date}"

    station, ops = make("wx-sea"), make("ops")
    passengers: dict[str, tuple[Flight, Agent]] = {
        name: (f, make(name, [group_of(f)])) for f in SCHEDULE for name in f.passengers}
    inbox: dict[str, list[Any]] = {name: [] for name in passengers}
    notices: dict[str, tuple[Flight, str]] = {}  # flight -> (flight, message id)
    weather_in = threading.Event()

    # --- operations: weather in, notices out ----------------------------------------------------------
    ops.subscribe(f"{ops.cfg.mqtt.topic_prefix}/wx-sea/weather/+")

    @ops.on_message
    def on_weather(msg: Any) -> None:
        if msg.kind != "stream" or msg.stream != "weather/SEA":
            return
        wx = msg.data
        out(f"ops: weather at SEA on {wx['date']} from {msg.sender}: {wx['weather']}, "
            f"{wx['precipitation_mm']:.1f} mm, {wx['temp_min_c']:.1f} .. {wx['temp_max_c']:.1f} °C, "
            f"wind {wx['wind_ms']:.1f} m/s")
        for f in SCHEDULE:
            delay, why = estimate_delay(wx, f)
            dest = ports.get(f.dest, {"name": f.dest})
            leg = (f"{f.number} SEA {f.departs} -> {f.dest} ({dest['name']}"
                   + (f", {distance_km(ports['SEA'], dest):.0f} km" if "lat" in dest and "SEA" in ports else "")
                   + f"), {f.aircraft}")
            if delay < args.min_delay:
                out(f"ops: {leg}: on time" + (f" (+{delay} min expected)" if delay else "") + ", no notice")
                continue
            text = (f"Flight {f.number} to {dest.get('city', f.dest)} on {args.date} is delayed by about {delay} min: "
                    f"new departure {later(f.departs, delay)} instead of {f.departs}. " + "; ".join(why) + ".")
            m = ops.send_group(group_of(f), {"text": text, "flight": f.number, "date": args.date,
                                             "delay_min": delay, "departs": f.departs,
                                             "new_departure": later(f.departs, delay), "reasons": why},
                               ttl=6 * 3600)
            notices[f.number] = (f, m.id)
            out(f"ops: {leg}: DELAYED {delay} min -> {group_of(f)} [{m.id}]")
        weather_in.set()

    seen: set[tuple[str, str, str]] = set()

    @ops.on_message_status
    def on_status(msg: Any) -> None:
        for who, st in sorted(msg.receipts.items()):
            if (msg.id, who, st) not in seen:
                seen.add((msg.id, who, st))
                out(f"  [{msg.id}] {st} by {who}")

    # --- the passengers ---------------------------------------------------------------------------------
    for name, (flight, agent) in passengers.items():
        def on_notice(msg: Any, name: str = name, flight: Flight = flight, agent: Agent = agent) -> None:
            if msg.kind != "msg":
                return
            inbox[name].append(msg)
            out(f"{name} ({flight.number}) got [{msg.id}] from {msg.sender} in {msg.group}: {msg.data['text']}")
            agent.mark_read([msg])
        agent.on_message(on_notice)

    everyone = [station, ops, *(a for _, a in passengers.values())]
    for a in everyone:
        a.start()
    try:
        for a in everyone:
            ready(a)
        out(f"{len(everyone)} agents online via {host}:{port}; bookings: "
            + "; ".join(f"{f.number}-{args.date}: {', '.join(f.passengers)}" for f in SCHEDULE))
        station.publish("weather/SEA", wx_today, cls="event")
        out(f"wx-sea: published the observation of {args.date}")
        if not weather_in.wait(args.timeout):
            out(f"ops: no weather within {args.timeout} s")
            return 1
        ok = True
        for f, mid in notices.values():
            receipts = wait_receipts(ops, mid, dict.fromkeys(f.passengers, "read"), args.timeout)
            done = all(receipts.get(pname) == "read" for pname in f.passengers)
            ok &= done
            out(f"ops: [{mid}] {f.number}: " + "  ".join(f"{pname}={receipts.get(pname, '-')}"
                                                           for pname in f.passengers)
                + ("" if done else "  INCOMPLETE"))
        notified = sorted(n for n, msgs in inbox.items() if msgs)
        expected = sorted(n for f, _ in notices.values() for n in f.passengers)
        quiet = sorted(set(passengers) - set(notified))
        out(f"summary: {len(notices)} of {len(SCHEDULE)} flights delayed; notified: {', '.join(notified) or 'nobody'}; "
            f"not disturbed: {', '.join(quiet) or 'nobody'}")
        if notified != expected:
            out(f"expected exactly these passengers to be notified: {expected}")
            ok = False
        return 0 if ok else 1
    finally:
        for a in reversed(everyone):
            a.stop()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
