from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.devbroker import DevBroker
from tests.helpers import start_or_skip


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DevBroker]:
    """A real mosquitto on a free port, private to the test."""
    b = start_or_skip(DevBroker(workdir=tmp_path / "broker").start)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(autouse=True)
def _mock_pins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """gpiozero's own MockFactory for every test; the global factory is restored afterwards."""
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    yield
    try:
        from gpiozero import Device

        if Device.pin_factory is not None:
            Device.pin_factory.reset()
    except Exception:
        pass
