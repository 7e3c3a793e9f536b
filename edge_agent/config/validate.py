"""The generic validator: a decoded TOML document in, a :class:`~edge_agent.config.schema.Config` out.

Every problem is gathered (not just the first) with its key path and why, then raised together as one
:class:`~edge_agent.errors.ConfigError` naming the file::

    /etc/edge-agent/config.toml: sensors[1].interval: must be >= 1e-06, got -1
    /etc/edge-agent/config.toml: mqtt.prot: unknown key (did you mean 'port'?)

Driven by the dataclasses' field metadata (see :mod:`edge_agent.config.schema`); plugin ``Options``
dataclasses (sensors, outputs) are validated by the same code, their keys beside the common keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent import ids
from edge_agent.config.schema import (
    BIG_NUMBER,
    LOADER_FIELDS,
    MODEL_RING_ROW_BYTES,
    MODEL_RING_ROWS_MAX,
    Config,
    OutputConfig,
    SensorConfig,
)
from edge_agent.errors import ConfigError

_SECTIONS = ("device", "mqtt", "storage", "agent", "logging", "commands", "messaging", "models")
_PLUGIN_LISTS = ("sensors", "outputs")


# ---------------------------------------------------------------- plugin option registries
# Looked up lazily in edge_agent.sensors / edge_agent.actuators so config stays the one parser.

def _sensor_options(type_name: str) -> type | None:
    from edge_agent.sensors import options_for

    return options_for(type_name)


def _output_options(type_name: str) -> type | None:
    from edge_agent.actuators import options_for

    return options_for(type_name)


def _plugin_types(kind: str) -> list[str]:
    if kind == "sensors":
        from edge_agent.sensors import plugin_names
    else:
        from edge_agent.actuators import plugin_names
    return plugin_names()


# ---------------------------------------------------------------- helpers

class Errors:
    """Problems found so far, each ``key.path: why``."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append(f"{path}: {msg}" if path else msg)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _is_sequence_type(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, tuple)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "table"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return f"{type(value).__name__} {value!r}"


def _type_ok(tp: Any, value: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return isinstance(value, tp)


def _check_text(value: str, path: str, errors: Errors, meta: Mapping[str, Any]) -> None:
    """``ident`` (the id rule; "" is left for a field whose default is "") and ``pattern`` (fullmatch)."""
    ident = meta.get("ident")
    if ident and not (value == "" and meta.get("empty_ok")):
        problem = ids.id_problem(value, device=ident == "device")
        if problem is not None:
            errors.add(path, problem)
    pattern = meta.get("pattern")
    if pattern and value and not re.fullmatch(pattern, value):
        errors.add(path, f"{value!r} is not allowed: pattern {pattern}")


def _number_ok(value: float, path: str, errors: Errors, meta: Mapping[str, Any]) -> bool:
    """Every number is finite, and within +-BIG_NUMBER unless its field gives its own bounds."""
    if isinstance(value, float) and not math.isfinite(value):
        errors.add(path, f"must be a finite number, got {value!r}")
        return False
    lo = meta.get("ge", meta.get("gt", -BIG_NUMBER))
    hi = meta.get("le", BIG_NUMBER)
    too_big = "le" not in meta and value > BIG_NUMBER
    too_small = "ge" not in meta and "gt" not in meta and value < -BIG_NUMBER
    if too_big or too_small:
        errors.add(path, f"must be between {lo:g} and {hi:g}, got {value!r}")
        return False
    return True


def _check_scalar(tp: Any, value: Any, path: str, errors: Errors, meta: Mapping[str, Any]) -> Any:
    if tp is Any:
        return value
    if not _type_ok(tp, value):
        errors.add(path, f"must be {_type_name(tp)}, got {_describe(value)}")
        return dataclasses.MISSING
    if isinstance(value, int | float) and not isinstance(value, bool) and not _number_ok(value, path, errors, meta):
        return dataclasses.MISSING
    if isinstance(value, str) and "\x00" in value:
        errors.add(path, f"must not contain a NUL byte, got {value!r}")
        return dataclasses.MISSING
    if "gt" in meta and not value > meta["gt"]:
        errors.add(path, f"must be > {meta['gt']}, got {value!r}")
    if "ge" in meta and not value >= meta["ge"]:
        errors.add(path, f"must be >= {meta['ge']}, got {value!r}")
    if "le" in meta and not value <= meta["le"]:
        errors.add(path, f"must be <= {meta['le']}, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        errors.add(path, f"must be one of {', '.join(repr(c) for c in meta['choices'])}, got {value!r}")
    if isinstance(value, str):
        _check_text(value, path, errors, meta)
    return float(value) if tp is float else value


def _convert(tp: Any, value: Any, path: str, errors: Errors, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner[0], value, path, errors, meta)
    if _is_sequence_type(tp):
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list | tuple):
            errors.add(path, f"must be {_type_name(tp)}, got {_describe(value)}")
            return dataclasses.MISSING
        item_meta = {"pattern": meta.get("item_pattern"), "ident": meta.get("item_ident")}
        return tuple(_convert(item_tp, v, _join(path, i), errors, item_meta) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.add(path, f"must be a table, got {_describe(value)}")
            return dataclasses.MISSING
        return build_dataclass(tp, value, path, errors)  # type: ignore[arg-type]
    return _check_scalar(tp, value, path, errors, meta)


def _unknown(key: str, known: list[str], path: str, errors: Errors) -> None:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(known))})"
    errors.add(_join(path, key), f"unknown key{hint}")


def _field_meta(f: dataclasses.Field[Any]) -> Mapping[str, Any]:
    if f.default == "" and f.metadata.get("ident"):
        return {**f.metadata, "empty_ok": True}  # "" means: the loader's default (e.g. the hostname)
    return f.metadata


# ---------------------------------------------------------------- tables

Extra = Callable[[dict[str, Any], dict[str, Any], list[str]], None]


def build_dataclass(cls: type, table: Mapping[str, Any], path: str, errors: Errors,
                    extra: Extra | None = None) -> Any:
    """Build dataclass ``cls`` from a TOML table, recording every problem in ``errors``.

    Keys that are not fields go to ``extra(kwargs, rest, known)`` when given (plugin options), else
    are reported as unknown."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in (*LOADER_FIELDS, "options")]
    known = [f.name for f in fields]
    kwargs: dict[str, Any] = {}
    rest = {k: v for k, v in table.items() if k not in known}
    for f in fields:
        if f.name in table:
            v = _convert(hints[f.name], table[f.name], _join(path, f.name), errors, _field_meta(f))
            if v is not dataclasses.MISSING:
                kwargs[f.name] = v
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.add(_join(path, f.name), "required key is missing")
    if extra is not None:
        extra(kwargs, rest, known)
    else:
        for k in rest:
            _unknown(k, known, path, errors)
    try:
        return cls(**kwargs)
    except TypeError:
        return None  # missing required values were already reported


def _plugin_table(kind: str, base: type, lookup: Callable[[str], type | None], table: Any,
                  path: str, errors: Errors) -> Any:
    """A [[sensors]]/[[outputs]] table: the common keys of ``base`` plus the plugin's ``Options``."""
    def options(kw: dict[str, Any], rest: dict[str, Any], known: list[str]) -> None:
        type_name = kw.get("type")
        if type_name is None:
            return
        opts_cls = lookup(type_name)
        if opts_cls is None:
            names = _plugin_types(kind)
            close = difflib.get_close_matches(type_name, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (available: {', '.join(names)})"
            errors.add(_join(path, "type"), f"unknown {kind[:-1]} type {type_name!r}{hint}")
            return
        opt_fields = [f.name for f in dataclasses.fields(opts_cls)]
        for k in rest:
            if k not in opt_fields:
                _unknown(k, known + opt_fields, path, errors)
        kw["options"] = build_dataclass(opts_cls, {k: v for k, v in rest.items() if k in opt_fields}, path, errors)
        check = getattr(opts_cls, "validate", None)
        if check is not None and kw["options"] is not None:
            for key, msg in check(kw["options"]):
                errors.add(_join(path, key), msg)

    if not isinstance(table, dict):
        errors.add(path, f"must be a table, got {_describe(table)}")
        return None
    return build_dataclass(base, table, path, errors, options)


# ---------------------------------------------------------------- the document

def validate(data: Mapping[str, Any], source: str = "<memory>") -> Config:
    """Validate a decoded TOML document into a :class:`Config` (no defaults from the environment yet);
    raise ConfigError(source, every problem)."""
    errors = Errors()
    top_known = [f.name for f in dataclasses.fields(Config) if f.name not in LOADER_FIELDS]
    for k in data:
        if k not in top_known:
            _unknown(k, top_known, "", errors)
    kw: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for name in _SECTIONS:
        if name in data:
            v = _convert(hints[name], data[name], name, errors, {})
            if v is not dataclasses.MISSING and v is not None:
                kw[name] = tuple(x for x in v if x not in (None, dataclasses.MISSING)) if isinstance(v, tuple) else v
    for name, base, lookup in (("sensors", SensorConfig, _sensor_options),
                               ("outputs", OutputConfig, _output_options)):
        if name in data:
            items = data[name]
            if not isinstance(items, list | tuple):
                errors.add(name, f"must be an array of tables ([[{name}]]), got {_describe(items)}")
                continue
            built = [_plugin_table(name, base, lookup, t, _join(name, i), errors) for i, t in enumerate(items)]
            kw[name] = tuple(b for b in built if b is not None)
    cfg = Config(**kw)
    _cross_checks(cfg, errors)
    if errors.items:
        raise ConfigError(source, errors.items)
    return cfg


def _unique_names(cfg: Config, errors: Errors) -> None:
    for kind, items in (("sensors", cfg.sensors), ("outputs", cfg.outputs), ("models", cfg.models)):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.name in seen:
                errors.add(f"{kind}[{i}].name", f"duplicate name {item.name!r} (also {kind}[{seen[item.name]}])")
            seen[item.name] = i


def _check_models(cfg: Config, errors: Errors) -> None:
    names = {s.name for s in cfg.sensors}
    for i, m in enumerate(cfg.models):
        hop = m.hop or m.window
        rows = m.window + hop * m.queue
        if rows > MODEL_RING_ROWS_MAX:
            mib = rows * (MODEL_RING_ROW_BYTES + 4 * max(1, len(m.inputs))) / 2**20
            errors.add(f"models[{i}].queue", f"window + hop x queue = {m.window} + {hop} x {m.queue} = {rows:,} rows "
                                             f"of ring buffer (~{mib:,.0f} MiB) is more than {MODEL_RING_ROWS_MAX:,}; "
                                             "lower queue (the windows that may wait for the worker) or hop")
        for j, inp in enumerate(m.inputs):
            if inp not in names:
                close = difflib.get_close_matches(inp, sorted(names), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                errors.add(f"models[{i}].inputs[{j}]", f"no sensor named {inp!r}{hint}")


def _cross_checks(cfg: Config, errors: Errors) -> None:
    _unique_names(cfg, errors)
    _check_models(cfg, errors)
    if cfg.mqtt.reconnect_max < cfg.mqtt.reconnect_min:
        errors.add("mqtt.reconnect_max", f"must be >= mqtt.reconnect_min ({cfg.mqtt.reconnect_min})")
    tls = cfg.mqtt.tls
    if tls is not None:
        for key in ("ca", "cert", "key"):
            p = getattr(tls, key)
            if p and not Path(p).is_file():
                errors.add(f"mqtt.tls.{key}", f"file not found: {p}")
        if bool(tls.cert) != bool(tls.key):
            errors.add("mqtt.tls", "cert and key go together")
    _check_signatures(cfg, errors)


def _check_signatures(cfg: Config, errors: Errors) -> None:
    m = cfg.messaging
    if m.roster and not Path(m.roster).is_file():
        errors.add("messaging.roster", f"file not found: {m.roster}")
    if m.roster and not cfg.commands.keys:
        errors.add("messaging.roster", "a roster is believed only when signed by a trusted operator key: "
                                       "add the operator's [[commands.keys]]")
    if m.signatures == "required" and not cfg.commands.keys:
        errors.add("messaging.signatures", "'required' needs a fleet roster, and a roster needs a trusted operator "
                                           "key to verify it: add [[commands.keys]] (and messaging.roster)")
    if m.signatures == "off" and m.roster:
        errors.add("messaging.signatures", "'off' ignores messaging.roster: remove one of them")
