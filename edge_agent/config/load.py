"""Reading a config: the only module in edge_agent that parses TOML.

:func:`load` reads a file (search order in :func:`~edge_agent.config.paths.default_config_path`),
:func:`loads` a text, :func:`build` a text plus keyword overrides merged into the document *before*
validation (so ``Agent(device_id="a/b")`` gets exactly the config file's checks and messages). Each
returns a frozen :class:`~edge_agent.config.schema.Config` with the environment's defaults filled in
(device id, state dir, client id) or raises :class:`~edge_agent.errors.ConfigError` with every problem.

:func:`load` also lays the override file ``<state dir>/config.override.toml`` (what ``config.set``
changed, :mod:`edge_agent.config.override`) over the file's document before validating the whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent import ids
from edge_agent.config import override
from edge_agent.config.paths import default_config_path, default_device_id, default_state_dir, state_dir_problem
from edge_agent.config.schema import Config
from edge_agent.config.validate import validate
from edge_agent.errors import ConfigError


def parse_toml(text: str, source: str = "<memory>") -> dict[str, Any]:
    """The TOML document ``text`` as plain dicts and lists; ConfigError(source, "invalid TOML: ...")."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [_toml_problem(text, str(e))]) from None


_KEY = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=")
_HEADER = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]")


def _toml_problem(text: str, msg: str) -> str:
    """A TOML syntax error named by its key where one can be found (tomllib gives a line at most):
    ``mqtt.port: duplicate key (lines 9 and 12)``, ``mqtt.port: invalid TOML at line 9: ...``."""
    keys: dict[str, int] = {}
    where: dict[int, str] = {}  # line number -> key path
    table, counts = "", dict[str, int]()
    for n, line in enumerate(text.splitlines(), 1):
        h = _HEADER.match(line)
        if h:
            name = h.group(2)
            if h.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                name = f"{name}[{counts[name]}]"
            table = where[n] = name
            continue
        k = _KEY.match(line)
        if k:
            path = f"{table}.{k.group(1)}" if table else k.group(1)
            if path in keys:
                return f"{path}: duplicate key (lines {keys[path]} and {n}): invalid TOML: {msg}"
            keys[path], where[n] = n, path
    m = re.search(r"at line (\d+)", msg)
    n = int(m.group(1)) if m else max(where, default=0)  # "at end of document": the last key seen
    line = text.splitlines()[n - 1].strip()[:80] if 0 < n <= len(text.splitlines()) else ""
    key = where.get(n) or next((where[i] for i in range(n, 0, -1) if i in where), "")
    return f"{key + ': ' if key else ''}invalid TOML at line {n} ({line!r}): {msg}" if n else f"invalid TOML: {msg}"


def read_text(path: str | os.PathLike[str]) -> str:
    """A config file's text; ConfigError naming the file when it is missing or unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found (give --config, set EDGE_AGENT_CONFIG, or run "
                                      "`edge-agent sample-config > config.toml`)"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), [f"cannot read: {e}"]) from None


def parse(data: Mapping[str, Any], source: str = "<memory>", text: str = "",
          env: Mapping[str, str] | None = None) -> Config:
    """Validate a decoded TOML document and fill in the defaults; ConfigError with every problem."""
    return _defaults(validate(data, source), source, text, os.environ if env is None else env)


def loads(text: str, source: str = "<memory>", env: Mapping[str, str] | None = None) -> Config:
    """A Config from TOML text (``source`` names it in errors and in ``Config.source``)."""
    return parse(parse_toml(text, source), source, text, env)


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate the config file ``path`` (default: :func:`default_config_path`) with the override
    file of its state dir laid over it, or with ``overrides`` ({dotted key: value}) instead of that file
    (``config.set`` validates a change this way before it writes it)."""
    p = Path(path) if path is not None else default_config_path(env)
    env = os.environ if env is None else env
    text = read_text(p)
    data = parse_toml(text, str(p))
    storage = data.get("storage")
    state = storage.get("dir") if isinstance(storage, Mapping) else None
    sdir = state if isinstance(state, str) and state else default_state_dir(env)
    opath = override.override_path(sdir)
    if overrides is None:
        try:
            overrides = read_overrides(opath)
        except ConfigError:
            if state_dir_problem(sdir) is None:
                raise
            overrides = {}  # an unusable state dir: check_runnable() names storage.dir, not the file in it
    if not overrides:
        return parse(data, str(p), text, env)
    problems = override.apply(data, overrides)
    if problems:
        raise ConfigError(str(opath), problems)
    try:
        cfg = parse(data, str(p), text + override.dump(overrides), env)
    except ConfigError as e:  # the problem may be an overridden value: say where those come from
        raise ConfigError(f"{p} with {opath} ({', '.join(sorted(overrides))})", e.errors) from None
    return dataclasses.replace(cfg, overrides=tuple(sorted(overrides)), override_source=str(opath))


def read_overrides(path: Path) -> dict[str, Any]:
    """The changes in an override file ({} when there is none); ConfigError naming it when it is bad."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise ConfigError(str(path), [f"cannot read the override file: {e}"]) from None
    try:
        return override.changes_from_document(parse_toml(text, str(path)))
    except override.OverrideProblem as e:
        raise ConfigError(str(path), [str(e)]) from None


def check_runnable(cfg: Config) -> Config:
    """``cfg`` if ``run`` can use what it names on this machine (the state directory), else ConfigError
    naming the key. ``run`` and ``check-config`` call it; readers (``outbox stats``, ``tail``) do not."""
    problem = state_dir_problem(cfg.storage.dir)
    if problem is not None:
        raise ConfigError(cfg.source or "<memory>", [f"storage.dir: {problem}"])
    return cfg


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top; tables are merged key by key, other values replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def build(overrides: Mapping[str, Any], base_text: str | None = None, source: str = "<overrides>",
          env: Mapping[str, str] | None = None) -> Config:
    """A Config from ``base_text`` (TOML, optional) with ``overrides`` (a document of the same shape,
    e.g. ``{"device": {"id": "123"}}``) merged in before validation."""
    data = parse_toml(base_text, source) if base_text is not None else {}
    return parse(merge(data, overrides), source, base_text or "", env)


def _defaults(cfg: Config, source: str, text: str, env: Mapping[str, str]) -> Config:
    device = cfg.device
    if not device.id:
        device = dataclasses.replace(device, id=default_device_id())
        problem = ids.id_problem(device.id, device=True)
        if problem is not None:
            raise ConfigError(source, [f"device.id: not set, and the host name gives {problem}; set device.id"])
    storage = cfg.storage if cfg.storage.dir else dataclasses.replace(cfg.storage, dir=default_state_dir(env))
    mqtt = cfg.mqtt
    if not mqtt.client_id:
        mqtt = dataclasses.replace(mqtt, client_id=f"edge-agent-{device.id}")
    return dataclasses.replace(cfg, device=device, storage=storage, mqtt=mqtt, source=source,
                               text_hash=hashlib.sha256(text.encode()).hexdigest()[:16])
