"""Operator side of the fleet roster: ``edge-agent roster add|remove|show|publish|device-key``.

The roster file (default ``roster.json`` beside the operator key, or ``--file``) is edited, re-signed
with the operator's private key (``--key``, as for ``ctl send``) and its version bumped on every change;
``publish`` puts it retained on ``<prefix>/_roster``, where every device takes it if it verifies and is
newer than what it holds. ``device-key`` prints a device's own public key (making the key file at the
first call), to be given to ``roster add`` on the operator's machine. See docs/messaging.md.
Exit status: 0 done, 1 refused (e.g. a roster that does not verify), 2 broker unreachable, 64 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from edge_agent import config as config_mod
from edge_agent.cli.ctl import default_key_path
from edge_agent.commands.signing import Signer
from edge_agent.config import Config
from edge_agent.messaging.authn import KEY_FILE, DeviceKeyError, load_or_create_key, public_b64
from edge_agent.roster import RosterError, add_device, read_roster, remove_device, roster_topic, verify_roster

ROSTER_ENV = "EDGE_AGENT_ROSTER"


def default_roster_path() -> Path:
    env = os.environ.get(ROSTER_ENV)
    return Path(env) if env else default_key_path().parent / "roster.json"


def _config(args: argparse.Namespace) -> Config | None:
    return config_mod.load(args.config) if getattr(args, "config", None) else None


def _fleet(args: argparse.Namespace) -> str:
    cfg = _config(args)
    return cfg.mqtt.topic_prefix if cfg is not None else args.prefix


def _signer(args: argparse.Namespace) -> Signer:
    key = Path(args.key) if args.key else default_key_path()
    try:
        return Signer.load(key)
    except FileNotFoundError:
        raise ValueError(f"no operator key at {key} (run `edge-agent keys generate` or give --key)") from None


def _file(args: argparse.Namespace) -> Path:
    return Path(args.file) if args.file else default_roster_path()


def _fail(what: str, e: Exception, code: int) -> int:
    print(f"edge-agent roster {what}: {e}", file=sys.stderr)
    return code


def cmd_edit(args: argparse.Namespace) -> int:
    """``add`` (also a new key: rotation) and ``remove`` (revocation): edit, bump the version, re-sign."""
    path = _file(args)
    try:
        if args.roster_cmd == "add":
            r = add_device(path, args.device, args.public_key, _signer(args), groups=args.group or [],
                           fleet=_fleet(args))
        else:
            r = remove_device(path, args.device, _signer(args), fleet=_fleet(args))
    except (ValueError, OSError) as e:
        return _fail(args.roster_cmd, e, 64)
    print(f"{path}: version {r.version}, {len(r.devices)} device(s); now `edge-agent roster publish`",
          file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    path = _file(args)
    try:
        cfg = _config(args)
        r = (verify_roster(path.read_bytes(), cfg.commands.keys, cfg.mqtt.topic_prefix) if cfg is not None
             else read_roster(path))
    except (RosterError, OSError) as e:
        return _fail("show", e, 1)
    if args.json:
        print(json.dumps(r.as_document()))
        return 0
    print(f"fleet {r.fleet}, version {r.version}, signed by key id {r.kid or '-'}"
          + (" (verified with the config's commands.keys)" if cfg is not None else ""))
    for dev, e in sorted(r.devices.items()):
        print(f"  {dev:24} {e.key_b64}  {','.join(e.groups)}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from edge_agent.transport.mqtt import MqttTransport
    from edge_agent.transport.types import Accepted, Ack

    cfg = config_mod.load(args.config)
    path = _file(args)
    try:
        payload = path.read_bytes()
        r = verify_roster(payload, cfg.commands.keys, cfg.mqtt.topic_prefix) if cfg.commands.keys else read_roster(path)
    except (RosterError, OSError) as e:
        return _fail("publish", e, 1)
    acked = threading.Event()
    result: list[bool] = []

    def on_ack(_token: Any, ack: Ack) -> None:
        result.append(isinstance(ack, Accepted))
        acked.set()

    t = MqttTransport(cfg.mqtt, client_id=f"edge-roster-{os.getpid()}-{uuid.uuid4().hex[:6]}", on_ack=on_ack,
                      persistent_session=False)
    t.start()
    try:
        if not t.wait_online(args.timeout):
            return _fail("publish", RuntimeError(f"cannot reach the broker at {cfg.mqtt.host}:{cfg.mqtt.port}"), 2)
        t.publish(roster_topic(cfg.mqtt.topic_prefix), payload, qos=1, retain=True)
        if not acked.wait(args.timeout) or not result[0]:
            return _fail("publish", RuntimeError("the broker did not accept the roster (ACL?)"), 1)
    finally:
        t.stop(timeout=2.0)
    print(f"roster version {r.version} ({len(r.devices)} device(s)) published retained on "
          f"{roster_topic(cfg.mqtt.topic_prefix)}", file=sys.stderr)
    return 0


def cmd_device_key(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    path = Path(cfg.messaging.key) if cfg.messaging.key else cfg.state_dir / KEY_FILE
    try:
        print(public_b64(load_or_create_key(path)))
    except (DeviceKeyError, OSError) as e:
        return _fail("device-key", e, 1)
    return 0


def register(sub: Any) -> None:
    """Add ``roster`` to the ``edge-agent`` parser (called by edge_agent.cli.main)."""
    ro = sub.add_parser("roster", help="the signed fleet roster (device public keys) for signed messages")
    rs = ro.add_subparsers(dest="roster_cmd", required=True, metavar="SUBCOMMAND")

    def common(sp: argparse.ArgumentParser, *, signs: bool) -> argparse.ArgumentParser:
        sp.add_argument("--file", help=f"roster file (default: ${ROSTER_ENV} or roster.json beside the operator key)")
        sp.add_argument("--config", "-c", help="config file (topic prefix = fleet; commands.keys to verify)")
        if signs:
            sp.add_argument("--key", help="operator private key file (as for `ctl send`)")
            sp.add_argument("--prefix", default="edge", help="fleet (topic prefix) without --config (default edge)")
        return sp

    sp = common(rs.add_parser("add", help="add a device or give it a new key (rotation); re-signs"), signs=True)
    sp.add_argument("device", help="device id")
    sp.add_argument("--public-key", required=True, help="the device's key (`edge-agent roster device-key`)")
    sp.add_argument("--group", action="append", help="a group of the device (repeat)")
    sp.set_defaults(fn=cmd_edit)
    sp = common(rs.add_parser("remove", help="remove a device (revocation); re-signs"), signs=True)
    sp.add_argument("device", help="device id")
    sp.set_defaults(fn=cmd_edit)
    sp = common(rs.add_parser("show", help="print the roster (verified when --config is given)"), signs=False)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_show)
    sp = common(rs.add_parser("publish", help="publish the roster retained on <prefix>/_roster"), signs=False)
    sp.add_argument("--timeout", type=float, default=10.0)
    sp.set_defaults(fn=cmd_publish)
    sp = rs.add_parser("device-key", help="print this device's public key (made at the first call)")
    sp.add_argument("--config", "-c", help="the device's config file")
    sp.set_defaults(fn=cmd_device_key)
