"""Built-in commands. Each is one function; none reaches a shell or imports anything by name given
in a request.

=====================  =========  ===========================================================
name                   read-only  what
=====================  =========  ===========================================================
ping                   yes        ``{"pong": true, "ts": ...}``
status                 yes        version, uptime, config hash, connection, backlog, sensors, models
config.get             yes        the running config (passwords masked), or one ``key``
config.set             no         ``changes`` {dotted key: value}: validated, written to the override file, applied
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
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import config as config_mod
from edge_agent.commands.registry import Registry
from edge_agent.commands.schema import Arg
from edge_agent.config import override
from edge_agent.config.schema import INTERVAL_MAX, INTERVAL_MIN
from edge_agent.errors import CommandError, ConfigError
from edge_agent.fsutil import atomic_write
from edge_agent.ids import ID_PATTERN
from edge_agent.version import __version__

if TYPE_CHECKING:
    from edge_agent.commands.service import CommandContext

_config_lock = threading.Lock()
_transfer_lock = threading.Lock()  # ChunkAssembler is not thread-safe; commands run on several workers
#: Keys config.set refuses to touch (see edge_agent.config.override).
PROTECTED = override.PROTECTED


def ping(ctx: CommandContext) -> dict[str, Any]:
    return {"pong": True, "ts": round(time.time(), 3)}


def status(ctx: CommandContext) -> dict[str, Any]:
    cfg = ctx.host.config
    agent = ctx.control.status()
    conn = ctx.host.connection()
    st: dict[str, Any] = {"version": __version__, "device": cfg.device.id, "uptime_s": agent.get("uptime_s"),
                          "config_hash": cfg.text_hash, "groups": list(cfg.device.groups)}
    st["config"] = {"source": cfg.source, "overrides": list(cfg.overrides), "override_file": cfg.override_source}
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

def config_set(ctx: CommandContext, changes: dict[str, Any]) -> dict[str, Any]:
    """Lay ``changes`` over the override file of the state dir (the config file itself is read-only under
    the shipped unit), validate the whole config with them, write the override atomically, apply it like
    SIGHUP; if applying fails, the old override is put back. ``None`` removes a key from the override."""
    cfg = ctx.host.config
    if not cfg.source or cfg.source.startswith("<"):
        raise CommandError("no_config_file", f"the running config was not read from a file ({cfg.source})")
    for key in changes:
        if override.protected(key):
            raise CommandError("protected", f"{key!r} cannot be changed remotely (edit the file on the device)")
    path = override.override_path(cfg.state_dir)
    with _config_lock:
        try:
            old = config_mod.read_overrides(path)
        except ConfigError as e:
            raise CommandError("config_unreadable", "; ".join(f"{e.source}: {m}" for m in e.errors)) from None
        new = {k: v for k, v in {**old, **changes}.items() if v is not None}
        try:
            text = override.dump(new)
            config_mod.load(cfg.source, overrides=new)
        except override.OverrideProblem as e:
            raise CommandError("bad_args", str(e)) from None
        except ConfigError as e:
            raise CommandError("invalid_config", "; ".join(f"{e.source}: {m}" for m in e.errors)) from None
        _write_override(path, text if new else None)
        if not _apply(ctx):
            _write_override(path, override.dump(old) if old else None)
            if not _apply(ctx):
                ctx.log.error("config.set: re-applying the old config failed")
            raise CommandError("apply_failed", "the new config could not be applied; the override was rolled back")
    return {"applied": sorted(changes), "config_hash": ctx.host.config.text_hash,
            "overrides": sorted(new), "override_file": str(path)}


def _apply(ctx: CommandContext) -> bool:
    try:
        return bool(ctx.control.reload())
    except Exception as e:
        ctx.log.exception("config.set: applying failed: %s", e)
        return False


def _write_override(path: Path, text: str | None) -> None:
    """Write (atomically, 0640) or remove the override file."""
    try:
        if text is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write(path, text)
            os.chmod(path, 0o640)  # the service group may read it (check-config as an admin in that group)
    except OSError as e:
        raise CommandError("config_unwritable", f"{path}: {e}") from None



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
