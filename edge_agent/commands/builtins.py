"""Built-in commands. Each is one function; none reaches a shell or imports anything by name given
in a request.

=====================  =========  ===========================================================
name                   read-only  what
=====================  =========  ===========================================================
ping                   yes        ``{"pong": true, "ts": ...}``
status                 yes        version, uptime, config hash, connection, backlog, sensors, models
config.get             yes        the running config (passwords masked), or one ``key``
config.set             no         ``changes`` {dotted key: value}: validated, written atomically, applied
sensor.set_interval    no         ``sensor``, ``interval`` (seconds; not persisted, see config.set)
output.set             no         ``output``, ``value``, optional ``duration``
history.query          yes        the messaging service's local history
model.update           no         one chunk of a model file (see docs/commands.md)
agent.restart          no         reply, then exit non-zero (systemd restarts the agent)
=====================  =========  ===========================================================
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import config as config_mod
from edge_agent.commands.registry import Registry
from edge_agent.commands.schema import Arg
from edge_agent.config.schema import INTERVAL_MAX, INTERVAL_MIN
from edge_agent.errors import CommandError, ConfigError
from edge_agent.fsutil import atomic_write
from edge_agent.ids import ID_PATTERN
from edge_agent.version import __version__

if TYPE_CHECKING:
    from edge_agent.commands.service import CommandContext

_config_lock = threading.Lock()
_transfer_lock = threading.Lock()  # ChunkAssembler is not thread-safe; commands run on several workers
#: Sections config.set refuses to touch: changing them remotely would let an operator grant
#: itself keys/permissions or move the state dir under the running agent.
PROTECTED = ("commands", "storage.dir", "device.id", "source", "text_hash")


def ping(ctx: CommandContext) -> dict[str, Any]:
    return {"pong": True, "ts": round(time.time(), 3)}


def status(ctx: CommandContext) -> dict[str, Any]:
    cfg = ctx.host.config
    agent = ctx.control.status()
    conn = ctx.host.connection()
    st: dict[str, Any] = {"version": __version__, "device": cfg.device.id, "uptime_s": agent.get("uptime_s"),
                          "config_hash": cfg.text_hash, "groups": list(cfg.device.groups)}
    st["connection"] = {"state": conn.state, "reason": conn.reason, "reconnects": agent.get("reconnects", 0)}
    st["backlog"] = agent.get("backlog", {})
    st["sensors"] = agent.get("sensors", {})
    inf = ctx.host.service("inference")
    if inf is None:
        st["models"] = {}
    else:
        try:
            st["models"] = inf.describe()
        except Exception as e:
            st["models"] = {"error": str(e)}
    svc = ctx.service
    st["clock"] = {"now": round(time.time(), 3), "sane": svc.clock_sane()}
    st["commands"] = {"counters": dict(svc.counters), "refusals": dict(svc.refusals)}
    return st


def config_get(ctx: CommandContext, key: str | None = None) -> Any:
    view = config_mod.to_dict(ctx.host.config)
    if not key:
        return view
    node: Any = view
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list):
            node = next((x for x in node if isinstance(x, dict) and x.get("name") == part), None)
            if node is None:
                raise CommandError("no_such_key", f"no item named {part!r} in {key!r}")
        else:
            raise CommandError("no_such_key", f"no config key {key!r}")
    return node


# ---------------------------------------------------------------- config.set

def _set_path(doc: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if any(not p for p in parts):
        raise CommandError("bad_args", f"bad key {key!r}")
    node: Any = doc
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and nxt is None:
            nxt = node[part] = {}
        if isinstance(nxt, list):  # array of tables: address an item by its name
            if i + 1 >= len(parts) - 1 + 1:
                raise CommandError("bad_args", f"{key!r}: give an item name after {part!r}")
            name = parts[i + 1]
            item = next((x for x in nxt if isinstance(x, dict) and x.get("name") == name), None)
            if item is None:
                raise CommandError("no_such_key", f"{key!r}: no {part} item named {name!r}")
            rest = ".".join(parts[i + 2:])
            if not rest:
                raise CommandError("bad_args", f"{key!r}: give a key inside {part}.{name}")
            _set_path(item, rest, value)
            return
        if not isinstance(nxt, dict):
            raise CommandError("bad_args", f"{key!r}: {part!r} is not a table")
        node = nxt
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list) and all(not isinstance(x, dict) for x in v):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise CommandError("bad_args", f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def dump_toml(doc: dict[str, Any]) -> str:
    """A minimal TOML writer for config documents (tables, arrays of tables, scalars, arrays)."""
    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_aot(v)}
        for k, v in scalars.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in d.items():
            name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
            if isinstance(v, dict):
                lines.append("")
                lines.append(f"[{name}]")
                table(name, v)
            elif _is_aot(v):
                for item in v:
                    lines.append("")
                    lines.append(f"[[{name}]]")
                    table(name, item)

    table("", doc)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_aot(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def config_set(ctx: CommandContext, changes: dict[str, Any]) -> dict[str, Any]:
    source = ctx.host.config.source
    if not source or source.startswith("<"):
        raise CommandError("no_config_file", f"the running config was not read from a file ({source})")
    for key in changes:
        if any(key == p or key.startswith(p + ".") for p in PROTECTED):
            raise CommandError("protected", f"{key!r} cannot be changed remotely (edit the file on the device)")
    path = Path(source)
    with _config_lock:
        try:
            old_text = path.read_text(encoding="utf-8")
            doc = config_mod.parse_toml(old_text, str(path))
        except OSError as e:
            raise CommandError("config_unreadable", f"{path}: {e}") from None
        except ConfigError as e:
            raise CommandError("config_unreadable", f"{path}: {'; '.join(e.errors)}") from None
        for key, value in changes.items():
            _set_path(doc, key, value)
        new_text = dump_toml(doc)
        try:
            config_mod.loads(new_text, str(path))
        except ConfigError as e:
            raise CommandError("invalid_config", "; ".join(e.errors)) from None
        _write_atomic(path, new_text)
        try:
            ok = ctx.control.reload()
        except Exception as e:
            ok = False
            ctx.log.exception("config.set: applying failed: %s", e)
        if not ok:
            _write_atomic(path, old_text)
            try:
                ctx.control.reload()
            except Exception:
                ctx.log.exception("config.set: re-applying the old config failed")
            raise CommandError("apply_failed", "the new config could not be applied; the file was rolled back")
    return {"applied": sorted(changes), "config_hash": ctx.host.config.text_hash}


def _write_atomic(path: Path, text: str) -> None:
    atomic_write(path, text, keep_mode=True)


# ---------------------------------------------------------------- sensors, outputs, history

def sensor_set_interval(ctx: CommandContext, sensor: str, interval: float) -> dict[str, Any]:
    try:
        ctx.control.set_interval(sensor, interval)
    except KeyError:
        raise CommandError("no_such_sensor", f"no running polled sensor named {sensor!r}") from None
    return {"sensor": sensor, "interval": interval, "persisted": False}


def output_set(ctx: CommandContext, output: str, value: Any, duration: float | None = None) -> dict[str, Any]:
    out_dev = ctx.control.output(output)
    if out_dev is None:
        raise CommandError("no_such_output", f"no such output {output!r}")
    try:
        res = out_dev.set(value, duration)
    except (ValueError, TypeError) as e:
        raise CommandError("bad_value", str(e)) from None
    out = {"output": output, "value": value, "duration": duration}
    if isinstance(res, dict):
        out.update(res)
    return out


def history_query(ctx: CommandContext, **filters: Any) -> dict[str, Any]:
    svc = ctx.host.service("messaging")
    if svc is None:
        raise CommandError("unavailable", "no message history on this device (messaging is disabled)")
    try:
        items = svc.history_query(**filters)
    except TypeError as e:
        raise CommandError("bad_args", str(e)) from None
    return {"items": list(items), "count": len(items)}


# ---------------------------------------------------------------- model.update

def model_update(ctx: CommandContext, model: str, transfer: str, index: int, total: int, data: Any, sha256: str,
                 metadata: dict[str, Any] | None = None) -> Any:
    try:
        from edge_agent.transfer import ChunkAssembler, TransferError
    except ImportError:
        raise CommandError("unavailable", "chunked transfers are not available in this build") from None
    inf = ctx.host.service("inference")
    if inf is None:
        raise CommandError("unavailable", "no inference service on this device")
    if isinstance(data, str):  # JSON callers send base64
        try:
            data = base64.b64decode(data, validate=True)
        except ValueError:
            raise CommandError("bad_args", "'data': not base64") from None
    if not isinstance(data, bytes):
        raise CommandError("bad_args", "'data' must be bytes (or base64 text in JSON)")
    tdir = ctx.host.state_dir / "model-transfers"
    mdir = ctx.host.state_dir / "model-transfers-meta"
    mdir.mkdir(parents=True, exist_ok=True)
    meta_file = mdir / f"{transfer}.json"
    if metadata is not None:
        meta_file.write_text(json.dumps(metadata))
    try:
        with _transfer_lock:
            st = ChunkAssembler(tdir).add(transfer, index, total, data, sha256, name=f"{model}.tflite")
    except TransferError as e:
        raise CommandError("transfer_error", str(e)) from None
    except ValueError as e:
        raise CommandError("bad_args", str(e)) from None
    if not st.complete:
        return {"transfer": transfer, "received": index, "missing": len(st.missing)}
    ctx.accepted({"transfer": transfer, "installing": model})
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    try:
        result = inf.install(model, Path(st.path).read_bytes(), meta)
    except CommandError:
        raise
    except Exception as e:
        raise CommandError("install_failed", f"{type(e).__name__}: {e}") from None
    finally:
        try:
            meta_file.unlink(missing_ok=True)
        except OSError:
            pass
    return result


# ---------------------------------------------------------------- agent.restart

def agent_restart(ctx: CommandContext, code: int = 75) -> dict[str, Any]:
    svc = ctx.service
    ctx.after_reply = lambda: svc.exit_process(code)
    return {"restarting": True, "exit_code": code}


ID = ID_PATTERN


def register(reg: Registry) -> None:
    reg.add("ping", ping, read_only=True)
    reg.add("status", status, read_only=True)
    reg.add("config.get", config_get, {"key": Arg("str", max_len=256)}, read_only=True)
    reg.add("config.set", config_set, {"changes": Arg("map", required=True, max_len=64)})
    reg.add("sensor.set_interval", sensor_set_interval,
            {"sensor": Arg("str", required=True, pattern=ID),
             "interval": Arg("float", required=True, ge=INTERVAL_MIN, le=INTERVAL_MAX)})
    reg.add("output.set", output_set,
            {"output": Arg("str", required=True, pattern=ID), "value": Arg("scalar", required=True),
             "duration": Arg("float", gt=0, le=86400)})
    reg.add("history.query", history_query,
            {"peer": Arg("str", max_len=64), "group": Arg("str", max_len=64), "stream": Arg("str", max_len=256),
             "kind": Arg("str", max_len=32), "since": Arg("float", ge=0), "until": Arg("float", ge=0),
             "limit": Arg("int", ge=1, le=1000)}, read_only=True)
    reg.add("model.update", model_update,
            {"model": Arg("str", required=True, pattern=ID), "transfer": Arg("str", required=True, pattern=ID),
             "index": Arg("int", required=True, ge=0, le=100000), "total": Arg("int", required=True, ge=1, le=100000),
             "data": Arg("any", required=True), "sha256": Arg("str", required=True, pattern=r"^[0-9a-f]{64}$"),
             "metadata": Arg("map")})
    reg.add("agent.restart", agent_restart, {"code": Arg("int", ge=1, le=255)})
