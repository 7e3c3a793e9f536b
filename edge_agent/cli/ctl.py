"""Operator side: ``edge-agent keys generate``, ``edge-agent ctl send``, ``edge-agent ctl watch``.

``ctl send`` signs a command with the operator's Ed25519 key, publishes it with an MQTT 5 Response
Topic (a private ``<prefix>/_ctl/<client id>/reply``) and Correlation Data (the command id), shows
progress on stderr while replies arrive and prints a table. For a group or the fleet the members are
read from the retained ``<prefix>/+/status`` messages (which carry ``groups``), and ``--devices`` /
``--expected`` name members the broker cannot tell about (an agent that went offline); every expected
device that does not answer in time gets a ``no answer`` row. A reply not bound to its sender (see
:mod:`edge_agent.cli.sender`) is not taken and is reported on stderr. Exit status: 0 when every row is
ok and no forged reply came, 1 otherwise, 2 when the broker cannot be reached, 64 for a bad argument
(ids follow :mod:`edge_agent.ids`).

The MQTT side is :class:`edge_agent.cli.sender.Sender`.
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
from edge_agent.cli.display import format_envelope, json_default
from edge_agent.cli.sender import Row, Sender
from edge_agent.commands.signing import Signer
from edge_agent.config import Config
from edge_agent.ids import check_device_id, check_id

DEFAULT_KEY_ENV = "EDGE_AGENT_KEY"


def default_key_path() -> Path:
    if os.environ.get(DEFAULT_KEY_ENV):
        return Path(os.environ[DEFAULT_KEY_ENV])
    import platformdirs

    return Path(platformdirs.user_config_dir("edge-agent", appauthor=False)) / "operator.key"


# ---------------------------------------------------------------- keys generate

def cmd_keys_generate(args: argparse.Namespace) -> int:
    path = Path(args.out) if args.out else default_key_path()
    if path.exists() and not args.force:
        print(f"edge-agent: {path} exists (use --force to replace it)", file=sys.stderr)
        return 1
    signer = Signer.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.private_b64() + "\n")
    os.chmod(path, 0o600)
    print(f"# private key written to {path} (mode 0600; keep it off the devices)", file=sys.stderr)
    print(f"# key id {signer.kid}; add this to each device's config:")
    print("[[commands.keys]]")
    print(f'name = "{args.name}"')
    print(f'public_key = "{signer.public_b64()}"')
    print('allow = ["*"]')
    return 0


# ---------------------------------------------------------------- ctl send

def parse_args_list(items: list[str]) -> dict[str, Any]:
    """``key=value``: value is JSON when it parses (numbers, true, lists...), else text; ``key=@file`` bytes."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"argument {item!r} is not key=value")
        k, v = item.split("=", 1)
        if not k:
            raise ValueError(f"argument {item!r} has no key")
        if v.startswith("@"):
            out[k] = Path(v[1:]).read_bytes()
            continue
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def _short(v: Any, width: int = 70) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=json_default, separators=(",", ":"))
    return s if len(s) <= width else s[: width - 3] + "..."


def format_table(rows: list[Row]) -> str:
    cells = [("DEVICE", "STATUS", "RESULT", "LATENCY")]
    for r in rows:
        res = f"{r.error.get('code')}: {r.error.get('message')}" if r.error else _short(r.result)
        cells.append((r.device, r.status, _short(res), "-" if r.latency_ms is None else f"{r.latency_ms:.0f} ms"))
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(4)).rstrip() for c in cells)


def _load_signer(args: argparse.Namespace) -> Signer | None:
    if args.unsigned:
        return None
    key = Path(args.key) if args.key else default_key_path()
    try:
        return Signer.load(key)
    except FileNotFoundError:
        raise ValueError(f"no operator key at {key} (run `edge-agent keys generate`, give --key, "
                         "or --unsigned for read-only commands)") from None


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """(kind, target) of ``ctl send``/``ctl watch``: device, group or all; ValueError for a bad id."""
    if args.device is not None:
        return "device", check_device_id(args.device, "--device")
    if args.group is not None:
        return "group", check_id(args.group, "--group")
    return "all", "all"


def _exchange(sender: Sender, cfg: Config, args: argparse.Namespace, kind: str, target: str,
              cmd_args: dict[str, Any], listed: list[str]) -> list[Row] | None:
    """Connect, send, collect replies with progress on stderr; None when the broker cannot be reached."""
    if not sender.connect(min(args.timeout, cfg.mqtt.connect_timeout)):
        print(f"edge-agent ctl send: cannot reach the broker at {cfg.mqtt.host}:{cfg.mqtt.port}: "
              f"{sender.transport.status.reason}", file=sys.stderr)
        return None
    expected = sorted(set(sender.members(kind, target)) | set(listed))
    n_exp = max(args.expected or 0, len(expected))

    def progress(dev: str, rep: dict[str, Any], ms: float) -> None:
        done = len(sender.replies)
        total = f"/{n_exp}" if n_exp else ""
        print(f"[{done}{total}] {dev}: {rep.get('status')} ({ms:.0f} ms)", file=sys.stderr, flush=True)

    sender.on_progress = progress
    cmd_id = sender.send(kind, target, args.name, cmd_args, ttl=args.ttl, cmd_id=args.id)
    print(f"sent {args.name} {cmd_id} to {kind} {target}"
          + (f", waiting for {n_exp} device(s)" if n_exp else f", collecting replies for {args.timeout:g} s"),
          file=sys.stderr, flush=True)
    sender.wait(expected, args.expected or 0, args.timeout)
    rows = sender.rows(expected)
    sender.save_cache()
    return rows


def cmd_ctl_send(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    try:
        cmd_args = parse_args_list(args.args)
        kind, target = _target(args)
        listed = [check_device_id(d, "--devices") for d in (args.devices or "").split(",") if d]
        if args.id is not None:
            check_id(args.id, "--id")
        signer = _load_signer(args)
    except (ValueError, OSError) as e:
        print(f"edge-agent ctl send: {e}", file=sys.stderr)
        return 64
    sender = Sender(cfg, signer)
    try:
        rows = _exchange(sender, cfg, args, kind, target, cmd_args, listed)
    finally:
        sender.close()
    if rows is None:
        return 2
    answered = sum(1 for r in rows if r.status != "no answer")
    if args.expected and answered < args.expected:
        extra = args.expected - answered - sum(1 for r in rows if r.status == "no answer")
        for i in range(max(0, extra)):
            rows.append(Row(f"(unknown #{i + 1})", "no answer", "no reply before the timeout"))
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], default=json_default))
    else:
        print(format_table(rows))
    for why in sender.forged[:10]:
        print(f"warning: forged or stray {why}: not taken", file=sys.stderr)
    if len(sender.forged) > 10:
        print(f"warning: {len(sender.forged) - 10} more forged or stray replies not taken", file=sys.stderr)
    return 0 if rows and all(r.status == "ok" for r in rows) and not sender.forged else 1


# ---------------------------------------------------------------- ctl watch

def cmd_ctl_watch(args: argparse.Namespace) -> int:
    from edge_agent.transport.mqtt import MqttTransport

    cfg = config_mod.load(args.config)
    try:
        _target(args)
    except ValueError as e:
        print(f"edge-agent ctl watch: {e}", file=sys.stderr)
        return 64
    prefix = cfg.mqtt.topic_prefix
    members: set[str] = set()
    seen = 0
    done = threading.Event()

    def on_message(m: Any) -> None:
        nonlocal seen
        parts = m.topic.split("/")
        if args.group:
            if m.topic.endswith("/status"):
                try:
                    st = json.loads(m.payload)
                    if args.group in (st.get("groups") or []):
                        members.add(st["dev"])
                except (ValueError, AttributeError, KeyError, TypeError):
                    pass
            in_group = parts[1:3] == ["group", args.group] or (len(parts) > 1 and parts[1] in members)
            if not in_group:
                return
        print(format_envelope(m.topic, m.payload), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            done.set()

    t = MqttTransport(cfg.mqtt, client_id=f"edge-watch-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                      on_message=on_message, persistent_session=False)
    if args.device:
        t.subscribe(f"{prefix}/{args.device}/#", qos=1)
    else:
        t.subscribe(f"{prefix}/#", qos=1)
    t.start()
    try:
        done.wait(args.seconds or None)
    except KeyboardInterrupt:
        pass
    finally:
        t.stop(timeout=2.0)
    return 0


# ---------------------------------------------------------------- registration

def register(sub: Any) -> None:
    """Add ``keys`` and ``ctl`` to the ``edge-agent`` parser (called by edge_agent.cli.main)."""
    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", "-c", help="config file with the [mqtt] settings (broker, TLS, prefix)")
        return sp

    keys = sub.add_parser("keys", help="operator signing keys")
    ks = keys.add_subparsers(dest="keys_cmd", required=True, metavar="SUBCOMMAND")
    sp = ks.add_parser("generate", help="create an Ed25519 operator key and print its config snippet")
    sp.add_argument("--out", help=f"private key file (default: ${DEFAULT_KEY_ENV} or the user config dir)")
    sp.add_argument("--name", default=os.environ.get("USER", "operator"), help="operator name for the snippet")
    sp.add_argument("--force", action="store_true", help="replace an existing key file")
    sp.set_defaults(fn=cmd_keys_generate)

    ctl = sub.add_parser("ctl", help="send commands to devices and watch them")
    cs = ctl.add_subparsers(dest="ctl_cmd", required=True, metavar="SUBCOMMAND")
    sp = with_config(cs.add_parser("send", help="send a signed command and show every reply"))
    tgt = sp.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--device", help="one device id")
    tgt.add_argument("--group", help="a group (device.groups)")
    tgt.add_argument("--all", action="store_true", help="every device")
    sp.add_argument("name", help="command name, e.g. ping, status, config.set")
    sp.add_argument("args", nargs="*", help="key=value arguments (JSON values; key=@file for bytes)")
    sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for replies (default 10)")
    sp.add_argument("--ttl", type=float, default=60.0, help="seconds the command stays valid (default 60)")
    sp.add_argument("--key", help="operator private key file")
    sp.add_argument("--unsigned", action="store_true", help="send without a signature (read-only commands)")
    sp.add_argument("--expected", type=int, default=0, help="number of devices expected to answer")
    sp.add_argument("--devices", help="comma-separated device ids expected to answer")
    sp.add_argument("--id", help="command id (default: random); re-using one asks for the stored result")
    sp.add_argument("--json", action="store_true", help="print the rows as JSON")
    sp.set_defaults(fn=cmd_ctl_send)
    sp = with_config(cs.add_parser("watch", help="decoded telemetry, events and status, live"))
    w = sp.add_mutually_exclusive_group()
    w.add_argument("--device", help="one device id")
    w.add_argument("--group", help="devices of a group (from their retained status)")
    sp.add_argument("--count", type=int, default=0, help="exit after this many messages")
    sp.add_argument("--seconds", type=float, default=0.0, help="exit after this many seconds")
    sp.set_defaults(fn=cmd_ctl_watch)
