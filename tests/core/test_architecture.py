"""The architecture's contracts (docs/architecture.md), checked on every CI run.

- the import layers and forbidden imports of ``.importlinter`` (run through ``lint-imports``);
- no import circles between edge_agent's modules (imports under ``TYPE_CHECKING`` aside);
- no module over 400 lines, no function over 60;
- constructors neither start threads nor touch the disk (``open()``/``start()`` do): statically for every
  ``__init__`` in the package, and at run time for the App and the Agent;
- no object touches another object's private fields: ruff's SLF001 over edge_agent/ (pyproject.toml), run
  by the test command before pytest.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "edge_agent"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> list[tuple[str, str, ast.Module]]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        text = p.read_text(encoding="utf-8")
        out.append((p.relative_to(ROOT).as_posix(), text, ast.parse(text)))
    return out


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    assert Path(exe).exists(), "import-linter is not installed: pip install -e '.[test]'"
    r = subprocess.run([exe, str(ROOT / ".importlinter"), "--no-cache"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and "0 broken" in r.stdout, r.stdout[-4000:]


def test_no_import_circles() -> None:
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter")
    graph = grimp.build_graph("edge_agent", exclude_type_checking_imports=True)
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i != m} for m in graph.modules}
    # Tarjan's strongly connected components: any component of more than one module is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for m in sorted(edges):
        if m not in index:
            visit(m)
    # a package's __init__ re-exporting its own submodules is not a circle of design
    circles = [c for c in circles if not _only_package_reexports(c)]
    assert not circles, circles


def _only_package_reexports(comp: list[str]) -> bool:
    return all(any(other.startswith(m + ".") or m.startswith(other + ".") for other in comp if other != m)
               for m in comp) and len({c.split(".")[1] for c in comp if "." in c}) == 1


def test_module_and_function_sizes() -> None:
    too_big = []
    for name, text, tree in _modules():
        n = text.count("\n")
        if n > MAX_MODULE_LINES:
            too_big.append(f"{name}: {n} lines (max {MAX_MODULE_LINES})")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{name}:{node.lineno} {node.name}(): {length} lines (max {MAX_FUNCTION_LINES})")
    assert not too_big, "\n".join(too_big)


# calls a constructor must not make: starting threads or processes, writing files, opening databases
# (making a Thread object or an unconnected socket is fine: start()/open() use them)
_FORBIDDEN_IN_INIT = {"start", "connect", "mkdir", "makedirs", "write_text", "write_bytes", "atomic_write",
                      "touch", "open", "Popen", "run"}


def test_constructors_start_no_threads_and_write_nothing_static() -> None:
    bad = []
    for name, _text, tree in _modules():
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
            for fn in cls.body:
                if not (isinstance(fn, ast.FunctionDef) and fn.name == "__init__"):
                    continue
                for call in [n for n in ast.walk(fn) if isinstance(n, ast.Call)]:
                    f = call.func
                    called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                    if called in _FORBIDDEN_IN_INIT:
                        bad.append(f"{name}:{call.lineno} {cls.name}.__init__ calls {called}()")
    assert not bad, "\n".join(bad)


def _snapshot(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*")} if d.exists() else set()


def test_app_constructor_starts_no_thread_and_writes_nothing(tmp_path: Path) -> None:
    from edge_agent.app import App
    from edge_agent.config import loads

    state = tmp_path / "state"
    cfg = loads(f"""
[device]
id = "arch-1"
[mqtt]
port = 1
[storage]
dir = "{state}"
[[sensors]]
name = "s1"
type = "simulated"
interval = 0.1
""", source="<test>")
    before_threads = {t.ident for t in threading.enumerate()}
    before_files = _snapshot(tmp_path)
    app = App(cfg)
    assert {t.ident for t in threading.enumerate()} == before_threads, "App() started a thread"
    assert _snapshot(tmp_path) == before_files, "App() wrote to disk"
    assert app is not None


def test_ruff_private_member_rule_is_on() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '"SLF"' in text or "'SLF'" in text or "SLF001" in text.split("[tool.ruff.lint]")[1].split("\n[")[0]
    if os.environ.get("CI") or shutil.which("ruff"):
        exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
        r = subprocess.run([exe, "check", "--select", "SLF001", str(PKG)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-3000:]


def test_every_top_level_module_has_a_layer() -> None:
    """A module missing from the layers contract would be unconstrained: each one is placed."""
    text = (ROOT / ".importlinter").read_text()
    layers = text.split("layers =", 1)[1].split("ignore_imports", 1)[0]
    placed = {w.strip() for line in layers.splitlines() for w in line.replace(":", "|").split("|") if w.strip()}
    tops = {f"edge_agent.{p.stem if p.is_file() else p.name}" for p in PKG.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert tops - placed == set(), f"not in any layer of .importlinter: {sorted(tops - placed)}"
