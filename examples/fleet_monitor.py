#!/usr/bin/env python3
"""A backend that watches a fleet's inference results and alerts a group when a device reports an anomaly.

Every edge-agent device publishes inference results (msgpack envelopes) on
``<prefix>/<dev>/inference/<model>`` with data such as ``{"score": 0.93, "threshold": 0.5, "alarm": true}``,
and raises alarms on ``<prefix>/<dev>/events/<name>`` with class "alarm". This monitor subscribes to both
with MQTT 5 *shared subscriptions* (``$share/<share>/<prefix>/+/inference/#``): run several copies with the
same ``--share`` and the broker (any MQTT 5 broker, clustered ones too) gives each result to one of them,
so the load is split and a copy can die without results being lost. On an anomaly it sends one message to
the ``--alert-group`` (people's chat apps or devices that list that group in ``device.groups``), at most
once per device and model every ``--cooldown`` seconds::

    python examples/fleet_monitor.py --port 1883 --id monitor-1 --share monitors --alert-group ops
    python examples/fleet_monitor.py --port 1883 --id monitor-2 --share monitors --alert-group ops

Each result handled prints one line (``result <dev> <stream> score=...``), each alert ``ALERT ...``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent import Agent


class FleetMonitor:
    def __init__(self, agent: Agent, *, prefix: str, share: str, alert_group: str, threshold: float | None,
                 cooldown: float) -> None:
        self.agent = agent
        self.alert_group = alert_group
        self.threshold = threshold
        self.cooldown = cooldown
        self.last_alert: dict[tuple[str, str], float] = {}
        self.results = 0
        self.alerts = 0
        agent.subscribe(f"{prefix}/+/inference/#", share=share)
        agent.subscribe(f"{prefix}/+/events/+", share=share)
        agent.on_message(self.on_message)

    def on_message(self, msg: Any) -> None:
        if msg.kind != "stream" or not isinstance(msg.data, dict):
            return
        d = msg.data
        if msg.stream.startswith("inference/"):
            self.results += 1
            score = d.get("score")
            print(f"result {msg.sender} {msg.stream} seq={msg.seq} score={score}", flush=True)
            limit = self.threshold if self.threshold is not None else d.get("threshold")
            anomalous = bool(d.get("alarm")) or (isinstance(score, int | float) and isinstance(limit, int | float)
                                                 and limit > 0 and score >= limit)
            if anomalous:
                self.alert(msg.sender, msg.stream.split("/", 1)[1], score, limit)
        elif msg.stream.startswith("events/") and msg.cls == "alarm":
            self.alert(msg.sender, str(d.get("model") or msg.stream.split("/", 1)[1]), d.get("score"),
                       d.get("threshold"))

    def alert(self, dev: str, model: str, score: Any, limit: Any) -> None:
        now = time.monotonic()
        key = (dev, model)
        if now - self.last_alert.get(key, -1e18) < self.cooldown:
            return
        self.last_alert[key] = now
        self.alerts += 1
        text = f"anomaly on {dev}: model {model} score {score} (threshold {limit})"
        m = self.agent.send_group(self.alert_group, {"text": text, "device": dev, "model": model, "score": score},
                                  ttl=3600)
        print(f"ALERT {m.id} to {self.alert_group}: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="an edge-agent config file; the options below override it")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--id", default="fleet-monitor", help="this monitor's id (unique per copy)")
    p.add_argument("--prefix", default=None, help="topic prefix of the fleet (default: the config's, else 'edge')")
    p.add_argument("--share", default="fleet-monitors", help="shared-subscription group: copies split the load")
    p.add_argument("--alert-group", default="ops", help="group that receives the alerts")
    p.add_argument("--threshold", type=float, default=None,
                   help="alert when score >= this (default: each device's own threshold / alarm flag)")
    p.add_argument("--cooldown", type=float, default=60.0, help="seconds between alerts per device and model")
    p.add_argument("--state-dir", default=None, help="outbox + history (default ./fleet-monitor-<id>)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this many seconds (0 = until SIGTERM)")
    args = p.parse_args(argv)

    agent = Agent(args.config, device_id=args.id, topic_prefix=args.prefix,
                  host=args.host or (None if args.config else "127.0.0.1"), port=args.port,
                  state_dir=args.state_dir or str(Path.cwd() / f"fleet-monitor-{args.id}"),
                  settings={"mqtt": {"reconnect_min": 0.2, "reconnect_max": 5.0}, "agent": {"stop_timeout": 3.0}})
    mon = FleetMonitor(agent, prefix=agent.cfg.mqtt.topic_prefix, share=args.share, alert_group=args.alert_group,
                       threshold=args.threshold, cooldown=args.cooldown)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    with agent:
        if agent.wait_online(10):
            print(f"monitor {args.id}: watching $share/{args.share}/{agent.cfg.mqtt.topic_prefix}/+/inference/#",
                  flush=True)
        stop.wait(args.seconds or None)
    print(f"monitor {args.id}: {mon.results} result(s), {mon.alerts} alert(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
