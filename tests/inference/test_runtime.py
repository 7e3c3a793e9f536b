"""The runtime wrapper: choice of runtime, silenced chatter, and a platform without any runtime."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import cli
from edge_agent.inference import runtime
from tests.inference.conftest import ROOT, model_cfg, model_files, scale


@pytest.fixture
def no_runtime() -> Iterator[None]:
    """Pretend this is 32-bit Pi OS: no importable runtime."""
    runtime._reset_for_tests(("tflite_runtime_missing.interpreter", "ai_edge_litert_missing.interpreter"))
    try:
        yield
    finally:
        runtime._reset_for_tests()


def test_a_runtime_is_usable_here() -> None:
    assert runtime.unavailable_reason() == ""
    assert runtime.runtime_name() in ("litert_c", "tflite_runtime", "ai_edge_litert")


def test_interpreter_creation_chatter_is_silenced() -> None:
    """In a fresh process (the delegate message is printed once per process) stderr stays empty."""
    code = ("import sys; sys.path.insert(0, 'tools'); import tflite_build as tb, numpy as np;"
            "from edge_agent.inference import runtime;"
            "it = runtime.make_interpreter(tb.build(8, [tb.Scale(2.0)]));"
            "it.set_tensor(it.get_input_details()[0]['index'], np.ones((1, 8), np.float32)); it.invoke();"
            "print(float(it.get_tensor(it.get_output_details()[0]['index']).sum()))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "16.0"
    assert r.stderr == ""
    # and without the wrapper the runtime does print it (so the test above can fail)
    wrapper = "ai_edge_litert" if runtime.runtime_name() == "litert_c" else runtime.runtime_name()
    raw = ("import sys; sys.path.insert(0, 'tools'); import tflite_build as tb;"
           f"from {wrapper}.interpreter import Interpreter;"
           "it = Interpreter(model_content=tb.build(8, [tb.Scale(2.0)])); it.allocate_tensors()")
    r = subprocess.run([sys.executable, "-c", raw], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "XNNPACK" in r.stderr or "TensorFlow Lite" in r.stderr


def test_unknown_stderr_output_is_logged_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    import os

    with caplog.at_level(logging.DEBUG, "edge_agent.inference.runtime"), runtime.quiet_stderr():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nERROR: something real\n")
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels["runtime stderr: ERROR: something real"] == logging.WARNING
    assert levels["runtime: INFO: Created TensorFlow Lite XNNPACK delegate for CPU."] == logging.DEBUG


def test_no_runtime_reason_is_plain(no_runtime: None) -> None:
    reason = runtime.unavailable_reason()
    assert reason.startswith("no TFLite runtime usable on this platform (")
    assert "pip install 'edge-agent[tflite]'" in reason and "32-bit ARM" in reason
    from edge_agent.errors import RuntimeUnavailable

    with pytest.raises(RuntimeUnavailable, match="no TFLite runtime usable"):
        runtime.make_interpreter(b"")


def test_check_config_warns_when_models_cannot_load(no_runtime: None, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[storage]
dir = "{tmp_path}"
[[sensors]]
name = "s1"
type = "simulated"
[[models]]
name = "anomaly"
path = "builtin:machine_temp_ae"
inputs = ["s1"]
""")
    assert cli.main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "warning: models cannot be loaded on this platform: no TFLite runtime usable" in out


def test_service_without_runtime_stays_idle_and_says_why(no_runtime: None, harness_factory: Any,
                                                         tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p, blob, meta = model_files(tmp_path / "m", scale(0.0), n_in=4)
    h = harness_factory([model_cfg(p, window=4)])
    with caplog.at_level(logging.ERROR, "edge_agent.inference"):
        h.start()
    assert any("inference: models not loaded (m): no TFLite runtime usable" in r.getMessage()
               for r in caplog.records)
    assert h.pipeline.taps == []  # the sampling path is untouched
    h.feed([1.0] * 8)
    ev = h.messages("events/inference_unavailable")
    assert len(ev) == 1 and ev[0]["data"]["models"] == ["m"]
    assert len(h.messages("telemetry/s1")) == 8
    d = h.service.describe()[0]
    assert d["state"] == "not loaded" and "no TFLite runtime" in d["error"]
    from edge_agent.errors import ModelError

    with pytest.raises(ModelError, match="cannot install model 'm': no TFLite runtime"):
        h.service.install("m", blob, meta)


def test_tflite_runtime_preferred_on_numpy1_and_skipped_with_reason_on_numpy2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Selection logic with a stand-in ``tflite_runtime`` package (the real wheel needs numpy<2)."""
    pkg = tmp_path / "tflite_runtime"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "interpreter.py").write_text("from ai_edge_litert.interpreter import Interpreter  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        monkeypatch.setattr(runtime, "_numpy_version", lambda: "1.26.4")
        runtime._reset_for_tests(runtime.WRAPPERS)
        assert runtime.runtime_name() == "tflite_runtime" and runtime.unavailable_reason() == ""
        monkeypatch.setattr(runtime, "_numpy_version", lambda: "2.4.6")
        runtime._reset_for_tests(runtime.WRAPPERS)
        assert runtime.runtime_name() == "ai_edge_litert"
        runtime._reset_for_tests(("tflite_runtime.interpreter",))
        assert "tflite-runtime is installed but needs numpy<2" in runtime.unavailable_reason()
    finally:
        sys.modules.pop("tflite_runtime.interpreter", None)
        sys.modules.pop("tflite_runtime", None)
        runtime._reset_for_tests()
