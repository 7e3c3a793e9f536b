"""A tiny app around Agent, run as a child process by test_crash.py so it can be SIGKILLed for real."""

from __future__ import annotations

import argparse
import sys
import threading

from edge_agent import Agent

_out = threading.Lock()


def say(line: str) -> None:
    """One whole line per write: the callback thread and the main thread both print."""
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("send", "recv"))
    p.add_argument("--dev", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--to", default="")
    p.add_argument("--count", type=int, default=20)
    args = p.parse_args()
    agent = Agent(device_id=args.dev, host="127.0.0.1", port=args.port, state_dir=args.state,
                  settings={"mqtt": {"reconnect_min": 0.1, "reconnect_max": 0.5}})
    if args.mode == "recv":
        @agent.on_message
        def got(msg):  # type: ignore[no-untyped-def]
            say(f"GOT {msg.id} {msg.data['n']}")
            agent.mark_read([msg])
    agent.start()
    if args.mode == "send":
        msgs = [agent.send(args.to, {"n": i}) for i in range(args.count)]
        for m in msgs:
            agent.wait_status(m, "queued", timeout=30)
        say("QUEUED " + " ".join(m.id for m in msgs))
    else:
        say("READY")
    threading.Event().wait()  # until killed
    return 0


if __name__ == "__main__":
    sys.exit(main())
