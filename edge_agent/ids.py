"""The one id rule: device ids, groups, sensor/output/model names, topic prefix, command ids, message peers.

An id is one MQTT topic level that is safe to embed anywhere: 1-64 characters, letters, digits and
``. _ : -``, starting with a letter or digit. It is checked with :func:`re.fullmatch`, never with a
``$``-anchored :func:`re.match` (``$`` also matches before a trailing newline, so ``"abc\\n"`` passed and
split log lines and topics).

Device ids ``all`` and ``group`` are reserved: ``<prefix>/all/cmd/...`` addresses the whole fleet and
``<prefix>/group/<g>/...`` a group, so a device with either id would receive what is not meant for it.
"""

from __future__ import annotations

import re
from typing import Any

#: The rule as a pattern, anchored with ``\A``/``\Z`` (not ``^``/``$``) so that even ``re.match`` and
#: ``re.search`` test the whole string; :data:`ID_RE` is the compiled form.
ID_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z"
ID_RE = re.compile(ID_PATTERN)
ID_RULE = "letters, digits and . _ : - (no '/', '+', '#', spaces), starting with a letter or digit, 1-64 characters"
RESERVED_DEVICE_IDS = frozenset({"all", "group"})

__all__ = ["ID_PATTERN", "ID_RE", "ID_RULE", "RESERVED_DEVICE_IDS", "check_device_id", "check_id", "id_problem",
           "is_device_id", "is_id"]


def is_id(value: Any) -> bool:
    """True when ``value`` is a str following the id rule (the whole string: no trailing newline)."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def is_device_id(value: Any) -> bool:
    """An id that is not one of the reserved topic levels ``all`` and ``group``."""
    return is_id(value) and value not in RESERVED_DEVICE_IDS


def id_problem(value: Any, *, device: bool = False) -> str | None:
    """Why ``value`` is not an id (a device id when ``device``), or None when it is one."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__} {value!r}"
    if ID_RE.fullmatch(value) is None:
        return f"{value!r} is not allowed: {ID_RULE}"
    if device and value in RESERVED_DEVICE_IDS:
        return (f"{value!r} is reserved: '<prefix>/all/cmd/...' addresses every device and "
                "'<prefix>/group/<group>/...' a group, so no device may be called 'all' or 'group'")
    return None


def check_id(value: Any, what: str) -> str:
    """Return ``value`` if it is an id, else raise ValueError naming ``what`` and why."""
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(f"{what}: {problem}")
    return str(value)


def check_device_id(value: Any, what: str = "device id") -> str:
    """:func:`check_id` that also refuses the reserved ids ``all`` and ``group``."""
    problem = id_problem(value, device=True)
    if problem is not None:
        raise ValueError(f"{what}: {problem}")
    return str(value)
