"""The command registry: name -> handler, argument schema and flags.

User code adds commands in one of three ways (see docs/commands.md):

* the :func:`command` decorator in a module listed in ``[commands] modules``;
* an entry point in the ``edge_agent.commands`` group pointing at a decorated function, or at a
  ``register(registry)`` function;
* another service's ``register_commands(registry)``, handed to the command service by the composition
  root (:meth:`CommandService.add_commands`) and called when the command service starts.

A handler is ``fn(ctx, **args) -> result``: ``ctx`` is a :class:`~edge_agent.commands.service.CommandContext`
(``ctx.host``, ``ctx.control``, ``ctx.id``, ...), ``result`` anything msgpack/JSON can carry. It raises
:class:`edge_agent.errors.CommandError` for a clean error reply; any other exception becomes an
``internal`` error. Handlers run on a worker thread, never on the network thread, and never in a shell.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.commands.schema import Arg, Schema

log = logging.getLogger("edge_agent.commands")

NAME_PATTERN = r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$"
ENTRY_POINT_GROUP = "edge_agent.commands"

Handler = Callable[..., Any]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    fn: Handler
    schema: Schema = field(default_factory=Schema)
    read_only: bool = False
    doc: str = ""


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec] = {}
        self._lock = threading.Lock()

    def add(self, name: str, fn: Handler, args: Mapping[str, Arg] | None = None, *, read_only: bool = False,
            doc: str = "", replace: bool = False) -> CommandSpec:
        if not re.fullmatch(NAME_PATTERN, name) or len(name) > 64:
            raise ValueError(f"command name {name!r} is not allowed: lower-case words joined by '.', "
                             "letters, digits, '_' and '-' (at most 64 characters)")
        spec = CommandSpec(name, fn, Schema(dict(args or {})), read_only, doc or (fn.__doc__ or "").strip())
        with self._lock:
            if name in self._specs and not replace and self._specs[name].fn is not fn:
                raise ValueError(f"command {name!r} is already registered")
            self._specs[name] = spec
        return spec

    def command(self, name: str, args: Mapping[str, Arg] | None = None, *, read_only: bool = False,
                doc: str = "") -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.add(name, fn, args, read_only=read_only, doc=doc)
            return fn
        return deco

    def get(self, name: str) -> CommandSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def merge(self, other: Registry) -> None:
        for spec in other._specs.values():
            self.add(spec.name, spec.fn, spec.schema.args, read_only=spec.read_only, doc=spec.doc, replace=True)


#: Commands registered by the decorator at import time; merged into each service's registry.
USER = Registry()


def command(name: str, args: Mapping[str, Arg] | None = None, *, read_only: bool = False,
            doc: str = "") -> Callable[[Handler], Handler]:
    """Register a user command::

        from edge_agent.commands import Arg, command

        @command("greenhouse.vent", {"open": Arg("bool", required=True)})
        def vent(ctx, open):
            ctx.control.output("vent").set(open, None)
            return {"open": open}
    """
    return USER.command(name, args, read_only=read_only, doc=doc)


def load_user_commands(registry: Registry, modules: list[str]) -> list[str]:
    """Import ``modules`` and the entry points; merge what they registered. Returns problems found."""
    problems: list[str] = []
    for mod in modules:
        try:
            importlib.import_module(mod)
        except Exception as e:
            problems.append(f"commands.modules: cannot import {mod!r}: {type(e).__name__}: {e}")
    try:
        eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as e:  # broken metadata must not stop the agent
        eps = []
        problems.append(f"entry points {ENTRY_POINT_GROUP}: {e}")
    for ep in eps:
        try:
            obj = ep.load()
            if callable(obj) and getattr(obj, "__name__", "") == "register":
                obj(registry)
        except Exception as e:
            problems.append(f"entry point {ep.name} ({ep.value}): {type(e).__name__}: {e}")
    registry.merge(USER)
    for p in problems:
        log.error("user commands: %s", p)
    return problems


def config_warnings(cfg: Any, registry: Registry) -> list[tuple[int, str]]:
    """(log level, line) for what ``[commands]`` (a CommandsConfig) gets wrong once the commands are known."""
    out: list[tuple[int, str]] = []
    if cfg.insecure:
        out.append((logging.WARNING, "commands.insecure = true: UNSIGNED STATE-CHANGING COMMANDS ARE ACCEPTED "
                                     "from anyone who can publish to this device's command topics"))
    for name in cfg.unsigned:
        spec = registry.get(name)
        if spec is None:
            out.append((logging.WARNING, f"commands.unsigned lists {name!r}, which is not a known command"))
        elif not spec.read_only and not cfg.insecure:
            out.append((logging.WARNING, f"commands.unsigned lists {name!r}, which changes state: it still "
                                         "needs a signature (only read-only commands may be unsigned unless "
                                         "commands.insecure = true)"))
    if not cfg.keys and not cfg.insecure:
        out.append((logging.INFO, "commands: no operator keys configured; only unsigned read-only commands "
                                  "are accepted"))
    return out
