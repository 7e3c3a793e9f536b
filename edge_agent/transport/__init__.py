"""Transports. Only :mod:`edge_agent.transport.mqtt` imports paho; :mod:`topics` is pure."""
