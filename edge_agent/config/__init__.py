"""The one place where configuration is read, validated and frozen.

A config file is TOML. :func:`load` returns a :class:`Config` (frozen dataclasses all the way down,
sequences as tuples) or raises :class:`ConfigError` carrying *every* problem found, each with its key::

    /etc/edge-agent/config.toml: sensors[1].interval: must be >= 1e-06, got -1
    /etc/edge-agent/config.toml: mqtt.prot: unknown key (did you mean 'port'?)

:mod:`.schema` declares the sections (field metadata: ``doc``, bounds, ``choices``, ``pattern``, ``ident``),
:mod:`.validate` is the generic validator, :mod:`.load` the only TOML parser in edge_agent, :mod:`.paths`
finds the file, the state directory and the default device id, :mod:`.override` is the override file
``config.set`` writes in the state directory (laid over the file by :func:`load`).
"""

from edge_agent.config.load import (
    build,
    check_runnable,
    load,
    loads,
    merge,
    parse,
    parse_toml,
    read_overrides,
    read_text,
)
from edge_agent.config.paths import default_config_path, default_device_id, default_state_dir
from edge_agent.config.schema import (
    EX_CONFIG,
    MODEL_RING_ROW_BYTES,
    MODEL_RING_ROWS_MAX,
    AgentConfig,
    CommandsConfig,
    Config,
    DeviceConfig,
    LoggingConfig,
    MessageClass,
    MessagingConfig,
    ModelConfig,
    MqttConfig,
    OperatorKey,
    OutputConfig,
    SensorConfig,
    StorageConfig,
    TlsConfig,
    to_dict,
)
from edge_agent.config.validate import validate
from edge_agent.errors import ConfigError
from edge_agent.ids import ID_PATTERN, ID_RULE

__all__ = [
    "EX_CONFIG", "ID_PATTERN", "ID_RULE", "MODEL_RING_ROWS_MAX", "MODEL_RING_ROW_BYTES", "AgentConfig",
    "CommandsConfig", "Config", "ConfigError", "DeviceConfig", "LoggingConfig", "MessageClass", "MessagingConfig",
    "ModelConfig", "MqttConfig", "OperatorKey", "OutputConfig", "SensorConfig", "StorageConfig", "TlsConfig",
    "build", "check_runnable", "default_config_path", "default_device_id", "default_state_dir", "load", "loads",
    "merge", "parse", "parse_toml", "read_overrides", "read_text", "to_dict", "validate",
]
