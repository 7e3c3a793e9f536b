"""User commands: the decorator, an entry point from an installed distribution, schemas, the CLI's watch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.commands import Arg, CommandError, Registry, Schema
from edge_agent.commands.signing import Signer, allowed, canonical
from tests.commands.conftest import Requester, key_snippet
from tests.helpers import ROOT

EP_MODULE = '''
from edge_agent.commands import Arg

def register(registry):
    registry.add("plugin.add", lambda ctx, a, b: {"sum": a + b}, {"a": Arg("int", required=True),
                                                                 "b": Arg("int", required=True)})
'''


def test_entry_point_command(make_app, requester: Requester, signer: Signer, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    (site / "ea_plugin_demo-1.0.dist-info").mkdir(parents=True)
    (site / "ea_plugin_demo.py").write_text(EP_MODULE)
    (site / "ea_plugin_demo-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ea-plugin-demo\n"
                                                                    "Version: 1.0\n")
    (site / "ea_plugin_demo-1.0.dist-info" / "entry_points.txt").write_text(
        "[edge_agent.commands]\ndemo = ea_plugin_demo:register\n")
    monkeypatch.syspath_prepend(str(site))
    make_app(keys=key_snippet(signer))
    rep = requester.request("edge/dev-1/cmd/plugin.add", signer.sign("device", "dev-1", "plugin.add",
                                                                      {"a": 2, "b": 3}))
    assert rep["status"] == "ok" and rep["result"] == {"sum": 5}
    rep = requester.request("edge/dev-1/cmd/plugin.add", signer.sign("device", "dev-1", "plugin.add", {"a": 2}))
    assert rep["error"]["code"] == "bad_args"


def test_registry_and_schema_rules() -> None:
    reg = Registry()
    reg.add("x.y", lambda ctx: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("x.y", lambda ctx: 2)
    for bad in ("X", "a/b", "a+b", "a#", "", "a..b", "a" * 65):
        with pytest.raises(ValueError, match="not allowed"):
            reg.add(bad, lambda ctx: 1)
    s = Schema({"n": Arg("int", ge=1, le=5), "t": Arg("str", choices=("a", "b")), "f": Arg("float", default=1.5),
                "flag": Arg("bool")})
    assert s.validate({"n": 2}) == {"n": 2, "f": 1.5}
    assert s.validate({"f": 2}) == {"f": 2.0}
    for args, msg in (({"n": True}, "got bool"), ({"n": 9}, "<= 5"), ({"t": "c"}, "one of"),
                      ({"flag": 1}, "must be bool"), ({"zz": 1}, "unknown argument"), ([1], "must be a map"),
                      ({"f": float("nan")}, "NaN")):
        with pytest.raises(CommandError, match=msg):
            s.validate(args)


def test_signing_canonical_is_order_independent_and_target_bound() -> None:
    a = canonical("device", "d", "1", "n", {"b": 1, "a": {"y": 2, "x": 1}}, 1.0, 2.0)
    b = canonical("device", "d", "1", "n", {"a": {"x": 1, "y": 2}, "b": 1}, 1.0, 2.0)
    assert a == b
    assert a != canonical("group", "d", "1", "n", {"b": 1, "a": {"y": 2, "x": 1}}, 1.0, 2.0)
    assert allowed(["config.*"], "config.set") and not allowed(["config.*"], "configure")
    assert allowed(["*"], "anything") and not allowed(["ping"], "status")


def test_keys_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "k"
    run = [sys.executable, "-m", "edge_agent", "keys", "generate", "--out", str(key)]
    assert subprocess.run(run, capture_output=True, cwd=ROOT).returncode == 0
    first = key.read_text()
    r = subprocess.run(run, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "exists" in r.stderr and key.read_text() == first
    Signer.load(key)
    key.write_text("garbage")
    with pytest.raises(ValueError, match="not a base64"):
        Signer.load(key)


def test_ctl_watch_shows_decoded_telemetry(make_app, broker, tmp_path: Path) -> None:
    make_app()
    op = tmp_path / "op.toml"
    op.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[storage]\ndir = "{tmp_path / "op"}"\n')
    out = subprocess.run([sys.executable, "-m", "edge_agent", "ctl", "watch", "--config", str(op), "--group", "lab",
                          "--count", "3", "--seconds", "20"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ}, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and any("edge/dev-1/telemetry/s1" in ln and "seq=" in ln for ln in lines), lines
