"""The LiteRT C API backend (ctypes, no numpy) against the Python wrapper (numpy), with real models.

Every model here runs on the real ``libLiteRt.so`` of ai-edge-litert and, for comparison, on the real
``Interpreter`` of the Python wrapper. Skipped where ai-edge-litert 2.x is not installed (tflite-runtime
only, or 32-bit ARM), except in CI.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.errors import ModelError
from edge_agent.inference import litert_c, numeric, runtime
from edge_agent.inference.calibration import Rule, Warmup
from edge_agent.inference.model import BUILTIN_DIR, Model, load
from edge_agent.inference.window import Windower
from tests.helpers import AgentProcess, sensors, write_config
from tests.inference.conftest import ROOT, model_cfg, model_files, scale, tb

SHIPPED = BUILTIN_DIR / "machine_temp_ae.tflite"


@pytest.fixture(autouse=True, scope="module")
def _need_c_api() -> None:
    try:
        litert_c.load_library()
    except (OSError, ModelError) as e:
        if os.environ.get("CI"):
            pytest.fail(f"the LiteRT C API is not usable: {e}")
        pytest.skip(f"the LiteRT C API is not usable here: {e}")


@pytest.fixture
def backends(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``load(cfg, path, backend)`` with backend "c" or "python": a Model on that engine."""
    def make(cfg: Any, path: Path, backend: str) -> Model:
        monkeypatch.setenv(runtime.BACKEND_ENV, backend)
        runtime._reset_for_tests()
        try:
            return load(cfg, path)
        finally:
            monkeypatch.delenv(runtime.BACKEND_ENV)
            runtime._reset_for_tests()

    yield make
    runtime._reset_for_tests()


def windows(n: int, width: int, seed: int = 7) -> list[list[float]]:
    """Windows like the shipped model's sensor: a level around 81 degC, spread ~8, some spikes."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        w = 81.0 + 8.0 * rng.standard_normal(width).cumsum() / math.sqrt(width) + rng.normal(0, 0.5, width)
        if k % 7 == 3:
            w[width // 2] += 40.0
        out.append([float(v) for v in w.astype(np.float32)])
    return out


def test_c_api_runs_the_shipped_model_with_the_wrappers_numbers(backends: Any) -> None:
    cfg = model_cfg("builtin:machine_temp_ae", window=32)
    c, py = backends(cfg, SHIPPED, "c"), backends(cfg, SHIPPED, "python")
    assert isinstance(c.engine, litert_c.CompiledModel) and c.interpreter is None
    assert isinstance(py.engine, runtime.WrapperEngine) and py.interpreter is not None
    assert [t.shape for t in c.engine.inputs + c.engine.outputs] == [(1, 32), (1, 1)]
    assert [t.dtype for t in c.engine.inputs + c.engine.outputs] == ["float32", "float32"]
    # the same windows, cut by each backend's own ring (memoryview for C, numpy view for the wrapper)
    rings = {"c": Windower(32, 4, keep=200), "python": Windower(32, 4, keep=200)}
    rings["python"].use_numpy()
    scores: dict[str, list[float]] = {"c": [], "python": []}
    values = [v for w in windows(12, 32) for v in w]
    for name, ring in rings.items():
        for i, v in enumerate(values):
            ring.push(v, i, i, float(i))
        m = c if name == "c" else py
        scores[name] = [m.score(ring.get(k).x) for k in range(ring.cut)]  # type: ignore[union-attr]
    assert isinstance(rings["c"].get(0).x, memoryview)  # type: ignore[union-attr]
    assert len(scores["c"]) == rings["c"].cut > 80
    assert scores["c"] == pytest.approx(scores["python"], rel=1e-6, abs=1e-9)
    # and the bare interpreter, numpy in and out, agrees with the C API on a spike window
    it = runtime.make_interpreter(SHIPPED.read_bytes())
    spike = np.asarray(windows(4, 32)[3], np.float32).reshape(1, 32)
    it.set_tensor(it.get_input_details()[0]["index"], spike)
    it.invoke()
    want = float(it.get_tensor(it.get_output_details()[0]["index"]).item())
    assert c.score(spike) == pytest.approx(want, rel=1e-6) and want > 10 * c.score(windows(1, 32)[0])


def test_reconstruction_and_classifier_match_the_numpy_formulas(tmp_path: Path, backends: Any) -> None:
    """Pre/post-processing is plain Python on both backends: checked against the numpy formulas the
    agent used before (float32 standardise, MSE in float32), per-input mean/std, two inputs."""
    mean, std = [10.0, -3.0], [2.0, 0.5]
    p, _, _ = model_files(tmp_path / "r", scale(1.5), n_in=16, mean=mean, std=std, inputs=2, window=8)
    cfg = model_cfg(p, window=8, inputs=["s1", "s2"])
    c, py = backends(cfg, p, "c"), backends(cfg, p, "python")
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = (rng.normal(0, 3, (8, 2)) + np.array(mean)).astype(np.float32)
        xs = ((x - np.float32(mean)) * (np.float32(1) / np.float32(std))).astype(np.float32).reshape(-1)
        d = (np.float32(1.5) * xs - xs).astype(np.float32)
        want = float(np.dot(d, d)) / 16
        assert c.score(x) == pytest.approx(want, rel=1e-5)
        assert c.score(numeric.copy_f32(x)) == py.score(x) == pytest.approx(want, rel=1e-5)
    labels = ["normal", "spike", "drift"]
    w = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], np.float32)
    pc, _, _ = model_files(tmp_path / "k", [tb.Dense(w, np.zeros(3, np.float32))], n_in=4, output="scores",
                           labels=labels)
    kcfg = model_cfg(pc, window=4, output="scores")
    kc, kp = backends(kcfg, pc, "c"), backends(kcfg, pc, "python")
    for x in ([0.1, 0.9, 0.2, 0.3], [0.9, 0.1, 0.0, 0.1], [0.0, 0.0, 2.0, -1.0]):
        rc, rp = kc.infer(x), kp.infer(np.asarray([x], np.float32))
        assert rc.labels == pytest.approx(rp.labels) and rc.top == rp.top
        assert rc.score == pytest.approx(rp.score)
        assert rc.top == labels[int(np.argmax(w @ np.asarray(x, np.float32)))]


def test_calibration_statistics_match_numpy(backends: Any) -> None:
    """The warm-up's median window std, input scale, quantile and threshold: plain Python = numpy."""
    m = backends(model_cfg("builtin:machine_temp_ae", window=32), SHIPPED, "c")
    rule = Rule(windows=50, quantile=0.99, margin=3.0, scale="window_std", scale_reference=1.602711)
    wu = Warmup(rule)
    ws = [np.asarray(w, np.float32) for w in windows(50, 32, seed=11)]
    assert [wu.add(memoryview(w), float(i)) for i, w in enumerate(ws)][-1] is True
    cal = wu.finish(m.score, "abc")
    x = np.stack(ws)
    spread = float(np.median(x.std(axis=1)))
    want_scale = float(f"{rule.scale_reference / spread:.6g}")
    assert cal.input_scale == want_scale != 1.0
    xs = (x * np.float32(want_scale)).astype(np.float32)
    q = float(np.quantile(np.array([m.score(w) for w in xs]), 0.99))
    assert cal.score_quantile == pytest.approx(q, rel=1e-9)
    assert cal.threshold == float(f"{3.0 * q:.6g}")
    for data in ([0.3, 0.1, 0.2], list(range(101)), [5.0] * 4):
        for qq in (0.5, 0.9, 0.99, 1.0):
            assert numeric.quantile(data, qq) == pytest.approx(float(np.quantile(data, qq)), rel=1e-12)
        assert numeric.median(data) == float(np.median(data))
        assert numeric.pstdev(data) == pytest.approx(float(np.std(data)), rel=1e-12, abs=1e-15)


def test_bad_model_bytes_give_the_call_and_status_not_a_crash() -> None:
    blob = SHIPPED.read_bytes()
    for bad, status in ((b"", 1), (b"not a model" * 20, 501), (blob[: len(blob) // 2], 501)):
        with pytest.raises(litert_c.LiteRtError) as e:
            litert_c.compile_model(bad)
        assert e.value.call == "LiteRtCreateModelFromBuffer" and e.value.status == status
        assert str(e.value).startswith("LiteRtCreateModelFromBuffer: kLiteRtStatusError")
        assert isinstance(e.value, ModelError)
    cm = litert_c.compile_model(blob)  # the library is still fine
    with pytest.raises(ValueError, match="a window of 31 values, the model's input holds 32"):
        cm.score([1.0] * 31)
    assert 0 <= cm.score([81.0] * 32) < 1e-3  # a flat window: (almost) nothing to reconstruct
    cm.close()
    cm.close()  # twice is harmless


CORRUPT = r"""
import hashlib, json, sys
from pathlib import Path
from edge_agent.config import ModelConfig
from edge_agent.errors import ModelError
from edge_agent.inference import runtime
from edge_agent.inference.model import BUILTIN_DIR, load
d = Path(sys.argv[1])
good = (BUILTIN_DIR / "machine_temp_ae.tflite").read_bytes()
meta = json.loads((BUILTIN_DIR / "machine_temp_ae.tflite.json").read_text())
cfg = ModelConfig(name="m", path="x", inputs=["s"], window=32)
out = {"runtime": runtime.runtime_name()}
for name, blob in (("empty", b""), ("garbage", b"\x00\xff" * 500), ("truncated", good[:3000]), ("missing", None)):
    p = d / f"{name}.tflite"
    if blob is not None:
        p.write_bytes(blob)
        p.with_name(p.name + ".json").write_text(json.dumps({**meta, "sha256": hashlib.sha256(blob).hexdigest()}))
    try:
        load(cfg, p)
        out[name] = "loaded?!"
    except ModelError as e:
        out[name] = str(e)
m = load(cfg, BUILTIN_DIR / "machine_temp_ae.tflite")
out["after"] = m.score([81.0] * 32)
out["numpy"] = "numpy" in sys.modules
print(json.dumps(out))
"""


def test_missing_and_corrupt_model_files_name_the_file_and_why(tmp_path: Path) -> None:
    """In a fresh process (a crash would show as a signal): each bad file is refused with its path and
    the reason, then the real model loads and runs in the same process, still without numpy."""
    r = subprocess.run([sys.executable, "-c", CORRUPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), runtime.BACKEND_ENV: "c"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["runtime"] == "litert_c"
    for name, status in (("empty", "kLiteRtStatusErrorInvalidArgument (1)"),
                         ("garbage", "kLiteRtStatusErrorInvalidFlatbuffer (501)"),
                         ("truncated", "kLiteRtStatusErrorInvalidFlatbuffer (501)")):
        assert out[name] == (f"model 'm' ({tmp_path / (name + '.tflite')}): not a loadable TFLite model: "
                             f"LiteRtCreateModelFromBuffer: {status}"), out[name]
    assert out["missing"] == f"cannot read model {tmp_path / 'missing.tflite'}: No such file or directory"
    assert 0 <= out["after"] < 1e-3 and out["numpy"] is False


def _imported(log: str) -> set[str]:
    """Top-level packages named in ``PYTHONPROFILEIMPORTTIME`` lines ('import time: a | b | pkg.mod')."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in log.splitlines()
            if line.startswith("import time:")}


@pytest.mark.parametrize("backend", ["auto", "python"])
def test_the_agent_with_a_model_never_imports_numpy_on_the_c_api(backend: str, tmp_path: Path) -> None:
    """A real ``edge-agent run`` with the shipped model: every import of the process is listed
    (PYTHONPROFILEIMPORTTIME); with the C API numpy is not among them, and with
    EDGE_AGENT_TFLITE=python it is (so this test can fail). No broker (a closed port): the results stay
    in the outbox, where they are counted."""
    import socket

    from edge_agent.outbox import Outbox
    from tests.inference.conftest import read_messages

    state = tmp_path / "state"
    models = ('[[models]]\nname = "m"\npath = "builtin:machine_temp_ae"\ninputs = ["s"]\nwindow = 32\nhop = 4\n')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the agent starts: nothing listens there
    cfg = write_config(tmp_path / "c.toml", port, state, sensors=sensors(("s", 0.005, 400, "telemetry")),
                       extra=models)
    agent = AgentProcess(cfg, {"PYTHONPROFILEIMPORTTIME": "1", runtime.BACKEND_ENV: backend}).start()
    deadline = time.monotonic() + 60
    while "loaded from" not in agent.output() and time.monotonic() < deadline and agent.alive():
        time.sleep(0.2)
    time.sleep(3.0)  # 400 readings at 200 Hz: ~90 windows
    assert agent.terminate() == 0, agent.output()[-3000:]
    log = agent.output()
    want = "litert_c" if backend == "auto" else "ai_edge_litert"
    assert f"inference: model m 1.2.0 loaded from {SHIPPED} ({want}, window 32" in log, log[-3000:]
    outbox = Outbox(state / "outbox.db", "dev-1").open()
    try:
        results = read_messages(outbox, "inference/m")
    finally:
        outbox.close()
    assert len(results) > 20 and all(math.isfinite(r["data"]["score"]) for r in results)
    imported = _imported(log)
    assert "edge_agent" in imported and "ctypes" in imported
    assert ("numpy" in imported) is (backend == "python")
    assert ("ai_edge_litert" in imported) is (backend == "python")  # the C API needs no Python package


def test_only_the_inference_package_loads_the_litert_library() -> None:
    """The layering rule for the runtime also covers ctypes: no module outside edge_agent/inference names
    the C library or loads a shared library (import-linter only sees Python imports)."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "edge_agent").rglob("*.py")
                 if "inference" not in p.relative_to(ROOT / "edge_agent").parts
                 and any(w in p.read_text(encoding="utf-8") for w in ("libLiteRt", "ctypes.CDLL(", "litert_c"))]
    loaders = [str(p.relative_to(ROOT)) for p in (ROOT / "edge_agent" / "inference").glob("*.py")
               if "CDLL(" in p.read_text(encoding="utf-8")]
    assert offenders == [] and loaders == ["edge_agent/inference/litert_c.py"]


def test_backend_switch_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        monkeypatch.setenv(runtime.BACKEND_ENV, "gpu")
        runtime._reset_for_tests()
        assert runtime.unavailable_reason() == "EDGE_AGENT_TFLITE must be 'auto', 'c' or 'python', got 'gpu'"
        with pytest.raises(ModelError, match="EDGE_AGENT_TFLITE must be"):
            runtime.make_engine(SHIPPED.read_bytes())
        monkeypatch.setenv(runtime.BACKEND_ENV, "python")
        runtime._reset_for_tests()
        assert runtime.runtime_name() in ("tflite_runtime", "ai_edge_litert") and runtime.uses_numpy()
        monkeypatch.setenv(runtime.BACKEND_ENV, "C")  # case and spaces do not matter
        runtime._reset_for_tests()
        assert runtime.runtime_name() == "litert_c" and not runtime.uses_numpy()
    finally:
        monkeypatch.delenv(runtime.BACKEND_ENV)
        runtime._reset_for_tests()


def test_dropped_models_free_their_c_objects() -> None:
    """Hot-swaps and rollbacks drop Model objects: the compiled model, its buffers and the model are
    destroyed when the Python object goes (RSS stays flat over 300 load/run/drop cycles)."""
    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    blob = SHIPPED.read_bytes()

    def cycle(n: int) -> None:
        for _ in range(n):
            cm = litert_c.compile_model(blob)
            cm.score([80.0] * 32)
            del cm

    cycle(50)  # allocator warm-up
    before = rss_mb()
    cycle(300)
    assert rss_mb() - before < 2.0  # without close() on collection: +24 MB (~80 KB per model)
