"""``edge-agent messages [filters] [--summary] [--json]``: read the local message history.

Opens ``history.db`` read-only, so it is safe while the agent (or an app using Agent) runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent import config as config_mod
from edge_agent.messaging.history import HISTORY_FILE, History, HistoryError, Message


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser("messages", help="show the local message history (sent and received)",
                        description="Messages sent and received by this device, oldest first (filters combine).")
    sp.add_argument("--config", "-c", help="config file (default: $EDGE_AGENT_CONFIG, /etc/edge-agent/config.toml, "
                    "or the user config dir)")
    sp.add_argument("--peer", help="direct conversation with this device/app")
    sp.add_argument("--group", help="messages of this group")
    sp.add_argument("--stream", help="telemetry-style stream, e.g. inference/m1")
    sp.add_argument("--sender", help="messages from this device")
    sp.add_argument("--since", help="epoch seconds, ISO date/time, or an age such as 30m, 2h, 3d")
    sp.add_argument("--until", help="same forms as --since")
    sp.add_argument("--search", help="full-text search (words; word* for a prefix)")
    sp.add_argument("--unread", action="store_true", help="only received messages not yet read")
    sp.add_argument("--kind", choices=("msg", "file", "stream"), help="only messages, files or stream messages")
    sp.add_argument("--limit", type=int, default=50, help="at most this many (default 50; 0 = all)")
    sp.add_argument("--newest-first", action="store_true", help="newest first (default: the newest N, oldest first)")
    sp.add_argument("--summary", action="store_true", help="last message and unread count per conversation")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(fn=cmd_messages)


def _fmt_data(m: Message) -> str:
    if m.kind == "file" and isinstance(m.data, dict):
        return f"[file {m.data.get('name')} {m.data.get('size')} B]"
    if isinstance(m.data, str):
        return m.data
    return json.dumps(m.data, default=lambda o: f"<{len(o)} bytes>" if isinstance(o, bytes) else repr(o))


def _line(m: Message) -> str:
    ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.ts))
    where = f"group {m.group}" if m.group else (f"stream {m.stream}" if m.kind == "stream" else f"peer {m.to}")
    arrow = f"-> {where}" if m.outgoing else f"<- {m.sender}" + (f" ({where})" if m.group or m.kind == "stream" else "")
    return f"{ts}  {m.id:<16} {arrow:<28} {m.status:<9} {_fmt_data(m)}"


def cmd_messages(args: argparse.Namespace) -> int:
    from edge_agent.messaging.service import json_safe

    cfg = config_mod.load(args.config)
    path = Path(cfg.storage.dir) / HISTORY_FILE
    try:
        h = History(path, readonly=True)
    except HistoryError as e:
        print(f"edge-agent messages: {e}", file=sys.stderr)
        return 66
    out: list[Any]
    try:
        if args.summary:
            out = h.summary()
            for s in out:
                if args.json:
                    print(json.dumps(json_safe(s.as_dict()), default=repr))
                else:
                    print(f"{s.conv:<32} unread {s.unread:<5} {_line(s.last)}")
            return 0
        if args.limit < 0:
            print("edge-agent messages: --limit must be >= 0", file=sys.stderr)
            return 64
        limit = args.limit or None
        rows = list(h.query(peer=args.peer, group=args.group, stream=args.stream, sender=args.sender,
                            since=args.since, until=args.until, search=args.search,
                            unread=True if args.unread else None, kind=args.kind, limit=limit,
                            newest_first=True))
        if not args.newest_first:
            rows.reverse()
        for m in rows:
            print(json.dumps(json_safe(m.as_dict()), default=repr) if args.json else _line(m))
    except HistoryError as e:
        print(f"edge-agent messages: {e}", file=sys.stderr)
        return 64
    finally:
        h.close()
    return 0
