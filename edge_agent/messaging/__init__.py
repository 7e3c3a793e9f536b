"""Real-time messaging for Python apps: the Agent API, the messaging service, the local history.

Imports are lazy so that ``import edge_agent`` (and the daemon without messaging) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Agent", "AsyncAgent", "Message"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edge_agent.messaging import agent

        return getattr(agent, name)
    raise AttributeError(f"module 'edge_agent.messaging' has no attribute {name!r}")
