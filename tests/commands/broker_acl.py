"""The broker ACL documented in docs/commands.md, read from the docs so that the tests check what users copy."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"
MARK = "# /etc/mosquitto/acl"


def docs_acl() -> str:
    """The fenced block that starts with ``# /etc/mosquitto/acl`` in docs/commands.md."""
    text = DOC.read_text()
    start = text.index(MARK)
    return text[start:text.index("```", start)]
