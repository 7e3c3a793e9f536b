"""What the article's three examples (stock_alerts.py, flight_delays.py, chatbot.py) share: printing from
several agents' callback threads, the --broker argument, the vega_datasets data, the "ready" wait and
waiting for group members' receipts.

The examples run as scripts, so this directory is on ``sys.path`` and ``from _article import ...`` works.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from edge_agent import Agent

_print_lock = threading.Lock()


def out(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def broker_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host, int(port)


def vega_data() -> Any:
    """vega_datasets' loaders; the data used here is in the package itself (read locally, never downloaded)."""
    try:
        from vega_datasets import data
    except ImportError:
        raise SystemExit("this example reads its data from the vega_datasets package: "
                         "pip install 'edge-agent[examples]' (or vega_datasets)") from None
    return data


def ready(agent: Agent, timeout: float = 15.0) -> None:
    """Online, and the broker has processed our subscriptions.

    ``wait_online()`` returns once the connection is up, before the broker has acknowledged the
    subscriptions sent with it. A message published after them on the same connection is processed after
    them, so its PUBACK (status "sent") shows they are in place: from then on nothing sent to us is lost.
    """
    if not agent.wait_online(timeout):
        raise SystemExit(f"{agent.device_id}: cannot reach the broker at {agent.cfg.mqtt.host}:{agent.cfg.mqtt.port}")
    agent.wait_status(agent.publish("presence", {"online": True}), "sent", timeout=timeout)


def wait_receipts(agent: Agent, mid: str, want: dict[str, str], timeout: float) -> dict[str, str]:
    """Until each member in ``want`` has at least the status given (delivered < read); returns the receipts."""
    rank = {"delivered": 1, "read": 2}
    deadline = time.monotonic() + timeout
    while True:
        m = agent.message(mid)
        got = dict(m.receipts) if m is not None else {}
        if all(rank.get(got.get(k, ""), 0) >= rank[v] for k, v in want.items()) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)
