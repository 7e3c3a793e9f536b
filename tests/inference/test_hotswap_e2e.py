"""Hot-swap end to end: a signed, chunked ``model.update`` over a real broker replaces the running model
between windows; ``model.rollback`` restores it; a bad model is refused and the old one keeps running."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import config as config_mod
from edge_agent.app import App
from edge_agent.commands.signing import Signer
from tests.commands.conftest import Requester, agent_config, key_snippet
from tests.helpers import Collector, wait_for
from tests.inference.conftest import model_files, scale

T = "edge/dev-1/cmd/"


@pytest.fixture
def requester(broker: Any) -> Iterator[Requester]:
    r = Requester(broker.port).start()
    yield r
    r.stop()


def _update(req: Requester, signer: Signer, blob: bytes, meta: dict[str, Any], transfer: str,
            chunk: int = 2000) -> dict[str, Any]:
    parts = [blob[i:i + chunk] for i in range(0, len(blob), chunk)]
    digest = hashlib.sha256(blob).hexdigest()
    rep: dict[str, Any] = {}
    for i, part in enumerate(parts):
        args = {"model": "m", "transfer": transfer, "index": i, "total": len(parts), "data": part, "sha256": digest}
        if i == 0:
            args["metadata"] = meta
        rep = req.request(T + "model.update", signer.sign("device", "dev-1", "model.update", args), timeout=30)
        assert rep["status"] in ("ok", "error"), rep
    return rep


def test_model_update_and_rollback_over_the_command_channel(broker: Any, tmp_path: Path, requester: Requester
                                                           ) -> None:
    signer = Signer.generate()
    live, _, _ = model_files(tmp_path / "models", scale(0.0), n_in=8, version="1")
    extra = f"""
[[models]]
name = "m"
path = "{live}"
inputs = ["s1"]
window = 8
queue = 1000
"""
    cfgp = agent_config(tmp_path / "c.toml", broker.port, tmp_path / "state", keys=key_snippet(signer),
                        sensors=False, extra='[[sensors]]\nname = "s1"\ntype = "simulated"\ninterval = 0.005\n'
                        + extra)
    app = App(config_mod.load(cfgp))
    with Collector(broker.port, "edge/dev-1/inference/#") as col:
        app.start()
        try:
            assert app.transport.wait_online(10)
            time.sleep(0.2)
            wait_for(lambda: col.count() >= 3, 20, msg="v1 results")
            _, blob2, meta2 = model_files(tmp_path / "v2", scale(1.0), n_in=8, version="2")
            rep = _update(requester, signer, blob2, meta2, "t-v2", chunk=1500)
            assert rep["status"] == "ok" and rep["result"]["version"] == "2" and rep["result"]["previous"] == "1"
            wait_for(lambda: any(e["data"]["version"] == "2" for e in list(col.envelopes)), 20, msg="v2 results")
            # a model for another window length is refused; v2 keeps running
            _, bad, bad_meta = model_files(tmp_path / "bad", scale(1.0), n_in=16, version="3")
            rep = _update(requester, signer, bad, bad_meta, "t-bad")
            assert rep["status"] == "error" and rep["error"]["code"] == "install_failed"
            assert "does not fit the config" in rep["error"]["message"]
            assert app.service("inference").describe()[0]["version"] == "2"
            rep = requester.request(T + "model.rollback", signer.sign("device", "dev-1", "model.rollback",
                                                                      {"model": "m"}))
            assert rep["status"] == "ok" and rep["result"]["version"] == "1", rep
            n = col.count()
            wait_for(lambda: col.count() >= n + 3, 20, msg="results after rollback")
        finally:
            app.stop()
        with col.lock:
            versions = [e["data"]["version"] for e in col.envelopes]
            seqs = [tuple(e["data"]["seq"]) for e in col.envelopes]
    runs = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
    assert runs == ["1", "2", "1"]
    assert live.read_bytes() != blob2 and live.with_name(live.name + ".rolledback").read_bytes() == blob2
    # no window overlaps another, and every window cut was run (none skipped or dropped by the swaps)
    ordered = sorted(seqs)
    assert all(b[0] > a[1] for a, b in itertools.pairwise(ordered))
    res = app.service("inference").describe()[0]
    assert res["windows_skipped"] == 0 and res["errors"] == 0 and res["windows_cut"] == res["windows_run"]
