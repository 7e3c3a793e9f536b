"""Operator side: ``edge-agent keys generate``, ``edge-agent ctl send``, ``edge-agent ctl watch``.

``ctl send`` signs a command with the operator's Ed25519 key, publishes it with an MQTT 5 Response
Topic (a private ``<prefix>/_ctl/<client id>/reply``) and Correlation Data (the command id), shows
progress on stderr while replies arrive and prints a table. For a group or the fleet the members are
read from the retained ``<prefix>/+/status`` messages (which carry ``groups``), and ``--devices`` /
``--expected`` name members the broker cannot tell about (an agent that went offline); every expected
device that does not answer in time gets a ``no answer`` row. Exit status: 0 when every row is ok,
1 otherwise, 2 when the broker cannot be reached.

The MQTT client is :class:`edge_agent.transport.mqtt.MqttTransport` (the only paho user).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent import codec
from edge_agent.commands.signing import Signer
from edge_agent.config import Config
from edge_agent.fsutil import atomic_write

DEFAULT_KEY_ENV = "EDGE_AGENT_KEY"


def members_cache_path() -> Path:
    if os.environ.get("EDGE_AGENT_CTL_CACHE"):
        return Path(os.environ["EDGE_AGENT_CTL_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("edge-agent", appauthor=False)) / "members.json"


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


@dataclass
class Row:
    device: str
    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"device": self.device, "status": self.status, "latency_ms": self.latency_ms}
        if self.error is not None:
            d["error"] = self.error
        else:
            d["result"] = self.result
        return d


def _short(v: Any, width: int = 70) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=_json_default, separators=(",", ":"))
    return s if len(s) <= width else s[: width - 3] + "..."


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return base64.b64encode(o).decode()
    return repr(o)


class Sender:
    """One command, many replies. Usable from tests and scripts as well as the CLI."""

    def __init__(self, cfg: Config, signer: Signer | None, *, client_id: str | None = None) -> None:
        from edge_agent.transport.mqtt import MqttTransport

        self.cfg = cfg
        self.prefix = cfg.mqtt.topic_prefix
        self.signer = signer
        self.client_id = client_id or f"edge-ctl-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.reply_topic = f"{self.prefix}/_ctl/{self.client_id}/reply"
        self.statuses: dict[str, dict[str, Any]] = {}
        self.replies: dict[str, dict[str, Any]] = {}
        self.first: dict[str, float] = {}
        self._cond = threading.Condition()
        self._sent_at = 0.0
        self._cid = b""
        self.on_progress: Callable[[str, dict[str, Any], float], None] = lambda d, r, ms: None
        self.transport = MqttTransport(cfg.mqtt, client_id=self.client_id, on_message=self._on_message,
                                       persistent_session=False)
        self.transport.subscribe(self.reply_topic, qos=1)
        self.transport.subscribe(f"{self.prefix}/+/status", qos=1)

    def _on_message(self, m: Any) -> None:
        if m.topic == self.reply_topic:
            if m.correlation_data is not None and bytes(m.correlation_data) != self._cid:
                return
            try:
                rep = codec.decode(m.payload) if m.payload[:1] != b"{" else json.loads(m.payload)
            except Exception:
                return
            if not isinstance(rep, dict) or not isinstance(rep.get("device"), str):
                return
            dev = rep["device"]
            ms = (time.monotonic() - self._sent_at) * 1000
            with self._cond:
                prev = self.replies.get(dev)
                if prev is None or prev.get("status") == "accepted":
                    self.replies[dev] = {**rep, "_ms": ms}
                self._cond.notify_all()
            self.on_progress(dev, rep, ms)
        elif m.topic.endswith("/status"):
            try:
                st = json.loads(m.payload)
            except ValueError:
                return
            if isinstance(st, dict) and isinstance(st.get("dev"), str):
                with self._cond:
                    self.statuses[st["dev"]] = st

    def connect(self, timeout: float) -> bool:
        self.transport.start()
        if not self.transport.wait_online(timeout):
            return False
        time.sleep(0.5)  # retained status messages arrive right after the SUBACK
        return True

    def members(self, kind: str, target: str) -> list[str]:
        """Devices expected to answer. An offline agent's retained status (its will) carries no groups, so
        the groups last seen for it are remembered in a small cache (:func:`members_cache_path`)."""
        cache = self._load_cache()
        with self._cond:
            if kind == "device":
                return [target]
            if kind == "all":
                return sorted(self.statuses)
            out = []
            for dev, st in self.statuses.items():
                groups = st.get("groups")
                if groups is None:
                    groups = cache.get(dev, [])
                if target in groups:
                    out.append(dev)
            return sorted(out)

    def _cache_key(self) -> str:
        return f"{self.cfg.mqtt.host}:{self.cfg.mqtt.port}/{self.prefix}"

    def _load_cache(self) -> dict[str, list[str]]:
        try:
            data = json.loads(members_cache_path().read_text())
            entry = data.get(self._cache_key(), {})
            return {str(k): [str(g) for g in v] for k, v in entry.items() if isinstance(v, list)}
        except (OSError, ValueError, AttributeError):
            return {}

    def save_cache(self) -> None:
        """Remember the groups of every device whose status carried them; forget devices with no status."""
        path = members_cache_path()
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        old = self._load_cache()
        with self._cond:
            entry = {d: list(st["groups"]) if isinstance(st.get("groups"), list) else old.get(d, [])
                     for d, st in self.statuses.items()}
        data[self._cache_key()] = entry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(data), fsync=False)  # a cache: a lost update is harmless
        except OSError:
            pass

    def send(self, kind: str, target: str, name: str, args: dict[str, Any], *, ttl: float = 60.0,
             cmd_id: str | None = None) -> str:
        if kind == "device":
            topic = f"{self.prefix}/{target}/cmd/{name}"
        elif kind == "group":
            topic = f"{self.prefix}/group/{target}/cmd/{name}"
        else:
            topic = f"{self.prefix}/all/cmd/{name}"
        if self.signer is not None:
            req = self.signer.sign(kind, "all" if kind == "all" else target, name, args, cmd_id=cmd_id, ttl=ttl)
        else:
            req = {"id": cmd_id or uuid.uuid4().hex, "name": name, "args": args}
        self._cid = req["id"].encode()
        self._sent_at = time.monotonic()
        self.transport.publish(topic, codec.encode(req), qos=1, props={
            "response_topic": self.reply_topic, "correlation_data": self._cid,
            "content_type": "application/msgpack"})
        return str(req["id"])

    def wait(self, expected: list[str], expected_n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                final = {d for d, r in self.replies.items() if r.get("status") != "accepted"}
                if (expected or expected_n) and set(expected) <= final and len(final) >= expected_n:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.2))

    def rows(self, expected: list[str]) -> list[Row]:
        rows: list[Row] = []
        with self._cond:
            for dev in sorted(set(expected) | set(self.replies)):
                r = self.replies.get(dev)
                if r is None:
                    st = self.statuses.get(dev, {})
                    why = f"device {st['state']}" if st.get("state") and st.get("state") != "online" else \
                        "no reply before the timeout"
                    rows.append(Row(dev, "no answer", why))
                    continue
                rows.append(Row(dev, str(r.get("status")), r.get("result"), r.get("error"), round(r["_ms"], 1)))
        return rows

    def close(self) -> None:
        self.transport.stop(timeout=2.0)


def format_table(rows: list[Row]) -> str:
    cells = [("DEVICE", "STATUS", "RESULT", "LATENCY")]
    for r in rows:
        res = f"{r.error.get('code')}: {r.error.get('message')}" if r.error else _short(r.result)
        cells.append((r.device, r.status, _short(res), "-" if r.latency_ms is None else f"{r.latency_ms:.0f} ms"))
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(4)).rstrip() for c in cells)


def cmd_ctl_send(args: argparse.Namespace) -> int:
    from edge_agent import config as config_mod

    cfg = config_mod.load(args.config)
    try:
        cmd_args = parse_args_list(args.args)
    except (ValueError, OSError) as e:
        print(f"edge-agent ctl send: {e}", file=sys.stderr)
        return 64
    signer = None
    if not args.unsigned:
        key = Path(args.key) if args.key else default_key_path()
        try:
            signer = Signer.load(key)
        except FileNotFoundError:
            print(f"edge-agent ctl send: no operator key at {key} (run `edge-agent keys generate`, give --key, "
                  "or --unsigned for read-only commands)", file=sys.stderr)
            return 64
        except ValueError as e:
            print(f"edge-agent ctl send: {e}", file=sys.stderr)
            return 64
    if args.device:
        kind, target = "device", args.device
    elif args.group:
        kind, target = "group", args.group
    else:
        kind, target = "all", "all"
    listed = [d for d in (args.devices or "").split(",") if d]
    sender = Sender(cfg, signer)
    try:
        if not sender.connect(min(args.timeout, cfg.mqtt.connect_timeout)):
            print(f"edge-agent ctl send: cannot reach the broker at {cfg.mqtt.host}:{cfg.mqtt.port}: "
                  f"{sender.transport.status.reason}", file=sys.stderr)
            return 2
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
    finally:
        sender.close()
    answered = sum(1 for r in rows if r.status != "no answer")
    if args.expected and answered < args.expected:
        extra = args.expected - answered - sum(1 for r in rows if r.status == "no answer")
        for i in range(max(0, extra)):
            rows.append(Row(f"(unknown #{i + 1})", "no answer", "no reply before the timeout"))
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], default=_json_default))
    else:
        print(format_table(rows))
    return 0 if rows and all(r.status == "ok" for r in rows) else 1


# ---------------------------------------------------------------- ctl watch

def cmd_ctl_watch(args: argparse.Namespace) -> int:
    from edge_agent import config as config_mod
    from edge_agent.cli import format_envelope
    from edge_agent.transport.mqtt import MqttTransport

    cfg = config_mod.load(args.config)
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
    """Add ``keys`` and ``ctl`` to the ``edge-agent`` parser (called by edge_agent.cli)."""
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
