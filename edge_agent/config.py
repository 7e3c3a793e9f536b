"""The one place where configuration is read, validated and frozen.

A config file is TOML. :func:`load` returns a :class:`Config` (frozen dataclasses all the way down)
or raises :class:`ConfigError` carrying *every* problem found, each with its key path::

    /etc/edge-agent/config.toml: sensors[1].interval: must be > 0, got -1
    /etc/edge-agent/config.toml: mqtt.prot: unknown key (did you mean 'port'?)

Sections are declared as dataclasses. Each field may carry ``metadata`` understood by the generic
validator below: ``doc`` (shown by ``edge-agent sample-config``), ``gt``/``ge``/``le`` bounds,
``choices``, ``pattern``. Plugins (sensors, outputs) declare their own ``Options`` dataclass the same
way; their keys sit beside the common keys of their table and are validated by the same code.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import re
import socket
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_agent.errors import ConfigError
from edge_agent.message import MESSAGE_CLASSES

EX_CONFIG = 78

# Message classes, lowest first. Eviction drops the lowest class first; the forwarder sends the highest
# class first. Alarms are the last thing ever dropped.
MessageClass = Literal["telemetry", "inference", "event", "alarm"]


def _f(default: Any = dataclasses.MISSING, doc: str = "", **meta: Any) -> Any:
    """A dataclass field with validation metadata."""
    md = {"doc": doc, **meta}
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=md)  # type: ignore[misc]
    if default is dataclasses.MISSING:
        return field(metadata=md)
    return field(default=default, metadata=md)


ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
ID_RULE = "letters, digits and . _ : - (no '/', '+', '#', spaces), 1-64 characters"


@dataclass(frozen=True)
class DeviceConfig:
    id: str = _f("", "Device id used in every topic. Default: the hostname.", pattern=ID_PATTERN)
    groups: list[str] = _f([], "Groups this device belongs to (group commands, group messages).",
                           item_pattern=ID_PATTERN)


@dataclass(frozen=True)
class TlsConfig:
    ca: str = _f("", "CA bundle that signs the broker certificate (verification is always on).")
    cert: str = _f("", "Client certificate (PEM), for brokers that require one.")
    key: str = _f("", "Client private key (PEM).")


@dataclass(frozen=True)
class MqttConfig:
    host: str = _f("127.0.0.1", "Broker host name or address.")
    port: int = _f(1883, "Broker port.", ge=1, le=65535)
    topic_prefix: str = _f("edge", "First level of every topic.", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    keepalive: int = _f(30, "MQTT keepalive in seconds; a dead link is detected within this time.", ge=2, le=3600)
    username: str = _f("", "Broker user name (optional).")
    password: str = _f("", "Broker password (optional; prefer a file readable only by the agent's user).")
    client_id: str = _f("", "MQTT client id. Default: 'edge-agent-<device id>'.", pattern=r"^[^+#/]*$")
    tls: TlsConfig | None = _f(None, "TLS settings; a table {ca, cert, key}. Absent: plain TCP.")
    max_inflight: int = _f(20, "Messages handed to the broker and not yet acknowledged (also capped by "
                               "the broker's Receive Maximum).", ge=1, le=1000)
    max_rate: float = _f(0.0, "Cap on messages/s sent from the backlog after a reconnect (0 = no cap).", ge=0)
    max_rate_bytes: float = _f(0.0, "Cap on payload bytes/s from the backlog (0 = no cap).", ge=0)
    session_expiry: int = _f(3600, "MQTT 5 session expiry in seconds, so messages for this device wait "
                                   "at the broker while it is offline.", ge=0)
    connect_timeout: float = _f(10.0, "Seconds to wait for CONNACK.", gt=0)
    reconnect_min: float = _f(0.5, "First reconnect delay ceiling in seconds (full jitter).", gt=0)
    reconnect_max: float = _f(60.0, "Longest reconnect delay ceiling in seconds.", gt=0)
    fast_ack: bool = _f(True, "Decode plain PUBACKs without paho's per-ack objects (about 20% less CPU at "
                              "full rate). Set false to use paho's own path, e.g. after a paho upgrade.")


@dataclass(frozen=True)
class StorageConfig:
    dir: str = _f("", "State directory (outbox, history, keys). Default: $STATE_DIRECTORY, else the "
                      "user data dir.")
    max_bytes: int = _f(256 * 1024 * 1024, "Outbox size cap in bytes (also bounded by free disk).",
                        ge=1024 * 1024)
    max_age: float = _f(7 * 24 * 3600.0, "Messages older than this many seconds expire (accounted in "
                                         "events/dropped).", gt=0)
    commit_interval: float = _f(0.05, "Group commit: longest time a reading waits before its fsync.",
                                gt=0, le=5)
    sync: str = _f("normal", "SQLite synchronous mode: 'normal' (WAL; a power cut may lose the last "
                             "commit_interval) or 'full' (fsync every commit).", choices=("normal", "full"))
    memory_buffer: int = _f(10000, "Messages held in memory while the disk refuses writes.", ge=100)
    min_free: int = _f(16 * 1024 * 1024, "Free disk space (bytes) the outbox leaves to others: when less is "
                                         "free it evicts like at max_bytes (reason 'disk_full').", ge=0)


@dataclass(frozen=True)
class SensorConfig:
    name: str = _f(doc="Sensor name; stream 'telemetry/<name>'.", pattern=ID_PATTERN)
    type: str = _f(doc="Plugin: simulated, replay, system, gpio.digital, gpio.analog, onewire.ds18b20, "
                       "i2c.bme280.")
    interval: float = _f(1.0, "Seconds between readings (0.001 to hours).", gt=0)
    count: int = _f(0, "Stop after this many readings (0 = never).", ge=0)
    cls: str = _f("telemetry", "Message class: telemetry, inference, event or alarm.",
                  choices=MESSAGE_CLASSES)
    batch: int = _f(1, "Readings per message; >1 sends values as arrays.", ge=1, le=10000)
    options: Any = _f(None, "Plugin options (keys beside the common ones).")


@dataclass(frozen=True)
class OutputConfig:
    name: str = _f(doc="Actuator name, used by the output.set command.", pattern=ID_PATTERN)
    type: str = _f(doc="Plugin: gpio.output.")
    options: Any = _f(None, "Plugin options.")


MODEL_RING_ROWS_MAX = 1_000_000  # ~36 MB of ring for one input
MODEL_RING_ROW_BYTES = 32  # a ring row besides 4 bytes per input: 2 seqs, a time, a bad-row mark (inference.window)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f(doc="Model name; results on 'inference/<name>'.", pattern=ID_PATTERN)
    path: str = _f(doc="Path to the .tflite file; metadata is read from '<path>.json' beside it.")
    inputs: list[str] = _f(doc="Sensor names whose values form the window (one column each).")
    field: str = _f("value", "Field of each reading's data to feed the model.")
    window: int = _f(32, "Samples per window.", ge=1, le=100000)
    hop: int = _f(0, "Samples between windows (0 = window, i.e. no overlap).", ge=0)
    preprocess: str = _f("metadata", "'none', 'standardize' (mean/std below), or 'metadata' (from the "
                                     "model's metadata file).", choices=("none", "standardize", "metadata"))
    mean: float = _f(0.0, "Mean for 'standardize'.")
    std: float = _f(1.0, "Standard deviation for 'standardize'.", gt=0)
    output: str = _f("reconstruction", "'reconstruction' (mean squared error vs input = anomaly score) or "
                                        "'scores' (class scores with labels).",
                     choices=("reconstruction", "scores"))
    threshold: float = _f(0.0, "Score at or above which an alarm is raised (0 = the metadata's threshold, "
                               "if any, else never). For 'scores', applies to the top class not labelled "
                               "'normal'.", ge=0)
    alarm: str = _f("", "Event name for alarms: stream 'events/<alarm>'. Default: '<name>_anomaly'.",
                    pattern=ID_PATTERN)
    alarm_after: int = _f(1, "Windows in a row at or above the threshold before the alarm is raised.", ge=1)
    rearm: int = _f(1, "Windows in a row below the threshold before a new alarm can be raised.", ge=1)
    queue: int = _f(4, "Windows that may wait for the worker; beyond, the oldest are skipped and counted. "
                       "Sizes the model's ring buffer: window + hop x queue rows (at most 1,000,000).",
                    ge=1, le=100000)
    max_failures: int = _f(3, "Run-time failures (exception or NaN/inf output) of a newly installed model "
                              "before it is rolled back automatically to the previous one.", ge=1)
    calibrate: bool = _f(True, "Learn the threshold (and input scale) on this device during a warm-up when "
                               "the model's metadata declares a calibration rule; a threshold > 0 pins it.")
    warmup_windows: int = _f(0, "Warm-up length in windows (0 = the model's default; with warmup_seconds, "
                                "the most windows kept).", ge=0, le=100000)
    warmup_seconds: float = _f(0.0, "Warm-up length in seconds of reading time instead (0 = by windows).", ge=0)


@dataclass(frozen=True)
class OperatorKey:
    name: str = _f(doc="Operator name (logged with each command).", pattern=ID_PATTERN)
    public_key: str = _f(doc="Ed25519 public key, base64 (from `edge-agent keys generate`).",
                         pattern=r"^[A-Za-z0-9+/]{43}=$")
    allow: list[str] = _f(["*"], "Commands this key may run ('*' = all; 'config.*' = a prefix).")


@dataclass(frozen=True)
class CommandsConfig:
    enabled: bool = _f(True, "Listen for commands.")
    unsigned: list[str] = _f(["ping", "status"], "Read-only commands accepted without a signature.")
    insecure: bool = _f(False, "Accept unsigned state-changing commands (logged as a warning at start).")
    keys: list[OperatorKey] = _f([], "Trusted operator keys.")
    max_payload: int = _f(256 * 1024, "Largest command payload in bytes.", ge=1024)
    rate: float = _f(20.0, "Commands/s accepted per source (token bucket).", gt=0)
    burst: int = _f(40, "Burst size of the command rate limit.", ge=1)
    max_clock_skew: float = _f(300.0, "Seconds a command's issued_at may lie in the future.", ge=0)
    max_lifetime: float = _f(86400.0, "Longest validity (expires_at - issued_at) of a signed command; "
                                      "bounds how long seen ids must be kept.", gt=0, le=30 * 86400)
    queue: int = _f(64, "Accepted commands waiting for a worker; more are refused as 'busy'.", ge=1, le=10000)
    workers: int = _f(2, "Threads executing commands.", ge=1, le=16)
    modules: list[str] = _f([], "Python modules imported at start that register commands with "
                                "@edge_agent.commands.command (besides the 'edge_agent.commands' entry "
                                "points).", item_pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class MessagingConfig:
    enabled: bool = _f(True, "Receive direct and group messages (inbox) and keep a local history.")
    history_max_age: float = _f(30 * 24 * 3600.0, "History retention in seconds.", gt=0)
    history_max_bytes: int = _f(64 * 1024 * 1024, "History size cap in bytes.", ge=1024 * 1024)
    default_ttl: float = _f(0.0, "Default message time-to-live in seconds (0 = storage.max_age).", ge=0)
    chunk_size: int = _f(64 * 1024, "File transfer chunk size in bytes.", ge=1024, le=1024 * 1024)
    transfer_max_age: float = _f(7 * 24 * 3600.0, "Incoming file transfers still incomplete after this many "
                                                  "seconds are removed.", gt=0)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _f("info", "debug, info, warning or error.", choices=("debug", "info", "warning", "error"))
    journal: bool = _f(True, "Log to the systemd journal when running under systemd.")


@dataclass(frozen=True)
class AgentConfig:
    status_interval: float = _f(60.0, "Seconds between retained status updates with counters.", gt=0)
    stop_timeout: float = _f(5.0, "Seconds a graceful stop may spend sending the backlog.", ge=0)
    watchdog_stall: float = _f(0.0, "A loop silent this long counts as stalled (0 = half of "
                                     "WATCHDOG_USEC, else 30 s).", ge=0)
    pin_factory: str = _f("", "gpiozero pin factory: lgpio, rpigpio, native, mock. Default: "
                              "$GPIOZERO_PIN_FACTORY, else gpiozero's choice.",
                          choices=("", "lgpio", "rpigpio", "pigpio", "native", "mock"))


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = _f(DeviceConfig())
    mqtt: MqttConfig = _f(MqttConfig())
    storage: StorageConfig = _f(StorageConfig())
    agent: AgentConfig = _f(AgentConfig())
    logging: LoggingConfig = _f(LoggingConfig())
    commands: CommandsConfig = _f(CommandsConfig())
    messaging: MessagingConfig = _f(MessagingConfig())
    sensors: list[SensorConfig] = _f([], "Sensors ([[sensors]] tables).")
    outputs: list[OutputConfig] = _f([], "Actuators ([[outputs]] tables).")
    models: list[ModelConfig] = _f([], "Inference models ([[models]] tables).")
    source: str = _f("", "Where this config was read from (set by the loader).")
    text_hash: str = _f("", "sha256 of the config text (set by the loader).")

    @property
    def state_dir(self) -> Path:
        return Path(self.storage.dir)

    def sensor(self, name: str) -> SensorConfig | None:
        return next((s for s in self.sensors if s.name == name), None)


# ---------------------------------------------------------------- plugin option registries
# Filled lazily from edge_agent.sensors / edge_agent.actuators so config stays the one parser.

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


# ---------------------------------------------------------------- generic validator

class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append(f"{path}: {msg}" if path else msg)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "table"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"


def _check_scalar(tp: Any, value: Any, path: str, errors: _Errors, meta: Mapping[str, Any]) -> Any:
    ok: bool
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is Any:
        return value
    else:
        ok = isinstance(value, tp)
    if not ok:
        errors.add(path, f"must be {_type_name(tp)}, got {_describe(value)}")
        return dataclasses.MISSING
    if "gt" in meta and not value > meta["gt"]:
        errors.add(path, f"must be > {meta['gt']}, got {value!r}")
    if "ge" in meta and not value >= meta["ge"]:
        errors.add(path, f"must be >= {meta['ge']}, got {value!r}")
    if "le" in meta and not value <= meta["le"]:
        errors.add(path, f"must be <= {meta['le']}, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        errors.add(path, f"must be one of {', '.join(repr(c) for c in meta['choices'])}, got {value!r}")
    pattern = meta.get("pattern")
    if pattern and isinstance(value, str) and value and not re.match(pattern, value):
        rule = ID_RULE if pattern == ID_PATTERN else f"pattern {pattern}"
        errors.add(path, f"{value!r} is not allowed: {rule}")
    return float(value) if tp is float else value


def _convert(tp: Any, value: Any, path: str, errors: _Errors, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner[0], value, path, errors, meta)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            errors.add(path, f"must be {_type_name(tp)}, got {_describe(value)}")
            return dataclasses.MISSING
        item_meta = {"pattern": meta["item_pattern"]} if "item_pattern" in meta else {}
        return [_convert(item_tp, v, _join(path, i), errors, item_meta) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.add(path, f"must be a table, got {_describe(value)}")
            return dataclasses.MISSING
        return build(tp, value, path, errors)  # type: ignore[arg-type]
    return _check_scalar(tp, value, path, errors, meta)


def _unknown(key: str, known: list[str], path: str, errors: _Errors) -> None:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(known))})"
    errors.add(_join(path, key), f"unknown key{hint}")


def build(cls: type, table: Mapping[str, Any], path: str, errors: _Errors,
          extra: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """Build dataclass ``cls`` from a TOML table, recording every problem in ``errors``."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in ("source", "text_hash", "options")]
    known = [f.name for f in fields]
    kwargs: dict[str, Any] = {}
    rest = {k: v for k, v in table.items() if k not in known}
    for f in fields:
        if f.name in table:
            v = _convert(hints[f.name], table[f.name], _join(path, f.name), errors, f.metadata)
            if v is not dataclasses.MISSING:
                kwargs[f.name] = v
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.add(_join(path, f.name), "required key is missing")
    if extra is not None:
        extra_kwargs = {"__rest__": rest, "__known__": known, "__kwargs__": kwargs}
        extra(extra_kwargs)
    else:
        for k in rest:
            _unknown(k, known, path, errors)
    try:
        return cls(**kwargs)
    except TypeError:
        return None  # missing required values were already reported


def _plugin_table(kind: str, base: type, lookup: Callable[[str], type | None], table: Mapping[str, Any],
                  path: str, errors: _Errors) -> Any:
    def extra(ctx: dict[str, Any]) -> None:
        kw = ctx["__kwargs__"]
        rest = ctx["__rest__"]
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
                _unknown(k, ctx["__known__"] + opt_fields, path, errors)
        kw["options"] = build(opts_cls, {k: v for k, v in rest.items() if k in opt_fields}, path, errors)
        check = getattr(opts_cls, "validate", None)
        if check is not None and kw["options"] is not None:
            for key, msg in check(kw["options"]):
                errors.add(_join(path, key), msg)

    if not isinstance(table, dict):
        errors.add(path, f"must be a table, got {_describe(table)}")
        return None
    return build(base, table, path, errors, extra)


def parse(data: Mapping[str, Any], source: str = "<memory>", text: str = "",
          env: Mapping[str, str] | None = None) -> Config:
    """Validate a decoded TOML document into a :class:`Config`; raise ConfigError with every problem."""
    env = os.environ if env is None else env
    errors = _Errors()
    top_known = [f.name for f in dataclasses.fields(Config) if f.name not in ("source", "text_hash")]
    for k in data:
        if k not in top_known:
            _unknown(k, top_known, "", errors)
    kw: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for name in ("device", "mqtt", "storage", "agent", "logging", "commands", "messaging", "models"):
        if name in data:
            v = _convert(hints[name], data[name], name, errors, {})
            if v is not dataclasses.MISSING and v is not None:
                kw[name] = v
    for name, base, lookup in (("sensors", SensorConfig, _sensor_options),
                               ("outputs", OutputConfig, _output_options)):
        if name in data:
            items = data[name]
            if not isinstance(items, list):
                errors.add(name, f"must be an array of tables ([[{name}]]), got {_describe(items)}")
                continue
            built = [_plugin_table(name, base, lookup, t, _join(name, i), errors) for i, t in enumerate(items)]
            kw[name] = [b for b in built if b is not None]
    cfg = Config(**kw)
    _cross_checks(cfg, errors)
    if errors.items:
        raise ConfigError(source, errors.items)
    return _defaults(cfg, source, text, env)


def _cross_checks(cfg: Config, errors: _Errors) -> None:
    for kind, items in (("sensors", cfg.sensors), ("outputs", cfg.outputs), ("models", cfg.models)):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item is None:
                continue
            if item.name in seen:
                errors.add(f"{kind}[{i}].name", f"duplicate name {item.name!r} (also {kind}[{seen[item.name]}])")
            seen[item.name] = i
    names = {s.name for s in cfg.sensors if s is not None}
    for i, m in enumerate(cfg.models):
        if m is None:
            continue
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


def default_device_id() -> str:
    host = socket.gethostname().split(".")[0] or "edge"
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", host)[:64]


def default_state_dir(env: Mapping[str, str]) -> str:
    sd = env.get("STATE_DIRECTORY", "")
    if sd:
        return sd.split(":")[0]
    import platformdirs

    return platformdirs.user_data_dir("edge-agent", appauthor=False)


def _defaults(cfg: Config, source: str, text: str, env: Mapping[str, str]) -> Config:
    device = cfg.device if cfg.device.id else dataclasses.replace(cfg.device, id=default_device_id())
    storage = cfg.storage if cfg.storage.dir else dataclasses.replace(cfg.storage, dir=default_state_dir(env))
    mqtt = cfg.mqtt
    if not mqtt.client_id:
        mqtt = dataclasses.replace(mqtt, client_id=f"edge-agent-{device.id}")
    return dataclasses.replace(cfg, device=device, storage=storage, mqtt=mqtt, source=source,
                               text_hash=hashlib.sha256(text.encode()).hexdigest()[:16])


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("EDGE_AGENT_CONFIG"):
        return Path(env["EDGE_AGENT_CONFIG"])
    etc = Path("/etc/edge-agent/config.toml")
    if etc.exists():
        return etc
    import platformdirs

    return Path(platformdirs.user_config_dir("edge-agent", appauthor=False)) / "config.toml"


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file (see module doc for the search order)."""
    p = Path(path) if path is not None else default_config_path(env)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), ["file not found (give --config, set EDGE_AGENT_CONFIG, or run "
                                   "`edge-agent sample-config > config.toml`)"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(p), [f"cannot read: {e}"]) from None
    return loads(text, str(p), env)


def loads(text: str, source: str = "<memory>", env: Mapping[str, str] | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [f"invalid TOML: {e}"]) from None
    return parse(data, source, text, env)


def to_dict(obj: Any) -> Any:
    """A plain, TOML/JSON-friendly view of a config (used by config.get and the status command)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if f.name in ("source", "text_hash"):
                continue
            v = getattr(obj, f.name)
            if f.name == "options":
                if v is not None:
                    out.update(to_dict(v))
                continue
            if f.name == "password" and v:
                v = "***"
            if v is None:
                continue
            out[f.name] = to_dict(v)
        return out
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


def print_errors(err: ConfigError, stream: Any = None) -> None:
    stream = stream or sys.stderr
    print(f"config error: {err.source}: {len(err.errors)} problem(s)", file=stream)
    for e in err.errors:
        print(f"  {err.source}: {e}", file=stream)
