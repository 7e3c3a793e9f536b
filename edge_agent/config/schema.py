"""The config schema: frozen dataclasses whose field metadata drives validation and ``sample-config``.

Each field may carry ``metadata`` understood by :mod:`edge_agent.config.validate`: ``doc`` (shown by
``edge-agent sample-config``), ``gt``/``ge``/``le`` bounds, ``choices``, ``pattern`` (re.fullmatch),
``ident`` (the id rule of :mod:`edge_agent.ids`: ``"id"``, or ``"device"`` which also refuses the reserved
ids), and ``item_pattern``/``item_ident`` for the items of a sequence. Plugins (sensors, outputs) declare
their own ``Options`` dataclass the same way.

Frozen all the way down: sequences are tuples (a list given to a constructor becomes a tuple).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_agent.message import MESSAGE_CLASSES

EX_CONFIG = 78

#: Bounds of every duration given in seconds (ten years) and of a sensor's interval (also the
#: ``sensor.set_interval`` command's): a finite, sane range, so nothing overflows or spins.
MAX_SECONDS = 10 * 365 * 86400.0
INTERVAL_MIN = 0.000001  # 1 µs: a sampler asked for more than it can do runs flat out (benches)
INTERVAL_MAX = 86400.0
#: A number without an explicit bound must lie within +-BIG_NUMBER (and a float must be finite).
BIG_NUMBER = 2**53

# Message classes, lowest first. Eviction drops the lowest class first; the forwarder sends the highest
# class first. Alarms are the last thing ever dropped.
MessageClass = Literal["telemetry", "inference", "event", "alarm"]

#: Fields set by the loader, not read from the file.
LOADER_FIELDS = ("source", "text_hash", "overrides", "override_source")


def _f(default: Any = dataclasses.MISSING, doc: str = "", **meta: Any) -> Any:
    """A dataclass field with validation metadata."""
    md = {"doc": doc, **meta}
    if default is dataclasses.MISSING:
        return field(metadata=md)
    return field(default=default, metadata=md)


class _Frozen:
    """Mixin: list values given to the constructor (or to dataclasses.replace) are stored as tuples."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))


@dataclass(frozen=True)
class DeviceConfig(_Frozen):
    id: str = _f("", "Device id used in every topic. Default: the hostname.", ident="device")
    groups: tuple[str, ...] = _f((), "Groups this device belongs to (group commands, group messages).",
                                 item_ident="id")


@dataclass(frozen=True)
class TlsConfig(_Frozen):
    ca: str = _f("", "CA bundle that signs the broker certificate (verification is always on).")
    cert: str = _f("", "Client certificate (PEM), for brokers that require one.")
    key: str = _f("", "Client private key (PEM).")


@dataclass(frozen=True)
class MqttConfig(_Frozen):
    host: str = _f("127.0.0.1", "Broker host name or address.")
    port: int = _f(1883, "Broker port.", ge=1, le=65535)
    topic_prefix: str = _f("edge", "First level of every topic.", ident="id")
    keepalive: int = _f(30, "MQTT keepalive in seconds; a dead link is detected within this time.", ge=2, le=3600)
    username: str = _f("", "Broker user name (optional).")
    password: str = _f("", "Broker password (optional; prefer a file readable only by the agent's user).")
    client_id: str = _f("", "MQTT client id. Default: 'edge-agent-<device id>'.", pattern=r"[^+#/]*")
    tls: TlsConfig | None = _f(None, "TLS settings; a table {ca, cert, key}. Absent: plain TCP.")
    max_inflight: int = _f(20, "Messages handed to the broker and not yet acknowledged (also capped by "
                               "the broker's Receive Maximum).", ge=1, le=1000)
    max_rate: float = _f(0.0, "Cap on messages/s sent from the backlog after a reconnect (0 = no cap).", ge=0,
                         le=1e9)
    max_rate_bytes: float = _f(0.0, "Cap on payload bytes/s from the backlog (0 = no cap).", ge=0, le=1e12)
    session_expiry: int = _f(3600, "MQTT 5 session expiry in seconds, so messages for this device wait "
                                   "at the broker while it is offline.", ge=0, le=2**32 - 1)
    connect_timeout: float = _f(10.0, "Seconds to wait for CONNACK.", ge=0.1, le=3600)
    reconnect_min: float = _f(0.5, "First reconnect delay ceiling in seconds (full jitter).", ge=0.01, le=3600)
    reconnect_max: float = _f(60.0, "Longest reconnect delay ceiling in seconds.", ge=0.01, le=86400)
    fast_ack: bool = _f(True, "Decode plain PUBACKs without paho's per-ack objects (about 20% less CPU at "
                              "full rate). Set false to use paho's own path, e.g. after a paho upgrade.")
    fast_publish: bool = _f(True, "Build plain QoS 1 PUBLISH packets without paho's per-message objects "
                                  "(about a sixth less CPU at full rate). Set false to use paho's own "
                                  "path, e.g. after a paho upgrade.")


@dataclass(frozen=True)
class StorageConfig(_Frozen):
    dir: str = _f("", "State directory (outbox, history, keys). Default: $STATE_DIRECTORY, else the "
                      "user data dir.")
    max_bytes: int = _f(256 * 1024 * 1024, "Outbox size cap in bytes (also bounded by free disk).",
                        ge=1024 * 1024, le=2**50)
    max_age: float = _f(7 * 24 * 3600.0, "Messages older than this many seconds expire (accounted in "
                                         "events/dropped).", ge=1, le=MAX_SECONDS)
    mode: str = _f("write_behind", "'write_behind': a message goes to the broker at once from memory and is "
                                   "stored only if its PUBACK has not come within flush_after (or the link is "
                                   "down, or at stop); 'durable': every message is stored before it is sent.",
                   choices=("write_behind", "durable"))
    flush_after: float = _f(0.5, "Write-behind: seconds a message may wait for its PUBACK before it is stored.",
                            ge=0.01, le=60)
    hold_limit: int = _f(20000, "Write-behind: messages held in memory unstored at most; beyond, all of them "
                               "are stored.", ge=1, le=1_000_000)
    commit_interval: float = _f(0.0, "Group commit: longest time a row waits for others before its commit "
                                     "(0: commit at once when the writer is idle; rows that arrive during a "
                                     "commit join the next).", ge=0, le=5)
    sync: str = _f("normal", "SQLite synchronous mode: 'normal' (WAL; a power cut may lose the last "
                             "commit_interval) or 'full' (fsync every commit).", choices=("normal", "full"))
    memory_buffer: int = _f(10000, "Messages held in memory while the disk refuses writes.", ge=100,
                            le=10_000_000)
    min_free: int = _f(16 * 1024 * 1024, "Free disk space (bytes) the outbox leaves to others: when less is "
                                         "free it evicts like at max_bytes (reason 'disk_full').", ge=0,
                       le=2**50)
    quarantine_keep: int = _f(5, "Sets of set-aside outbox files (damaged, foreign or replaced; each with its "
                                 "-wal/-shm) kept in quarantine/ beside the database for inspection: the "
                                 "newest this many; older ones are deleted at start and after each new one.",
                              ge=1, le=1000)


@dataclass(frozen=True)
class SensorConfig(_Frozen):
    name: str = _f(doc="Sensor name; stream 'telemetry/<name>'.", ident="id")
    type: str = _f(doc="Plugin: simulated, replay, system, gpio.digital, gpio.analog, onewire.ds18b20, "
                       "i2c.bme280.")
    interval: float = _f(1.0, "Seconds between readings (0.000001 to 86400).", ge=INTERVAL_MIN, le=INTERVAL_MAX)
    count: int = _f(0, "Stop after this many readings (0 = never).", ge=0, le=2**53)
    cls: str = _f("telemetry", "Message class: telemetry, inference, event or alarm.",
                  choices=MESSAGE_CLASSES)
    batch: int = _f(1, "Readings per message; >1 sends values as arrays.", ge=1, le=10000)
    options: Any = _f(None, "Plugin options (keys beside the common ones).")


@dataclass(frozen=True)
class OutputConfig(_Frozen):
    name: str = _f(doc="Actuator name, used by the output.set command.", ident="id")
    type: str = _f(doc="Plugin: gpio.output.")
    options: Any = _f(None, "Plugin options.")


MODEL_RING_ROWS_MAX = 1_000_000  # ~36 MB of ring for one input
MODEL_RING_ROW_BYTES = 32  # a ring row besides 4 bytes per input: 2 seqs, a time, a bad-row mark (inference.window)


@dataclass(frozen=True)
class ModelConfig(_Frozen):
    name: str = _f(doc="Model name; results on 'inference/<name>'.", ident="id")
    path: str = _f(doc="Path to the .tflite file; metadata is read from '<path>.json' beside it.")
    inputs: tuple[str, ...] = _f(doc="Sensor names whose values form the window (one column each).")
    field: str = _f("value", "Field of each reading's data to feed the model.")
    window: int = _f(32, "Samples per window.", ge=1, le=100000)
    hop: int = _f(0, "Samples between windows (0 = window, i.e. no overlap).", ge=0, le=100000)
    preprocess: str = _f("metadata", "'none', 'standardize' (mean/std below), or 'metadata' (from the "
                                     "model's metadata file).", choices=("none", "standardize", "metadata"))
    mean: float = _f(0.0, "Mean for 'standardize'.", ge=-1e15, le=1e15)
    std: float = _f(1.0, "Standard deviation for 'standardize'.", ge=1e-12, le=1e15)
    output: str = _f("reconstruction", "'reconstruction' (mean squared error vs input = anomaly score) or "
                                        "'scores' (class scores with labels).",
                     choices=("reconstruction", "scores"))
    threshold: float = _f(0.0, "Score at or above which an alarm is raised (0 = the metadata's threshold, "
                               "if any, else never). For 'scores', applies to the top class not labelled "
                               "'normal'.", ge=0, le=1e15)
    alarm: str = _f("", "Event name for alarms: stream 'events/<alarm>'. Default: '<name>_anomaly'.",
                    ident="id")
    alarm_after: int = _f(1, "Windows in a row at or above the threshold before the alarm is raised.", ge=1,
                         le=1_000_000)
    rearm: int = _f(1, "Windows in a row below the threshold before a new alarm can be raised.", ge=1,
                   le=1_000_000)
    queue: int = _f(4, "Windows that may wait for the worker; beyond, the oldest are skipped and counted. "
                       "Sizes the model's ring buffer: window + hop x queue rows (at most 1,000,000).",
                    ge=1, le=100000)
    max_failures: int = _f(3, "Run-time failures (exception or NaN/inf output) of a newly installed model "
                              "before it is rolled back automatically to the previous one.", ge=1,
                      le=1_000_000)
    calibrate: bool = _f(True, "Learn the threshold (and input scale) on this device during a warm-up when "
                               "the model's metadata declares a calibration rule; a threshold > 0 pins it.")
    warmup_windows: int = _f(0, "Warm-up length in windows (0 = the model's default; with warmup_seconds, "
                                "the most windows kept).", ge=0, le=100000)
    warmup_seconds: float = _f(0.0, "Warm-up length in seconds of reading time instead (0 = by windows).",
                              ge=0, le=MAX_SECONDS)


@dataclass(frozen=True)
class OperatorKey(_Frozen):
    name: str = _f(doc="Operator name (logged with each command).", ident="id")
    public_key: str = _f(doc="Ed25519 public key, base64 (from `edge-agent keys generate`).",
                         pattern=r"[A-Za-z0-9+/]{43}=")
    allow: tuple[str, ...] = _f(("*",), "Commands this key may run ('*' = all; 'config.*' = a prefix).")


@dataclass(frozen=True)
class CommandsConfig(_Frozen):
    enabled: bool = _f(True, "Listen for commands.")
    unsigned: tuple[str, ...] = _f(("ping", "status"), "Read-only commands accepted without a signature.")
    insecure: bool = _f(False, "Accept unsigned state-changing commands (logged as a warning at start).")
    keys: tuple[OperatorKey, ...] = _f((), "Trusted operator keys.")
    max_payload: int = _f(256 * 1024, "Largest command payload in bytes.", ge=1024, le=64 * 1024 * 1024)
    rate: float = _f(20.0, "Commands/s accepted per source (token bucket).", ge=0.001, le=1e6)
    burst: int = _f(40, "Burst size of the command rate limit.", ge=1, le=1_000_000)
    max_clock_skew: float = _f(300.0, "Seconds a command's issued_at may lie in the future.", ge=0,
                                 le=30 * 86400)
    max_lifetime: float = _f(86400.0, "Longest validity (expires_at - issued_at) of a signed command; "
                                      "bounds how long seen ids must be kept.", ge=1, le=30 * 86400)
    queue: int = _f(64, "Accepted commands waiting for a worker; more are refused as 'busy'.", ge=1, le=10000)
    workers: int = _f(2, "Threads executing commands.", ge=1, le=16)
    modules: tuple[str, ...] = _f((), "Python modules imported at start that register commands with "
                                      "@edge_agent.commands.command (besides the 'edge_agent.commands' entry "
                                      "points).", item_pattern=r"[A-Za-z_][A-Za-z0-9_.]*")


@dataclass(frozen=True)
class MessagingConfig(_Frozen):
    enabled: bool = _f(True, "Receive direct and group messages (inbox) and keep a local history.")
    history_max_age: float = _f(30 * 24 * 3600.0, "History retention in seconds.", ge=1, le=MAX_SECONDS)
    history_max_bytes: int = _f(64 * 1024 * 1024, "History size cap in bytes.", ge=1024 * 1024,
                                 le=2**50)
    default_ttl: float = _f(0.0, "Default message time-to-live in seconds (0 = storage.max_age).", ge=0,
                               le=MAX_SECONDS)
    chunk_size: int = _f(64 * 1024, "File transfer chunk size in bytes.", ge=1024, le=1024 * 1024)
    transfer_max_age: float = _f(7 * 24 * 3600.0, "Incoming file transfers still incomplete after this many "
                                                  "seconds are removed.", ge=1, le=MAX_SECONDS)
    signatures: str = _f("auto", "Signed messages: 'auto' signs everything sent and, once a verified fleet "
                                 "roster is held (messaging.roster, or the retained <prefix>/_roster signed by a "
                                 "commands.keys operator), refuses direct, group, receipt and file envelopes "
                                 "not signed by their sender's roster key; 'required' refuses them even before "
                                 "a roster arrives; 'off' neither signs nor checks (any broker user can then "
                                 "speak as any device).", choices=("auto", "required", "off"))
    key: str = _f("", "This device's Ed25519 private key (base64 seed file, mode 0600). Default: "
                      "<state dir>/device.key, created at first start.")
    roster: str = _f("", "Signed fleet roster file (`edge-agent roster add ...`) pinned at start; a newer "
                         "version published retained on <prefix>/_roster replaces it.")


@dataclass(frozen=True)
class LoggingConfig(_Frozen):
    level: str = _f("info", "debug, info, warning or error.", choices=("debug", "info", "warning", "error"))
    journal: bool = _f(True, "Log to the systemd journal when running under systemd.")


@dataclass(frozen=True)
class AgentConfig(_Frozen):
    status_interval: float = _f(60.0, "Seconds between retained status updates with counters.", ge=0.1,
                                  le=86400)
    stop_timeout: float = _f(5.0, "Seconds a graceful stop may spend sending the backlog.", ge=0, le=3600)
    watchdog_stall: float = _f(0.0, "A loop silent this long counts as stalled (0 = half of "
                                     "WATCHDOG_USEC, else 30 s).", ge=0, le=86400)
    pin_factory: str = _f("", "gpiozero pin factory: lgpio, rpigpio, native, mock. Default: "
                              "$GPIOZERO_PIN_FACTORY, else gpiozero's choice.",
                          choices=("", "lgpio", "rpigpio", "pigpio", "native", "mock"))


@dataclass(frozen=True)
class Config(_Frozen):
    device: DeviceConfig = _f(DeviceConfig())
    mqtt: MqttConfig = _f(MqttConfig())
    storage: StorageConfig = _f(StorageConfig())
    agent: AgentConfig = _f(AgentConfig())
    logging: LoggingConfig = _f(LoggingConfig())
    commands: CommandsConfig = _f(CommandsConfig())
    messaging: MessagingConfig = _f(MessagingConfig())
    sensors: tuple[SensorConfig, ...] = _f((), "Sensors ([[sensors]] tables).")
    outputs: tuple[OutputConfig, ...] = _f((), "Actuators ([[outputs]] tables).")
    models: tuple[ModelConfig, ...] = _f((), "Inference models ([[models]] tables).")
    source: str = _f("", "Where this config was read from (set by the loader).")
    text_hash: str = _f("", "sha256 of the config text (set by the loader).")
    overrides: tuple[str, ...] = _f((), "Keys set by the override file (config.set), sorted (set by the loader).")
    override_source: str = _f("", "The override file laid over the config file, if any (set by the loader).")

    @property
    def state_dir(self) -> Path:
        return Path(self.storage.dir)

    def sensor(self, name: str) -> SensorConfig | None:
        return next((s for s in self.sensors if s.name == name), None)


def to_dict(obj: Any) -> Any:
    """A plain, TOML/JSON-friendly view of a config (used by config.get and the status command)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if f.name in LOADER_FIELDS:
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
