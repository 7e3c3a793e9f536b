"""The config override file: what ``config.set`` changed, kept in the state directory.

Under the shipped systemd unit the config file is read-only for the agent (``/etc/edge-agent`` is
read-only under ``ProtectSystem=strict``, and the file is ``root:edge-agent 0640``), so remote changes
cannot go into it. They go into ``<state dir>/config.override.toml`` instead, one dotted key per line::

    # written by config.set; merged over the config file at every start and reload
    [set]
    "mqtt.keepalive" = 20
    "sensors.s1.interval" = 2.0

The loader (:func:`edge_agent.config.load.load`) lays these over the config file's document (arrays of
tables are addressed by item name, as ``config.set`` does) and validates the result as a whole; the
keys overridden and the file they came from are on the :class:`~edge_agent.config.schema.Config`
(``overrides``, ``override_source``), shown by ``check-config`` and the ``status`` command. Keys a
remote operator must not change (:data:`PROTECTED`) are refused here too, so a hand-edited override
file cannot grant keys or move the state either. The file is parsed by :mod:`edge_agent.config.load`
(the only TOML parser); this module only reads the parsed document and writes TOML text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OVERRIDE_FILE = "config.override.toml"
#: Keys config.set (and the override file) may not change: an operator must not be able to grant itself
#: keys or permissions, rename the device or move the state dir under the running agent.
PROTECTED = ("commands", "storage.dir", "device.id", "source", "text_hash", "overrides", "override_source")
HEADER = ("# edge-agent: remote config changes (config.set). Merged over the config file at every start and\n"
          "# reload; `edge-agent check-config` lists them. Remove a line (or this file) to return to the file.\n")


class OverrideProblem(ValueError):
    """A key of the override that cannot be applied (the message names it and why)."""


def override_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / OVERRIDE_FILE


def protected(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in PROTECTED)


def changes_from_document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[set]`` table of a parsed override file: {dotted key: value}; OverrideProblem otherwise."""
    unknown = sorted(k for k in doc if k != "set")
    if unknown:
        raise OverrideProblem(f"unknown table(s) {', '.join(unknown)}: only [set] is allowed")
    table = doc.get("set", {})
    if not isinstance(table, Mapping):
        raise OverrideProblem("'set' must be a table of dotted keys")
    return dict(table)


def apply(doc: dict[str, Any], changes: Mapping[str, Any]) -> list[str]:
    """Lay ``changes`` over ``doc`` (in place); the problems, one per key that cannot be applied."""
    problems = []
    for key, value in changes.items():
        try:
            if protected(key):
                raise OverrideProblem("cannot be changed remotely (edit the config file on the device)")
            set_path(doc, key, value)
        except OverrideProblem as e:
            problems.append(f"{key}: {e}")
    return problems


def set_path(doc: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` in ``doc``; ``sensors.s1.interval`` addresses the [[sensors]] item named s1.
    A ``None`` value removes the key."""
    parts = key.split(".")
    if any(not p for p in parts):
        raise OverrideProblem("bad key")
    node: Any = doc
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if isinstance(nxt, list):  # array of tables: address an item by its name
            item = next((x for x in nxt if isinstance(x, dict) and x.get("name") == parts[i + 1]), None)
            if item is None:
                raise OverrideProblem(f"no {part} item named {parts[i + 1]!r}")
            rest = ".".join(parts[i + 2:])
            if not rest:
                raise OverrideProblem(f"give a key inside {part}.{parts[i + 1]}")
            set_path(item, rest, value)
            return
        if not isinstance(nxt, dict):
            raise OverrideProblem(f"{part!r} is not a table")
        node = nxt
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def dump(changes: Mapping[str, Any]) -> str:
    """The override file's text for ``changes`` ({dotted key: value}, sorted)."""
    lines = [HEADER, "[set]"]
    lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in sorted(changes.items())]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else _bad(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return _bad(v)


def _bad(v: Any) -> str:
    raise OverrideProblem(f"cannot write {type(v).__name__} {v!r} to TOML")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", str(k)) else json.dumps(str(k))
