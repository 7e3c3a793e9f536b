"""The inference service with a real interpreter, a real Pipeline and a real SQLite outbox.

Messages are read back from the outbox, exactly as the forwarder would send them.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.errors import ModelError
from tests.helpers import wait_for
from tests.inference.conftest import Harness, model_cfg, model_files, read_messages, scale, tb


def test_results_and_alarm_messages_with_seq_ranges(tmp_path: Path, harness_factory: Any) -> None:
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=4, mean=0.0, std=1.0, version="7")
    h: Harness = harness_factory([model_cfg(p, window=4, threshold=10.0, alarm="hot")]).start()
    seqs = h.feed([1, 1, 1, 1, 1, 1, 1, 1, 5, 5, 5, 5])
    assert h.service.wait_idle(10)
    res = [e["data"] for e in h.messages("inference/m")]
    assert [r["score"] for r in res] == [1.0, 1.0, 25.0]
    assert [r["seq"] for r in res] == [seqs[0:4:3], seqs[4:8:3], seqs[8:12:3]]
    assert all(r["model"] == "m" and r["version"] == "7" and r["threshold"] == 10.0 for r in res)
    assert [r["alarm"] for r in res] == [False, False, True]
    alarms = h.messages("events/hot")
    assert len(alarms) == 1 and alarms[0]["cls"] == "alarm"
    assert alarms[0]["data"]["seq"] == [seqs[8], seqs[11]] and alarms[0]["data"]["score"] == 25.0
    assert h.messages("inference/")[0]["cls"] == "inference"
    d = h.service.describe()[0]
    assert (d["windows_run"], d["windows_skipped"], d["alarms"], d["last_score"]) == (3, 0, 1, 25.0)


def test_alarm_after_and_rearm_debounce(tmp_path: Path, harness_factory: Any) -> None:
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=1)
    h = harness_factory([model_cfg(p, window=1, threshold=1.0, alarm_after=2, rearm=2, queue=100)]).start()
    # above: 1 0 1 1 1 0 1 0 0 1 1  -> alarms at the 2nd of a pair, re-armed only after 2 below
    h.feed([2, 0, 2, 2, 2, 0, 2, 0, 0, 2, 2])
    assert h.service.wait_idle(10)
    alarms = [e["data"]["seq"][0] for e in h.messages("events/m_anomaly")]
    assert len(alarms) == 2
    assert h.service.describe()[0]["alarms"] == 2


def test_worker_behind_skips_oldest_windows_and_counts_them(tmp_path: Path) -> None:
    """Block the worker on its first publish: the tap must neither block nor queue beyond `queue`."""
    from edge_agent.inference.service import InferenceService
    from edge_agent.outbox import Outbox
    from edge_agent.pipeline import Pipeline

    gate = threading.Event()

    class SlowDownstream(Pipeline):
        def publish(self, stream: str, data: Any, **kw: Any) -> int:
            if stream.startswith("inference/"):
                gate.wait(20)
            return super().publish(stream, data, **kw)

    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=2)
    ob = Outbox(tmp_path / "o.db", "d").open()
    pipe = SlowDownstream(ob, "edge", "d")
    svc = InferenceService([model_cfg(p, window=2, queue=3)], pipe, tmp_path / "state")
    svc.start()
    try:
        from edge_agent.sensors.base import Reading

        t0 = time.monotonic()
        pipe.submit(Reading("s1", 0.0, {"value": 1.0}))
        pipe.submit(Reading("s1", 0.0, {"value": 1.0}))  # window 0 -> worker, blocks in publish
        wait_for(lambda: svc.slots["m"].busy, 10, msg="worker busy")
        for _ in range(20):  # windows 1..10
            pipe.submit(Reading("s1", 0.0, {"value": 1.0}))
        assert time.monotonic() - t0 < 5  # sampling never waited for inference
        slot = svc.slots["m"]
        ring = slot.windower.capacity
        assert slot.windower.cut == 11 and ring == 2 + 2 * 3 + 16  # fixed: window + hop * queue + margin
        gate.set()
        assert svc.wait_idle(10)
        d = svc.describe()[0]
        assert (d["windows_cut"], d["windows_run"], d["windows_skipped"]) == (11, 4, 7)
        assert [r["window"] for r in (e["data"] for e in read_messages(ob, "inference/m"))] == [0, 8, 9, 10]
        for _ in range(3 * ring):  # the ring laps many times while the worker is blocked again
            pipe.submit(Reading("s1", 0.0, {"value": 1.0}))
        assert svc.wait_idle(10)
        d = svc.describe()[0]
        assert d["windows_cut"] == d["windows_run"] + d["windows_skipped"] and d["windows_run"] >= 5
    finally:
        gate.set()
        svc.stop()
        ob.close()


def test_nan_output_is_counted_reported_and_never_published(tmp_path: Path, harness_factory: Any) -> None:
    nan_w = np.full((4, 4), np.nan, np.float32)
    p, _, _ = model_files(tmp_path / "m", [tb.Dense(nan_w, np.zeros(4))], n_in=4)
    h = harness_factory([model_cfg(p, window=4, threshold=0.1)]).start()
    h.feed([1.0] * 12)
    assert h.service.wait_idle(10)
    assert h.messages("inference/") == [] and h.messages("events/m_anomaly") == []
    errs = h.messages("events/inference_error")
    assert len(errs) == 1 and "non-finite" in errs[0]["data"]["error"] and errs[0]["data"]["model"] == "m"
    d = h.service.describe()[0]
    assert (d["errors"], d["windows_run"], d["state"]) == (3, 0, "running")


def test_non_numeric_input_window_is_not_run(tmp_path: Path, harness_factory: Any) -> None:
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=2)
    h = harness_factory([model_cfg(p, window=2)]).start()
    h.feed([1.0, None, 1.0, 1.0, "oops", 2.0])
    assert h.service.wait_idle(10)
    d = h.service.describe()[0]
    assert (d["bad_input"], d["windows_run"], d["errors"]) == (2, 1, 0)


def test_model_failing_at_start_leaves_agent_running(tmp_path: Path, harness_factory: Any) -> None:
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=16)
    good, _, _ = model_files(tmp_path / "g", scale(0.0), n_in=4, name="g")
    h = harness_factory([model_cfg(p, window=8), model_cfg(good, name="g", window=4)]).start()
    h.feed([1.0] * 8)
    assert h.service.wait_idle(10)
    bad, ok = h.service.describe()
    assert bad["state"] == "not loaded" and "does not fit the config" in bad["error"]
    assert ok["windows_run"] == 2
    ev = h.messages("events/model_error")
    assert len(ev) == 1 and ev[0]["data"]["model"] == "m"


# ------------------------------------------------------------------------------------------ hot-swap

def _install_files(tmp: Path, k: float, version: str, n: int = 4, **kw: Any) -> tuple[bytes, dict[str, Any]]:
    _, blob, meta = model_files(tmp / f"v{version}", scale(k), n_in=n, version=version, **kw)
    return blob, meta


def test_bad_models_never_replace_a_working_one(tmp_path: Path, harness_factory: Any) -> None:
    p, blob1, _ = model_files(tmp_path / "live", scale(0.0), n_in=4, version="1")
    h = harness_factory([model_cfg(p, window=4)]).start()
    svc = h.service
    wrong_shape = _install_files(tmp_path, 0.0, "2", n=8)
    with pytest.raises(ModelError, match="does not fit the config"):
        svc.install("m", *wrong_shape)
    blob, meta = _install_files(tmp_path, 0.0, "3")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        svc.install("m", blob + b"\0", meta)
    _, nblob, nmeta = model_files(tmp_path / "nan", [tb.Dense(np.full((4, 4), np.nan), np.zeros(4))], n_in=4,
                                  version="4")
    with pytest.raises(ModelError, match="test invoke on a window at the mean gave non-finite"):
        svc.install("m", nblob, nmeta)
    with pytest.raises(ModelError, match="not a loadable TFLite model"):
        junk = b"\x00" * 64
        svc.install("m", junk, {**meta, "sha256": __import__("hashlib").sha256(junk).hexdigest()})
    with pytest.raises(ModelError, match="version: required"):
        svc.install("m", blob, {k: v for k, v in meta.items() if k != "version"})
    with pytest.raises(ModelError, match="no model named 'nope'"):
        svc.install("nope", blob, meta)
    with pytest.raises(ModelError, match="no previous model"):
        svc.rollback("m")
    assert svc.describe()[0]["version"] == "1"
    assert p.read_bytes() == blob1 and not p.with_name(p.name + ".prev").exists()


def test_hot_swap_and_rollback_under_load_lose_no_sample(tmp_path: Path, harness_factory: Any) -> None:
    """A feeder thread submits readings non-stop while models are installed and rolled back."""
    p, _, _ = model_files(tmp_path / "live", scale(0.0), n_in=4, version="1")
    h = harness_factory([model_cfg(p, window=4, queue=100000)]).start()
    svc = h.service
    stop = threading.Event()
    fed: list[int] = []

    def feeder() -> None:
        i = 0
        while not stop.is_set():
            fed.extend(h.feed([1.0, 2.0, 3.0, 4.0][i % 4: i % 4 + 1]))
            i += 1
            if i % 50 == 0:
                time.sleep(0.001)

    t = threading.Thread(target=feeder)
    t.start()
    try:
        versions = []
        for k, v in ((1.0, "2"), (2.0, "3")):
            time.sleep(0.15)
            versions.append(svc.install("m", *_install_files(tmp_path, k, v))["version"])
        time.sleep(0.15)
        back = svc.rollback("m")
        time.sleep(0.15)
    finally:
        stop.set()
        t.join(10)
    # finish the last partial window so every fed reading is inside one
    fed.extend(h.feed([0.0] * ((-len(fed)) % 4)))
    assert svc.wait_idle(30)
    assert versions == ["2", "3"] and back["version"] == "2" and back["previous"] is None
    res = [e["data"] for e in h.messages("inference/m")]
    covered = [s for r in res for s in fed if r["seq"][0] <= s <= r["seq"][1]]
    assert covered == fed, "every reading is in exactly one processed window"
    d = svc.describe()[0]
    assert d["windows_skipped"] == 0 and d["windows_run"] == len(fed) // 4 == len(res)
    seen = [r["version"] for r in res]
    # the switch happens between windows, in order 1 -> 2 -> 3 -> 2, each version contiguous
    runs = [v for i, v in enumerate(seen) if i == 0 or seen[i - 1] != v]
    assert runs == ["1", "2", "3", "2"]
    # scores match the model that produced them (scale k: MSE = (k-1)^2 * mean(x^2))
    for r in res:
        k = {"1": 0.0, "2": 1.0, "3": 2.0}[r["version"]]
        assert r["score"] == pytest.approx(((k - 1) ** 2) * 7.5 if r["window"] < len(res) - 1 else r["score"])
    # on disk: the live file is v2 again, v3 kept for a post-mortem, no .prev left to roll back to
    blob2, _ = _install_files(tmp_path, 1.0, "2")
    assert p.read_bytes() == blob2
    assert json.loads(p.with_name(p.name + ".json").read_text())["version"] == "2"
    assert p.with_name(p.name + ".rolledback").exists() and not p.with_name(p.name + ".prev").exists()
    ev = [e["data"] for e in h.messages("events/model_")]
    assert [(e.get("version"), e.get("to")) for e in ev] == [("2", None), ("3", None), (None, "2")]


def test_install_keeps_previous_on_disk_and_survives_restart(tmp_path: Path, harness_factory: Any) -> None:
    p, blob1, _ = model_files(tmp_path / "live", scale(0.0), n_in=4, version="1")
    cfg = model_cfg(p, window=4)
    h = harness_factory([cfg]).start()
    h.service.install("m", *_install_files(tmp_path, 1.0, "2"))
    prev = p.with_name(p.name + ".prev")
    assert prev.read_bytes() == blob1
    assert json.loads(prev.with_name(prev.name + ".json").read_text())["version"] == "1"
    h.close()
    h2 = Harness(tmp_path / "again", [cfg]).start()
    try:
        assert h2.service.describe()[0]["version"] == "2"
    finally:
        h2.close()
    # a corrupted live file: the agent falls back to .prev rather than running nothing
    p.write_bytes(b"garbage")
    h3 = Harness(tmp_path / "third", [cfg]).start()
    try:
        assert h3.service.describe()[0]["version"] == "1"
    finally:
        h3.close()


def test_automatic_rollback_after_run_time_failures(tmp_path: Path, harness_factory: Any) -> None:
    """v2 = sqrt(x): finite on the test windows (x >= 0), NaN once readings go negative."""
    p, _, _ = model_files(tmp_path / "live", scale(0.0), n_in=4, version="1")
    h = harness_factory([model_cfg(p, window=4, preprocess="none", max_failures=3, queue=100)]).start()
    h.feed([1.0] * 8)
    assert h.service.wait_idle(10)
    _, blob, meta = model_files(tmp_path / "v2", [tb.Unary("sqrt")], n_in=4, version="2")
    assert h.service.install("m", blob, meta)["version"] == "2"
    h.feed([4.0] * 4)  # fine: sqrt(4) = 2
    h.feed([-1.0] * 12)  # three NaN windows -> rollback
    h.feed([3.0] * 4)  # run by v1 again
    assert h.service.wait_idle(10)
    d = h.service.describe()[0]
    assert d["version"] == "1" and d["previous"] is None and d["errors"] == 3
    rb = h.messages("events/model_rollback")
    assert len(rb) == 1 and rb[0]["data"]["from"] == "2" and rb[0]["data"]["to"] == "1"
    assert "3 run-time failures" in rb[0]["data"]["reason"]
    res = [(e["data"]["version"], e["data"]["score"]) for e in h.messages("inference/m")]
    assert res == [("1", 1.0), ("1", 1.0), ("2", 4.0), ("1", 9.0)]


def test_model_commands_list_and_rollback(tmp_path: Path, harness_factory: Any) -> None:
    from edge_agent.commands.registry import Registry
    from edge_agent.errors import CommandError

    p, _, _ = model_files(tmp_path / "live", scale(0.0), n_in=4, version="1")
    h = harness_factory([model_cfg(p, window=4)]).start()
    reg = Registry()
    h.service.register_commands(reg)
    listing, rollback = reg.get("model.list"), reg.get("model.rollback")
    assert listing is not None and listing.read_only and rollback is not None and not rollback.read_only
    assert [m["version"] for m in listing.fn(None)] == ["1"]
    with pytest.raises(CommandError, match="rollback_failed: model 'm': no previous model"):
        rollback.fn(None, model="m")
    with pytest.raises(CommandError, match="not_found: no model named 'x'"):
        rollback.fn(None, model="x")
    h.service.install("m", *_install_files(tmp_path, 1.0, "2"))
    assert rollback.fn(None, model="m")["version"] == "1"
    assert listing.fn(None)[0]["version"] == "1"


def test_two_inputs_aligned_on_the_first(tmp_path: Path, harness_factory: Any) -> None:
    # per-input standardisation, out = 0: score = mean over both columns of the squared standardised values
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=4, mean=[0.0, 100.0], std=[1.0, 10.0])
    h = harness_factory([model_cfg(p, window=2, inputs=["a", "b"], queue=100)]).start()
    sa = h.feed([1.0], sensor="a")  # no row yet: b has not reported
    sb = h.feed([110.0], sensor="b")
    sa += h.feed([2.0], sensor="a")  # row (2, 110)
    sb += h.feed([120.0, 130.0], sensor="b")  # b moves on; held
    sa += h.feed([3.0], sensor="a")  # row (3, 130) -> window [(2,110), (3,130)]
    assert h.service.wait_idle(10)
    (res,) = [e["data"] for e in h.messages("inference/m")]
    assert res["score"] == pytest.approx((4 + 1 + 9 + 9) / 4)
    assert res["seq"] == [sb[0], sa[2]]


def test_classifier_results_carry_labels(tmp_path: Path, harness_factory: Any) -> None:
    w = np.zeros((2, 2), np.float32)
    w[1, :] = 0.5  # "spike" = mean of the window, "normal" = 0.3
    p, _, _ = model_files(tmp_path / "m", [tb.Dense(w, np.array([0.3, 0.0]))], n_in=2, output="scores",
                          labels=["normal", "spike"], threshold=0.5)
    h = harness_factory([model_cfg(p, window=2, output="scores", queue=100)]).start()
    h.feed([0.0, 0.2, 1.0, 1.0])
    assert h.service.wait_idle(10)
    res = [e["data"] for e in h.messages("inference/m")]
    assert [(r["top"], r["alarm"]) for r in res] == [("normal", False), ("spike", True)]
    assert res[1]["labels"] == pytest.approx({"normal": 0.3, "spike": 1.0})
    (alarm,) = h.messages("events/m_anomaly")
    assert alarm["data"]["top"] == "spike"


def test_model_without_inputs_is_refused_not_fatal(tmp_path: Path, harness_factory: Any) -> None:
    p, _, _ = model_files(tmp_path / "m", scale(0.0), n_in=4)
    h = harness_factory([model_cfg(p, window=4, inputs=[])]).start()
    d = h.service.describe()[0]
    assert d["state"] == "not loaded" and "the config lists no inputs" in d["error"]


def test_builtin_model_install_goes_to_state_dir_and_is_preferred(tmp_path: Path) -> None:
    from edge_agent.inference.model import BUILTIN_DIR

    shipped = BUILTIN_DIR / "machine_temp_ae.tflite"
    cfg = model_cfg("builtin:machine_temp_ae", name="mt", hop=4)
    h = Harness(tmp_path / "a", [cfg]).start()
    try:
        d = h.service.describe()[0]
        meta = json.loads(shipped.with_name(shipped.name + ".json").read_text())
        assert d["version"] == meta["version"] and d["path"] == str(shipped)
        blob = shipped.read_bytes()
        new = h.service.install("mt", blob, {**meta, "version": "1.0.1"})
        target = tmp_path / "a" / "state" / "models" / "mt.tflite"
        assert new["path"] == str(target) and target.read_bytes() == blob
        assert target.with_name("mt.tflite.prev").exists()  # the shipped pair, copied
    finally:
        h.close()
    # the next start prefers the installed copy
    h2 = Harness(tmp_path / "a", [cfg]).start()
    try:
        assert h2.service.describe()[0]["version"] == "1.0.1"
    finally:
        h2.close()
    # a corrupted installed copy and no .prev: the shipped model runs rather than nothing
    target.write_bytes(b"corrupt")
    target.with_name("mt.tflite.prev").unlink()
    h3 = Harness(tmp_path / "a", [cfg]).start()
    try:
        d = h3.service.describe()[0]
        assert d["state"] == "running" and d["version"] == meta["version"] and d["path"] == str(shipped)
    finally:
        h3.close()


def test_backlog_runs_in_order_and_rollback_lands_on_the_next_window(tmp_path: Path) -> None:
    """The worker runs a backlog in runs (invokes back to back, then the results): every window is published,
    in order, and a run ends at a failure, so after the failure that rolls a model back the very next
    window of the same backlog already runs on the restored model."""
    from edge_agent.inference.service import RUN, InferenceService
    from edge_agent.outbox import Outbox
    from edge_agent.pipeline import Pipeline
    from edge_agent.sensors.base import Reading

    gate = threading.Event()

    class Gated(Pipeline):
        def publish(self, stream: str, data: Any, **kw: Any) -> int:
            if stream.startswith("inference/"):
                gate.wait(20)
            return super().publish(stream, data, **kw)

    p, _, _ = model_files(tmp_path / "live", scale(0.0), n_in=1, version="1")  # score x^2
    _, blob, meta = model_files(tmp_path / "v2", [tb.Unary("sqrt")], n_in=1, version="2")  # NaN for x < 0
    ob = Outbox(tmp_path / "o.db", "d").open()
    pipe = Gated(ob, "edge", "d")
    svc = InferenceService([model_cfg(p, window=1, preprocess="none", max_failures=3, queue=1000)], pipe,
                           tmp_path / "state")
    gate.set()
    svc.start()
    try:
        svc.install("m", blob, meta)
        gate.clear()
        pipe.submit(Reading("s1", 0.0, {"value": 4.0}))  # v2: (sqrt(4) - 4)^2 = 4; its publish blocks
        wait_for(lambda: svc.slots["m"].busy, 10, msg="worker busy")
        values = [-1.0] * 3 + [2.0] * (3 * RUN)  # three failures (-> rollback to v1), then a long backlog
        for v in values:
            pipe.submit(Reading("s1", 0.0, {"value": v}))
        gate.set()
        assert svc.wait_idle(20)
        res = [e["data"] for e in read_messages(ob, "inference/m")]
        assert [(r["version"], r["score"]) for r in res] == [("2", 4.0)] + [("1", 4.0)] * (3 * RUN)
        assert [r["window"] for r in res] == [0, *range(4, 4 + 3 * RUN)]
        d = svc.describe()[0]
        assert (d["version"], d["errors"], d["windows_run"], d["windows_skipped"]) == ("1", 3, 1 + 3 * RUN, 0)
    finally:
        gate.set()
        svc.stop()
        ob.close()
