"""``edge-agent users add|remove|list|groups|passwd``: broker accounts ("tokens") through Mosquitto's
dynamic security plugin.

The plan (which roles, which ACLs) is :mod:`edge_agent.dynsec`; the broker is reached through
``mosquitto_ctrl`` (:mod:`edge_agent.cli.dynsec_ctl`) with the dynsec admin's credentials:
``--broker host:port`` (``$EDGE_AGENT_BROKER``), ``--admin-user`` (``$EDGE_AGENT_ADMIN_USER``, default
``admin``), ``--admin-password-file`` (``$EDGE_AGENT_ADMIN_PASSWORD_FILE``), ``--cafile`` for TLS.

Exit status: 0 done; 1 the plugin refused (e.g. the user exists); 2 the broker cannot be reached or
the admin login failed; 64 a bad argument; 66 the admin password file cannot be read; 69
mosquitto_ctrl is not installed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent import dynsec
from edge_agent import roster as roster_mod
from edge_agent.cli.ctl import default_key_path
from edge_agent.cli.dynsec_ctl import BrokerError, ClientInfo, DynsecCtl, DynsecError
from edge_agent.commands.signing import Signer
from edge_agent.ids import check_device_id, check_id

TOKEN_BYTES = 24  # 32 URL-safe characters, 192 bits


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def parse_broker(value: str) -> tuple[str, int]:
    """``host:port``, ``host`` (port 1883) or ``[v6]:port``."""
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:
        host, port = value, "1883"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--broker {value!r}: expected host:port with a port 1-65535")
    return host, int(port)


def check_public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"--public-key: not base64 ({e})") from None
    if len(raw) != 32:
        raise ValueError(f"--public-key: an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return value


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _session(args: argparse.Namespace) -> DynsecCtl:
    host, port = parse_broker(args.broker)
    if not args.admin_password_file:
        raise ValueError("--admin-password-file (or $EDGE_AGENT_ADMIN_PASSWORD_FILE) is required: the file "
                         "holding the dynsec admin's password (`mosquitto_ctrl dynsec init` created the admin)")
    try:
        password = Path(args.admin_password_file).read_text().strip("\r\n")
    except OSError as e:
        raise PasswordFileError(f"cannot read the admin password file: {e}") from None
    return DynsecCtl(host, port, args.admin_user, password, cafile=args.cafile)


class PasswordFileError(OSError):
    pass


# ------------------------------------------------------------------ add
def _add_device(ctl: DynsecCtl, args: argparse.Namespace) -> tuple[dynsec.DevicePlan, str | None, list[str]]:
    """Create the device's account (its token returned) or, with --exists-ok, complete an existing one
    (None returned for the token). Also returns the device's groups at the broker afterwards."""
    client_id = "" if args.any_client_id else args.client_id
    plan = dynsec.plan_device(args.prefix, args.name, args.group or (), client_id)
    for role in plan.roles():
        ctl.ensure_role(role)
    token = new_token()
    try:
        ctl.create_client(plan.username, token, plan.client_id)
    except DynsecError as e:
        if "already exists" not in e.reason or not args.exists_ok:
            raise
        token = None  # keep its password; make sure it has every role and group of the plan
    # mosquitto 2.0.11 answers a repeated addClientRole with "Internal error": add only what is missing
    have = ClientInfo(plan.username) if token is not None else ctl.get_client(plan.username)
    try:
        for role, priority in ((plan.own_role, dynsec.DEVICE_ROLE_PRIORITY), (plan.shared_role, 0)):
            if role.name not in have.roles:
                ctl.add_client_role(plan.username, role.name, priority)
        for role in plan.group_roles:
            ctl.ensure_group(role.name, role.name)
            if role.name not in have.groups:
                ctl.add_group_client(role.name, plan.username)
    except (DynsecError, BrokerError):
        if token is not None:
            ctl.delete_client(plan.username)  # no half-provisioned account whose password nobody saw
        raise
    groups = list(plan.groups) if token is not None else _groups(args.prefix, ctl.get_client(plan.username))
    return plan, token, groups


def _add_operator(ctl: DynsecCtl, args: argparse.Namespace) -> str:
    name = check_id(args.name, "operator name")
    if args.group:
        raise ValueError("--group is for devices; an operator may address every group")
    role = dynsec.operator_role(args.prefix)
    ctl.ensure_role(role)
    token = new_token()
    ctl.create_client(name, token, "")
    try:
        ctl.add_client_role(name, role.name, 0)
    except (DynsecError, BrokerError):
        ctl.delete_client(name)
        raise
    return token


def cmd_add(args: argparse.Namespace) -> int:
    if args.public_key:
        check_public_key(args.public_key)
    token_file = Path(args.token_file) if args.token_file else None
    if token_file is not None and not token_file.parent.is_dir():
        raise ValueError(f"--token-file {token_file}: directory {token_file.parent} does not exist")
    host, port = parse_broker(args.device_broker or args.broker)
    with _session(args) as ctl:
        if args.operator:
            token: str | None = _add_operator(ctl, args)
            plan, groups = None, []
        else:
            plan, token, groups = _add_device(ctl, args)
    if token is not None and token_file is not None:
        write_secret(token_file, token)
    if args.json:
        print(json.dumps({"user": args.name, "created": token is not None, "operator": bool(args.operator),
                          "groups": groups,
                          "client_id": plan.client_id if plan else "",
                          "token_file": str(token_file) if token_file and token else None,
                          "token": token if token is not None and token_file is None else None}))
        return 0
    if token is None:
        print(f"# {args.name} exists already: password unchanged, roles and groups checked", file=sys.stderr)
    elif token_file is not None:
        print(f"# token for {args.name} written to {token_file} (mode 0600)", file=sys.stderr)
    else:
        print(f"# token for {args.name} (shown once; the broker keeps only a hash)", file=sys.stderr)
    if plan is None:
        print("# operator account: the [mqtt] table of the config `ctl send`/`ctl watch` read (--config)")
        print("\n".join(dynsec.mqtt_snippet(args.name, host=host, port=port, prefix=args.prefix,
                                           token=token if token_file is None else None,
                                           token_file=str(token_file) if token_file else None)))
        return 0
    if args.roster:
        r = add_to_roster(args.roster, args.name, args.public_key, groups, args.prefix, args.key)
        print(f"# {args.name} added to the roster {args.roster} (version {r.version}, signed); publish it with "
              f"`edge-agent roster publish --file {args.roster}`", file=sys.stderr)
    print(dynsec.config_snippet(plan, host=host, port=port, prefix=args.prefix,
                                token=token if token_file is None else None,
                                token_file=str(token_file) if token_file else None,
                                public_key=args.public_key), end="")
    return 0


def add_to_roster(path: str, device: str, public_key: str | None, groups: list[str], prefix: str,
                  key: str | None) -> roster_mod.Roster:
    """Add (or re-key) ``device`` in the signed roster file ``path`` with the operator key ``key``
    (default: the `ctl send` key); the device's messages then verify at every roster holder."""
    if not public_key:
        raise ValueError("--roster needs the device's --public-key (`edge-agent roster device-key` on it)")
    signer = Signer.load(Path(key) if key else default_key_path())
    return roster_mod.add_device(path, device, public_key, signer, groups=groups, fleet=prefix)


# ------------------------------------------------------------------ remove, passwd, list, groups
def _get(ctl: DynsecCtl, name: str) -> ClientInfo:
    try:
        return ctl.get_client(name)
    except DynsecError as e:
        if "not found" in e.reason.lower():
            raise DynsecError("getClient", f"no broker user {name!r}") from None
        raise


def cmd_remove(args: argparse.Namespace) -> int:
    name = check_id(args.name, "user name")
    with _session(args) as ctl:
        info = _get(ctl, name)
        ctl.delete_client(name)
        own = f"{args.prefix}/device/{name}"
        if own in info.roles:
            ctl.delete_role(own)
    print(f"removed {name}" + (f" (was in {', '.join(_groups(args.prefix, info))})" if info.groups else ""))
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    name = check_id(args.name, "user name")
    token = new_token()
    with _session(args) as ctl:
        _get(ctl, name)
        ctl.set_password(name, token)
    if args.token_file:
        write_secret(Path(args.token_file), token)
        print(f"# new token for {name} written to {args.token_file} (mode 0600)", file=sys.stderr)
    else:
        print(f"password = {json.dumps(token)}")
    print("# the broker disconnected the account's sessions: the device reconnects only with the new token",
          file=sys.stderr)
    return 0


def _groups(prefix: str, info: ClientInfo) -> list[str]:
    head = f"{prefix}/group/"
    return [g[len(head):] for g in info.groups if g.startswith(head)]


def _kind(prefix: str, info: ClientInfo) -> str:
    if f"{prefix}/device/{info.username}" in info.roles:
        return "device"
    if dynsec.operator_role_name(prefix) in info.roles:
        return "operator"
    return "other"


def cmd_list(args: argparse.Namespace) -> int:
    with _session(args) as ctl:
        rows = [(c, _kind(args.prefix, c)) for c in ctl.clients()]
    rows = [(c, k) for c, k in rows if args.all or k != "other"]
    if args.json:
        print(json.dumps([{"user": c.username, "kind": k, "groups": _groups(args.prefix, c),
                           "client_id": c.client_id, "disabled": c.disabled} for c, k in rows]))
        return 0
    print(f"{'USER':<24} {'KIND':<9} {'CLIENT ID':<32} GROUPS")
    for c, k in rows:
        print(f"{c.username:<24} {k:<9} {c.client_id or '(any)':<32} {','.join(_groups(args.prefix, c)) or '-'}"
              + (" (disabled)" if c.disabled else ""))
    return 0


def cmd_groups(args: argparse.Namespace) -> int:
    dev = check_device_id(args.name)
    add = [check_id(g, "group") for g in args.add or ()]
    remove = [check_id(g, "group") for g in args.remove or ()]
    with _session(args) as ctl:
        info = _get(ctl, dev)
        if _kind(args.prefix, info) != "device":
            raise ValueError(f"{dev!r} is not a device provisioned by `edge-agent users add` under prefix "
                             f"{args.prefix!r}")
        for g in add:
            role = dynsec.group_role(args.prefix, g)
            ctl.ensure_role(role)
            ctl.ensure_group(role.name, role.name)
            ctl.add_group_client(role.name, dev)
        for g in remove:
            ctl.remove_group_client(dynsec.group_name(args.prefix, g), dev)
        groups = _groups(args.prefix, ctl.get_client(dev))
    print(f"{dev}: {', '.join(groups) or '(no groups)'}")
    if add or remove:
        print("# the broker disconnected the device (it reconnects with the new rights); set the same in its "
              f"config and restart it so it subscribes: [device] groups = {json.dumps(groups)}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ parser
#: exception -> (exit status, message prefix); PasswordFileError before its base class OSError's kin
_EXITS: tuple[tuple[type[Exception], int, str], ...] = (
    (ValueError, 64, ""), (PasswordFileError, 66, ""), (FileNotFoundError, 69, ""),
    (DynsecError, 1, "refused by the broker: "), (BrokerError, 2, ""))


def _run(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            check_id(args.prefix, "--prefix")
            return fn(args)
        except tuple(e for e, _, _ in _EXITS) as exc:
            code, head = next((c, h) for e, c, h in _EXITS if isinstance(exc, e))
            print(f"edge-agent users: {head}{exc}", file=sys.stderr)
            return code
    return wrapped


def _common(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    env = os.environ.get
    sp.add_argument("--broker", default=env("EDGE_AGENT_BROKER", "127.0.0.1:1883"),
                    help="the broker's host:port for the admin connection (default $EDGE_AGENT_BROKER or "
                         "127.0.0.1:1883)")
    sp.add_argument("--admin-user", default=env("EDGE_AGENT_ADMIN_USER", "admin"),
                    help="dynsec admin user (default $EDGE_AGENT_ADMIN_USER or 'admin')")
    sp.add_argument("--admin-password-file", default=env("EDGE_AGENT_ADMIN_PASSWORD_FILE"),
                    help="file holding the admin's password (default $EDGE_AGENT_ADMIN_PASSWORD_FILE)")
    sp.add_argument("--cafile", help="CA bundle when the admin listener uses TLS")
    sp.add_argument("--prefix", default="edge", help="mqtt.topic_prefix of the fleet (default 'edge')")
    return sp


def register(sub: Any) -> None:
    """Add ``users`` to the ``edge-agent`` parser (called by edge_agent.cli.main)."""
    users = sub.add_parser("users", help="broker accounts for devices and operators (Mosquitto dynsec)")
    us = users.add_subparsers(dest="users_cmd", required=True, metavar="SUBCOMMAND")
    sp = _common(us.add_parser("add", help="create a device (or --operator) account and print its config"))
    sp.add_argument("name", help="device id (or operator name)")
    sp.add_argument("--group", action="append", help="a device.groups entry (repeat for several)")
    sp.add_argument("--public-key", help="the device's Ed25519 public key (base64; `edge-agent roster device-key`)")
    sp.add_argument("--roster", help="also add the device and its --public-key to this signed roster file")
    sp.add_argument("--key", help="operator private key that signs the roster (default: the `ctl send` key)")
    sp.add_argument("--token-file", help="write the token here (mode 0600) instead of printing it")
    sp.add_argument("--client-id", help="MQTT client id the account is bound to (default edge-agent-<id>)")
    sp.add_argument("--any-client-id", action="store_true", help="do not bind the account to a client id")
    sp.add_argument("--operator", action="store_true", help="an operator account (ctl send / ctl watch)")
    sp.add_argument("--exists-ok", action="store_true",
                    help="an existing device keeps its password; missing roles and groups are added")
    sp.add_argument("--device-broker", help="host:port written into the snippet (default: --broker)")
    sp.add_argument("--json", action="store_true", help="print a JSON summary instead of the snippet")
    sp.set_defaults(fn=_run(cmd_add))
    sp = _common(us.add_parser("remove", help="delete an account (and a device's own role)"))
    sp.add_argument("name")
    sp.set_defaults(fn=_run(cmd_remove))
    sp = _common(us.add_parser("passwd", help="replace an account's token"))
    sp.add_argument("name")
    sp.add_argument("--token-file", help="write the new token here (mode 0600) instead of printing it")
    sp.set_defaults(fn=_run(cmd_passwd))
    sp = _common(us.add_parser("list", help="devices and operators with their groups"))
    sp.add_argument("--all", action="store_true", help="also accounts not made by `users add` (e.g. admin)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=_run(cmd_list))
    sp = _common(us.add_parser("groups", help="show or change a device's groups"))
    sp.add_argument("name", help="device id")
    sp.add_argument("--add", action="append", metavar="G", help="join group G (repeatable)")
    sp.add_argument("--remove", action="append", metavar="G", help="leave group G (repeatable)")
    sp.set_defaults(fn=_run(cmd_groups))
