"""Hostile-input tests (issue 14): the command channel's fixtures (real Mosquitto, real App)."""

from tests.commands.conftest import make_app, requester, signer  # noqa: F401  (fixtures)
