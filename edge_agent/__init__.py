"""edge-agent: a reliable real-time edge node."""

__version__ = "0.1.0"
