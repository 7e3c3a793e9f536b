"""Strict argument schemas for commands.

Every command declares its arguments; anything else is refused before the handler runs, with a
``bad_args`` error that names the argument and the rule. Unknown arguments are errors (not ignored),
so a typo in an operator's ``key=value`` never silently does nothing. Types are the ones both JSON
and msgpack carry: str, int, float, bool, bytes, list, map; ``float`` also accepts an int.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.errors import CommandError

_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "bytes": (bytes,),
    "list": (list,), "map": (dict,), "number": (int, float), "scalar": (bool, int, float, str),
    "any": (object,),
}


@dataclass(frozen=True)
class Arg:
    """One argument: ``type`` is one of str, int, float, number, bool, bytes, list, map, scalar, any."""

    type: str
    required: bool = False
    default: Any = None
    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    max_len: int | None = None
    choices: tuple[Any, ...] | None = None
    pattern: str | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"unknown argument type {self.type!r} (known: {', '.join(_TYPES)})")


@dataclass(frozen=True)
class Schema:
    args: Mapping[str, Arg] = field(default_factory=dict)

    def validate(self, given: Any) -> dict[str, Any]:
        """Return the arguments with defaults filled in; raise CommandError('bad_args') otherwise."""
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise CommandError("bad_args", f"args must be a map, got {type(given).__name__}")
        problems: list[str] = []
        for k in given:
            if k not in self.args:
                known = ", ".join(sorted(self.args)) or "none"
                problems.append(f"{k!r}: unknown argument (known: {known})")
        out: dict[str, Any] = {}
        for name, spec in self.args.items():
            if name not in given:
                if spec.required:
                    problems.append(f"{name!r}: required")
                elif spec.default is not None:
                    out[name] = spec.default
                continue
            msg = _check(spec, given[name])
            if msg:
                problems.append(f"{name!r}: {msg}")
            else:
                v = given[name]
                out[name] = float(v) if spec.type == "float" else v
        if problems:
            raise CommandError("bad_args", "; ".join(problems))
        return out

    def describe(self) -> dict[str, Any]:
        return {n: {"type": a.type, "required": a.required, **({"doc": a.doc} if a.doc else {})}
                for n, a in self.args.items()}


def _check(spec: Arg, v: Any) -> str:
    types = _TYPES[spec.type]
    if spec.type != "bool" and spec.type != "scalar" and spec.type != "any" and isinstance(v, bool):
        return f"must be {spec.type}, got bool"
    if not isinstance(v, types):
        return f"must be {spec.type}, got {type(v).__name__}"
    if isinstance(v, float) and v != v:
        return "must not be NaN"
    if isinstance(v, int | float) and not isinstance(v, bool):
        if spec.ge is not None and not v >= spec.ge:
            return f"must be >= {spec.ge}, got {v!r}"
        if spec.gt is not None and not v > spec.gt:
            return f"must be > {spec.gt}, got {v!r}"
        if spec.le is not None and not v <= spec.le:
            return f"must be <= {spec.le}, got {v!r}"
    if spec.max_len is not None and isinstance(v, str | bytes | list | dict) and len(v) > spec.max_len:
        return f"longer than {spec.max_len}"
    if spec.choices is not None and v not in spec.choices:
        return f"must be one of {', '.join(map(repr, spec.choices))}, got {v!r}"
    if spec.pattern is not None and isinstance(v, str) and not re.fullmatch(spec.pattern, v):
        return f"{v!r} does not match {spec.pattern}"
    return ""
