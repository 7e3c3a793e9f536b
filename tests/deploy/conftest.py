from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel . -w wheelhouse``: the agent and every dependency, for offline installs by the role."""
    wh = tmp_path_factory.mktemp("wheelhouse")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", str(ROOT),
                        "-w", str(wh)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(wh.glob("edge_agent-*.whl")), "no edge-agent wheel built"
    print(f"wheelhouse built in {time.monotonic() - t0:.1f} s: {len(list(wh.glob('*.whl')))} wheels")
    return wh
