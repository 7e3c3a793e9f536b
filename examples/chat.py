#!/usr/bin/env python3
"""Two terminals chatting through edge-agent, as in the classic messaging-SDK tutorial.

Terminal 1::

    python examples/chat.py --me 123 --peer 456 --port 1883

Terminal 2::

    python examples/chat.py --me 456 --peer 123 --port 1883

Type a line and press Enter to send it. Incoming messages print as ``456: text`` and are marked read
as they are shown (so the other side sees "read"); the status of each message you send prints as it
changes: queued (stored in the local outbox), sent (the broker has it), delivered (the other agent
stored it), read. Messages sent while the other side is offline are delivered when it comes back.
``/history`` prints the conversation so far from the local history, ``/quit`` (or Ctrl-D) leaves.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from edge_agent import Agent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--me", required=True, help="my id, e.g. 123")
    p.add_argument("--peer", required=True, help="who I talk to, e.g. 456")
    p.add_argument("--config", help="an edge-agent config file (broker, TLS...); --host/--port override it")
    p.add_argument("--host", default=None, help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="broker port (default 1883)")
    p.add_argument("--state-dir", default=None, help="where my outbox and history live (default ./chat-<me>)")
    p.add_argument("--linger", type=float, default=2.0, help="seconds to wait for statuses after Ctrl-D")
    args = p.parse_args(argv)

    state = args.state_dir or str(Path.cwd() / f"chat-{args.me}")
    agent = Agent(args.config, device_id=args.me, host=args.host or (None if args.config else "127.0.0.1"),
                  port=args.port, state_dir=state,
                  settings={"mqtt": {"reconnect_min": 0.2, "reconnect_max": 5.0}, "agent": {"stop_timeout": 2.0}})

    printing = threading.Lock()

    def out(line: str) -> None:
        # callbacks run on the agent's threads: one write per line, one writer at a time, so a status
        # never lands in the middle of another line
        with printing:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    @agent.on_connection_status
    def connection(st):  # type: ignore[no-untyped-def]
        out(f"* {st.state}" + (f": {st.reason}" if st.state in ("offline", "auth_failed") else ""))

    @agent.on_message
    def incoming(msg):  # type: ignore[no-untyped-def]
        if msg.group or msg.kind == "stream":
            return
        text = msg.data.get("text") if isinstance(msg.data, dict) else msg.data
        out(f"{msg.sender}: {text}")
        agent.mark_read([msg])

    @agent.on_message_status
    def status(msg):  # type: ignore[no-untyped-def]
        if msg.status != "pending":
            out(f"  [{msg.id}] {msg.status}" + (f" ({msg.reason})" if msg.reason else ""))

    with agent:
        out(f"chat: {args.me} -> {args.peer} via {agent.cfg.mqtt.host}:{agent.cfg.mqtt.port}; "
            "type a message and press Enter (/history, /quit)")
        last = None
        for line in sys.stdin:
            text = line.rstrip("\n")
            if not text:
                continue
            if text == "/quit":
                break
            if text == "/history":
                for m in agent.history(peer=args.peer, limit=20, newest_first=True):
                    who = "me" if m.outgoing else m.sender
                    body = m.data.get("text") if isinstance(m.data, dict) else m.data
                    out(f"  {time.strftime('%H:%M:%S', time.localtime(m.ts))} {who}: {body} ({m.status})")
                continue
            last = agent.send(args.peer, {"text": text})
            out(f"  [{last.id}] you: {text}")
        if last is not None:
            try:
                agent.wait_status(last, "read", timeout=args.linger)
            except TimeoutError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
