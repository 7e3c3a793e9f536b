"""Exceptions. Each also subclasses the builtin a caller would naturally catch (as gpiozero does)."""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of every edge-agent error."""


class ConfigError(EdgeAgentError, ValueError):
    """The config is invalid. ``errors`` lists every problem as 'key.path: why'."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__(f"{source}: " + "; ".join(self.errors))


class StartError(EdgeAgentError, RuntimeError):
    """The agent cannot start: a part it needs failed to open (the message names it)."""


class OutboxError(EdgeAgentError, OSError):
    """The outbox database cannot be used."""


class OutboxClosed(OutboxError):
    """put() after close()."""


class TransportError(EdgeAgentError, ConnectionError):
    """The MQTT transport failed."""


class NotConnected(TransportError):
    """Publish attempted while the broker connection is down."""


class PublishRefused(TransportError):
    """paho refused a publish (return code given)."""


class WindowFull(PublishRefused):
    """As many QoS>0 messages as the broker allows (Receive Maximum) already await their PUBACK."""


class AuthError(TransportError, PermissionError):
    """The broker refused our credentials."""


class SensorError(EdgeAgentError, IOError):
    """A sensor could not be read (the agent retries with backoff)."""


class PinError(EdgeAgentError, RuntimeError):
    """A GPIO pin is busy, missing, or not permitted."""


class DecodeError(EdgeAgentError, ValueError):
    """A payload could not be decoded within the limits."""


class ModelError(EdgeAgentError, ValueError):
    """A model cannot be loaded or does not match its config/metadata."""


class RuntimeUnavailable(ModelError, ImportError):
    """No TFLite runtime can be imported on this platform."""


class CommandError(EdgeAgentError, ValueError):
    """A command is refused; ``code`` is the machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")
