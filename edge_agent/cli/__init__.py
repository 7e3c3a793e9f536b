"""The ``edge-agent`` command line: :mod:`.main` (parser, ``main()``, the agent's own sub-commands),
:mod:`.ctl` and :mod:`.sender` (the operator's keys and commands), :mod:`.messages` (the local message
history), :mod:`.display` (how things are shown).

``edge_agent.cli:main`` stays importable; the entry point is ``edge_agent.cli.main:main``.
"""

from edge_agent.cli.display import format_envelope
from edge_agent.cli.main import build_parser, main, tail

__all__ = ["build_parser", "format_envelope", "main", "tail"]
