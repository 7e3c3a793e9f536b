"""Signed, idempotent commands over MQTT 5 request/response (see docs/commands.md).

::

    broker --> MqttTransport --> CommandService._on_message (network thread: size, decode, rate,
               signature, key allow-list, expiry, replay; persist 'received'; queue)
           --> worker thread (persist 'running'; handler; persist 'done' + result)
           --> Outbox.put(reply) --> Forwarder --> broker (Response Topic + Correlation Data)
"""

from edge_agent.commands.registry import USER, CommandSpec, Registry, command
from edge_agent.commands.schema import Arg, Schema
from edge_agent.errors import CommandError

__all__ = ["USER", "Arg", "CommandError", "CommandSpec", "Registry", "Schema", "command"]
