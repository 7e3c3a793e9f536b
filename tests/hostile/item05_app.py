"""An app around Agent run as a child process by test_item05_ids_after_crash.py, so it can be SIGKILLed.

Modes: ``send`` puts messages and says their ids at once (before the outbox's group commit, which is made
slow here: commit_interval 5 s); ``file`` sends a file and says QUEUED when its status says so; ``check``
registers the callbacks before start, says the statuses the history holds, sends one new message and reports
every status it sees."""

from __future__ import annotations

import argparse
import sys
import threading

from edge_agent import Agent

_out = threading.Lock()


def say(line: str) -> None:
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("send", "file", "check"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--file", default="")
    p.add_argument("--storage-mode", default="write_behind", choices=("write_behind", "durable"))
    args = p.parse_args()
    agent = Agent(device_id="crasher-5", host="127.0.0.1", port=args.port, state_dir=args.state,
                  settings={"mqtt": {"reconnect_min": 0.1, "reconnect_max": 0.5},
                            "storage": {"commit_interval": 5.0, "mode": args.storage_mode}})
    agent.on_message_status(lambda m: say(f"STATUS {m.id} {m.status} {m.reason}"))
    agent.start()
    if args.mode == "send":
        say("SENT " + " ".join(agent.send("peer-5", {"n": i}).id for i in range(5)))
    elif args.mode == "file":
        m = agent.send_file("peer-5", args.file)
        agent.wait_status(m, "queued", timeout=60)
        say(f"QUEUED {m.id}")
    else:
        say("HAVE " + " ".join(f"{m.id}={m.status}" for m in agent.history()))  # e.g. sent before the kill
        say(f"NEW {agent.send('peer-5', {'n': 'new'}).id}")
    threading.Event().wait()  # until killed
    return 0


if __name__ == "__main__":
    sys.exit(main())
