"""Real-time messaging for Python apps: the messaging service and the local history.

The Agent API is ``from edge_agent import Agent`` (:mod:`edge_agent.agent`). Imports are lazy so that
``import edge_agent`` (and the daemon without messaging) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Message"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edge_agent.messaging import history

        return getattr(history, name)
    raise AttributeError(f"module 'edge_agent.messaging' has no attribute {name!r}")
