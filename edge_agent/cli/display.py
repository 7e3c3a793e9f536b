"""How the command line shows things: decoded envelopes, config errors, JSON of odd values."""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any, TextIO

from edge_agent import codec
from edge_agent.errors import ConfigError


def format_envelope(topic: str, payload: bytes) -> str:
    """One line for a message seen on the broker: ``HH:MM:SS  topic  seq=N  data`` for an envelope,
    else the topic and the payload as text (or its size)."""
    try:
        env = codec.decode(payload)
    except Exception:
        try:
            return f"{topic}  {payload.decode()}"
        except UnicodeDecodeError:
            return f"{topic}  <{len(payload)} bytes>"
    if isinstance(env, dict) and "seq" in env:
        ts = time.strftime("%H:%M:%S", time.localtime(env.get("ts", 0)))
        return f"{ts}  {topic}  seq={env['seq']}  {json.dumps(env.get('data'), default=repr)}"
    return f"{topic}  {json.dumps(env, default=repr)}"


def print_config_errors(err: ConfigError, stream: TextIO | None = None) -> None:
    """Every problem of a config, one per line, each naming the file."""
    stream = stream or sys.stderr
    print(f"config error: {err.source}: {len(err.errors)} problem(s)", file=stream)
    for e in err.errors:
        print(f"  {err.source}: {e}", file=stream)


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for replies: bytes as base64, anything else as its repr."""
    if isinstance(o, bytes):
        return base64.b64encode(o).decode()
    return repr(o)
