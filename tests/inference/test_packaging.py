"""The built wheel holds every file the code loads (the suite itself runs from an editable install, which
would never notice a data file left out of the wheel)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from edge_agent.inference.model import BUILTIN_DIR
from tests.inference.conftest import ROOT


def _source_files(under: str = "") -> list[str]:
    """The checkout's files (tracked, or new and not ignored), relative to the root."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", *([under] if under else [])], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"not a git checkout: {out.stderr.strip()}")
    return sorted(p for p in out.stdout.splitlines() if (ROOT / p).is_file())


def _package_data() -> list[str]:
    """Every file under edge_agent/ that is not Python source: what the code reads at run time."""
    return [p for p in _source_files("edge_agent") if not p.endswith(".py")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """A wheel built from a clean copy of the source (a stale build/ in the checkout could hide a gap)."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for p in _source_files():
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / p, src / p)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"pip wheel failed:\n{r.stdout}\n{r.stderr}"
    (whl,) = dist.glob("edge_agent-*.whl")
    return zipfile.ZipFile(whl)


def test_wheel_has_every_data_file_the_code_loads(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    data = _package_data()
    shipped = sorted(str(p.relative_to(ROOT)) for p in BUILTIN_DIR.iterdir())
    assert any(p.endswith(".tflite") for p in shipped) and any(p.endswith(".tflite.json") for p in shipped)
    assert set(shipped) <= set(data), "every builtin model is tracked by git"
    missing = [p for p in data if p not in names]
    assert not missing, f"the wheel lacks {missing}: add them to [tool.setuptools.package-data] in pyproject.toml"
    for p in shipped:
        assert wheel.read(p) == (ROOT / p).read_bytes(), f"{p} differs in the wheel"
