"""``edge-agent sample-config``: a commented config generated from the config dataclasses themselves,
so it always shows every option with its real default."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from edge_agent import actuators, sensors
from edge_agent.config import (
    AgentConfig,
    CommandsConfig,
    DeviceConfig,
    LoggingConfig,
    MessagingConfig,
    ModelConfig,
    MqttConfig,
    StorageConfig,
)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def section(name: str, cls: type, comment_out: bool = False) -> str:
    lines = [f"[{name}]"]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        doc = f.metadata.get("doc", "")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if default is None or dataclasses.is_dataclass(hints[f.name]) or (typing.get_origin(hints[f.name]) and \
                dataclasses.is_dataclass(typing.get_args(hints[f.name])[0])):
            lines.append(f"# {f.name}: {doc}")
            continue
        prefix = "# " if comment_out or default == "" else ""
        lines.append(f"{prefix}{f.name} = {_toml(default)}".ljust(40) + f"  # {doc}")
    return "\n".join(lines)


def render() -> str:
    parts = [
        "# edge-agent configuration (TOML). Every key is shown with its default.\n"
        "# Check it with: edge-agent check-config --config FILE",
        section("device", DeviceConfig),
        section("mqtt", MqttConfig) + '\n# tls = { ca = "/etc/edge-agent/ca.pem", cert = "", key = "" }',
        section("storage", StorageConfig),
        section("agent", AgentConfig),
        section("logging", LoggingConfig),
        section("commands", CommandsConfig)
        + '\n# [[commands.keys]]\n# name = "ops"\n# public_key = "<base64 from edge-agent keys generate>"'
          '\n# allow = ["*"]',
        section("messaging", MessagingConfig),
        "# ---------------------------------------------------------------- sensors",
    ]
    for name in sensors.plugin_names():
        cls = sensors.plugin_class(name)
        block = (cls.SAMPLE or f'[[sensors]]\nname = "x"\ntype = "{name}"').rstrip()
        if name != "simulated":  # needs hardware or files: shown, commented out
            block = "\n".join("# " + ln if ln else "#" for ln in block.splitlines())
        parts.append(f"# --- {name}\n" + block)
    names = actuators.plugin_names()
    if names:
        parts.append("# ---------------------------------------------------------------- outputs")
        for name in names:
            cls = actuators.plugin_class(name)
            parts.append(f"# --- {name}\n" + "\n".join("# " + ln for ln in (cls.SAMPLE or "").splitlines()))
    parts.append("# ---------------------------------------------------------------- models\n"
                 + "\n".join("# " + ln if ln else "#" for ln in section("models", ModelConfig).splitlines())
                 .replace("# [models]", "# [[models]]\n# name = \"anomaly\"\n# path = \"builtin:machine_temp_ae\""
                          "  # the shipped anomaly model\n# inputs = [\"s1\"]"))
    return "\n\n".join(parts) + "\n"
