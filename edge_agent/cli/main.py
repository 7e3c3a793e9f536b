"""Command line: ``edge-agent run | check-config | outbox stats | sample-config | tail | demo``, plus the
operator's ``keys``/``ctl`` (:mod:`edge_agent.cli.ctl`), ``messages`` (:mod:`edge_agent.cli.messages`),
``roster`` (:mod:`edge_agent.cli.roster`) and ``users`` (:mod:`edge_agent.cli.users`, broker accounts through
Mosquitto's dynamic security plugin).

Entry point ``edge-agent = edge_agent.cli.main:main``; ``python -m edge_agent`` runs the same."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_agent import config as config_mod
from edge_agent.cli import ctl, messages, roster, users
from edge_agent.cli.display import format_envelope, print_config_errors
from edge_agent.config import EX_CONFIG, Config
from edge_agent.errors import ConfigError, OutboxError, StartError
from edge_agent.version import __version__


def _load(args: argparse.Namespace) -> Config:
    return config_mod.load(getattr(args, "config", None))


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent import logs
    from edge_agent.app import App

    cfg = config_mod.check_runnable(_load(args))
    logs.setup(cfg.logging.level, cfg.logging.journal)
    app = App(cfg)
    stop = threading.Event()
    hup = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda s, f: hup.set())
    try:
        app.start()
    except (StartError, OSError) as e:  # what the config checks could not foresee: no traceback, a reason
        app.stop()
        print(f"edge-agent: cannot start: {e}", file=sys.stderr)
        return 78 if isinstance(e, StartError) else 74
    try:
        while not stop.is_set():
            if hup.is_set():
                hup.clear()
                app.reload()
            if args.exit_when_done and app.runners and app.wait_sensors_done(0):
                app.outbox.flush()
                if app.forwarder.drain(0.5):
                    break
            stop.wait(0.2)
    finally:
        app.stop()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = config_mod.check_runnable(_load(args))
    warnings: list[str] = []
    if cfg.models:
        try:
            from edge_agent.inference import runtime

            problem = runtime.unavailable_reason()
        except ImportError as e:
            problem = str(e)
        if problem:
            warnings.append(f"models cannot be loaded on this platform: {problem}")
    if cfg.commands.insecure:
        warnings.append("commands.insecure = true: unsigned state-changing commands are accepted")
    if args.json:
        print(json.dumps({"ok": True, "source": cfg.source, "device": cfg.device.id, "warnings": warnings,
                          "overrides": list(cfg.overrides), "override_file": cfg.override_source}))
    else:
        print(f"{cfg.source}: ok (device {cfg.device.id}, {len(cfg.sensors)} sensor(s), "
              f"broker {cfg.mqtt.host}:{cfg.mqtt.port}, state {cfg.storage.dir})")
        if cfg.overrides:
            print(f"overridden by {cfg.override_source} (config.set): {', '.join(cfg.overrides)}")
        for w in warnings:
            print(f"warning: {w}")
    return 0


def cmd_outbox_stats(args: argparse.Namespace) -> int:
    from edge_agent.app import OUTBOX_FILE
    from edge_agent.outbox import read_stats

    cfg = _load(args)
    st = read_stats(Path(cfg.storage.dir) / OUTBOX_FILE)
    d = st.as_dict()
    if args.json:
        print(json.dumps(d))
    else:
        width = max(len(k) for k in d)
        for k, v in d.items():
            print(f"{k.ljust(width)}  {v}")
    if st.stale:
        print(f"edge-agent: these figures are {st.age_s:.0f} s old (the agent has not committed since: disk "
              "full, stopped or stuck); its status message has the live ones", file=sys.stderr)
    return 0


def cmd_sample_config(args: argparse.Namespace) -> int:
    from edge_agent.sample import render

    sys.stdout.write(render())
    return 0


def tail(cfg: Config, topic: str, count: int = 0, seconds: float = 0.0,
         out: Callable[[str], None] = print, as_json: bool = False) -> int:
    from edge_agent import codec
    from edge_agent.transport.mqtt import MqttTransport

    seen = 0
    done = threading.Event()

    def on_message(m: Any) -> None:
        nonlocal seen
        if as_json:
            try:
                obj = codec.decode(m.payload)
            except Exception:
                obj = m.payload.decode(errors="replace")
            out(json.dumps({"topic": m.topic, "payload": obj}, default=repr))
        else:
            out(format_envelope(m.topic, m.payload))
        seen += 1
        if count and seen >= count:
            done.set()

    import os

    t = MqttTransport(cfg.mqtt, client_id=f"edge-tail-{os.getpid()}", on_message=on_message,
                      persistent_session=False)
    t.subscribe(topic, qos=1)
    t.start()
    try:
        done.wait(seconds or None)
    except KeyboardInterrupt:
        pass
    finally:
        t.stop(timeout=2.0)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    cfg = _load(args)
    topic = args.topic or f"{cfg.mqtt.topic_prefix}/#"
    return tail(cfg, topic, args.count, args.seconds, as_json=args.json)


DEMO_CONFIG = """\
[device]
id = "demo-1"
groups = ["demo"]
[mqtt]
host = "127.0.0.1"
port = {port}
[storage]
dir = "{dir}"
[agent]
status_interval = 10
[[sensors]]
name = "s1"
type = "simulated"
interval = 0.5
spike_every = 40
[[sensors]]
name = "s2"
type = "simulated"
interval = 1.0
offset = 50.0
amplitude = 10.0
seed = 2
"""


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a throwaway Mosquitto, the agent on the embedded default config, and a tail of what arrives."""
    from edge_agent import logs
    from edge_agent.app import App
    from edge_agent.devbroker import BrokerUnavailable, DevBroker

    logs.setup("warning", journal=False)
    try:
        broker = DevBroker().start()
    except BrokerUnavailable as e:
        print(f"demo: {e}", file=sys.stderr)
        return 69
    state = Path(args.state_dir) if args.state_dir else Path(tempfile.mkdtemp(prefix="edge-demo-"))
    text = DEMO_CONFIG.format(port=broker.port, dir=state)
    cfg = config_mod.loads(text, "<embedded demo config>")
    print(f"demo: mosquitto on 127.0.0.1:{broker.port}, outbox in {state}/outbox.db; Ctrl-C stops",
          flush=True)
    app = App(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    app.start()
    tailer = threading.Thread(target=tail, args=(cfg, "edge/#", 0, args.seconds or 0.0,
                                                 lambda s: print(s, flush=True)), daemon=True)
    tailer.start()
    try:
        stop.wait(args.seconds or None)
    except KeyboardInterrupt:
        pass
    finally:
        app.stop()
        time.sleep(0.3)
        broker.close()
    print(f"demo: stopped; last_seq {app.outbox.last_seq}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description="Reliable real-time edge node: sensors and "
                                "inference to MQTT through a durable outbox; signed commands; messaging.")
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", "-c", help="config file (default: $EDGE_AGENT_CONFIG, "
                        "/etc/edge-agent/config.toml, or the user config dir)")
        return sp

    sp = with_config(sub.add_parser("run", help="run the agent in the foreground"))
    sp.add_argument("--exit-when-done", action="store_true",
                    help="exit once every sensor with a count has finished and the backlog is sent")
    sp.set_defaults(fn=cmd_run)
    sp = with_config(sub.add_parser("check-config", help="validate the config (exit 78 on errors)"))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_check_config)
    ob = sub.add_parser("outbox", help="inspect the outbox")
    obs = ob.add_subparsers(dest="outbox_cmd", required=True, metavar="SUBCOMMAND")
    sp = with_config(obs.add_parser("stats", help="backlog and counters"))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_outbox_stats)
    sp = sub.add_parser("sample-config", help="print a commented config with every option")
    sp.set_defaults(fn=cmd_sample_config)
    sp = with_config(sub.add_parser("tail", help="print decoded messages arriving at the broker"))
    sp.add_argument("--topic", help="topic filter (default '<prefix>/#')")
    sp.add_argument("--count", type=int, default=0, help="exit after this many messages")
    sp.add_argument("--seconds", type=float, default=0.0, help="exit after this many seconds")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(fn=cmd_tail)
    sp = sub.add_parser("demo", help="run a local broker + the agent on simulated sensors + a tail")
    sp.add_argument("--seconds", type=float, default=0.0, help="stop after this many seconds")
    sp.add_argument("--state-dir", help="where to keep the demo outbox (default: a temp dir)")
    sp.set_defaults(fn=cmd_demo)
    ctl.register(sub)
    messages.register(sub)
    roster.register(sub)
    users.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except ConfigError as e:
        print_config_errors(e)
        return EX_CONFIG
    except OutboxError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 74
    except BrokenPipeError:
        return 0
