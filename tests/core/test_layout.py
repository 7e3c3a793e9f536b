"""Structural rules of the package: one TOML parser, one id rule, no hidden import circles in the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "edge_agent"


def _sources() -> dict[str, str]:
    return {p.relative_to(PKG).as_posix(): p.read_text(encoding="utf-8") for p in sorted(PKG.rglob("*.py"))}


def test_toml_is_parsed_only_in_config_load() -> None:
    users = sorted(name for name, text in _sources().items() if "tomllib" in text)
    assert users == ["config/load.py"], users


def test_the_id_rule_is_written_once() -> None:
    """Every id check goes through edge_agent.ids (a copy of the character class is a second rule)."""
    copies = sorted(name for name, text in _sources().items() if "A-Za-z0-9][A-Za-z0-9_.:-" in text)
    assert copies == ["ids.py"], copies


def test_no_dollar_anchored_match() -> None:
    """``$`` also matches before a trailing newline, so ``re.match(r"^...$", "abc\\n")`` succeeds: a pattern
    ending in ``$`` is only ever used with fullmatch (or, better, the check is edge_agent.ids)."""
    bad = []
    for name, text in _sources().items():
        bad += [f"{name}: {m.group(0)}" for m in re.finditer(r"""re\.(?:match|search)\(r?["'][^"']*\$["']""", text)]
        for m in re.finditer(r"""(\w+) = re\.compile\(r?["'][^"']*\$["']""", text):
            bad += [f"{name}: {m.group(1)}.{how}(" for how in ("match", "search") if f"{m.group(1)}.{how}(" in text]
    assert not bad, bad


def test_cli_imports_plainly_and_python_m_works() -> None:
    for name in ("cli/main.py", "cli/ctl.py", "cli/messages.py", "cli/display.py"):
        assert "importlib" not in _sources()[name], name
    code = ("import edge_agent.cli.display, edge_agent.cli.ctl, edge_agent.cli.messages, edge_agent.cli.main;"
            "from edge_agent.cli import main; from edge_agent.cli.main import main as m2; assert main is m2")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PKG.parent, timeout=60)
    r = subprocess.run([sys.executable, "-m", "edge_agent", "--help"], capture_output=True, text=True,
                       cwd=PKG.parent, timeout=60)
    assert r.returncode == 0 and "ctl" in r.stdout and "messages" in r.stdout


def test_no_merge_conflict_markers_are_left_in_the_tree() -> None:
    """A merge once left ``<<<<<<< HEAD`` blocks in docs/messaging.md and docs/reliability.md."""
    root = PKG.parent
    out = subprocess.run(["git", "-C", str(root), "grep", "-nE", "^(<<<<<<< |>>>>>>> )", "--", ".",
                          ":!docs/wip"], capture_output=True, text=True)
    if out.returncode == 128:  # not a git checkout (e.g. an sdist): nothing to check
        return
    assert out.stdout == "", out.stdout
