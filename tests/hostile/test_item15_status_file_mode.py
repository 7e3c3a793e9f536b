"""Issue 14 item 15: ``RuntimeDirectoryMode=0755`` left ``status.json`` (backlog, pid, state) readable by
every local user. The unit now makes the runtime directory 0750, and the agent writes the file 0640
whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.deploy.test_unit import unit_sections
from tests.helpers import wait_for


def test_unit_runtime_directory_is_not_world_readable() -> None:
    svc = unit_sections()["Service"]
    assert svc["RuntimeDirectoryMode"] == "0750" and svc["StateDirectoryMode"] == "0750"
    assert int(svc["UMask"], 8) & 0o007 == 0o007


def test_status_json_is_0640_whatever_the_umask(make_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(run))
    old = os.umask(0)
    try:
        make_app()
        wait_for(lambda: (run / "status.json").exists(), 10, msg="status.json written")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((run / "status.json").stat().st_mode)
    assert mode == 0o640, oct(mode)
