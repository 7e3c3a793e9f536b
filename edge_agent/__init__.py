"""edge-agent: a reliable real-time edge node."""

from edge_agent.version import __version__

__all__ = ["Agent", "AsyncAgent", "__version__"]


def __getattr__(name: str) -> object:
    """``from edge_agent import Agent`` without importing paho/SQLite for every ``import edge_agent``."""
    if name in ("Agent", "AsyncAgent"):
        from edge_agent import agent  # the one upward import: the facade sits above App

        return getattr(agent, name)
    raise AttributeError(f"module 'edge_agent' has no attribute {name!r}")
