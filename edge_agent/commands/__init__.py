"""Signed, idempotent commands over MQTT 5 request/response (see docs/commands.md).

::

    broker --> MqttTransport --> Router --> CommandService.on_message (network thread: size, decode,
               rate, then admission.py: signature, key allow-list, schema, replay, clock; persist
               'received'; queue)
           --> worker thread (persist 'running'; handler; persist 'done' + result)
           --> Outbox.put(reply) --> Forwarder --> broker (Response Topic + Correlation Data)
"""

from edge_agent.commands.registry import USER, CommandSpec, Registry, command
from edge_agent.commands.schema import Arg, Schema
from edge_agent.errors import CommandError

__all__ = ["USER", "Arg", "CommandError", "CommandSpec", "Registry", "Schema", "command"]
