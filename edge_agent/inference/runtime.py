"""The one module that imports a TFLite runtime.

Two wheels provide the same ``Interpreter`` API and neither exists everywhere:

* ``tflite-runtime`` (``tflite_runtime.interpreter``): small (6.7 MB), but compiled against NumPy 1.x —
  under NumPy 2 it *imports* and then fails when a model is loaded — and its wheels stop at CPython 3.11.
* ``ai-edge-litert`` (``ai_edge_litert.interpreter``): 59 MB, NumPy 2, CPython 3.11-3.13.

So we try ``tflite_runtime`` first only when NumPy is 1.x (checked up front, because the failure would
otherwise surface as an obscure error on the first model), then ``ai_edge_litert``. On a platform with
neither (32-bit Raspberry Pi OS) :func:`unavailable_reason` says so in one sentence; the agent keeps
running without models and ``edge-agent check-config`` prints it as a warning.

Both runtimes print start-up chatter ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") from
C++ straight to file descriptor 2, below Python's logging. :func:`make_interpreter` points fd 2 at a
temporary file while the interpreter is created and its tensors allocated, then logs whatever was
written: known chatter at DEBUG, anything else at WARNING, so real diagnostics are not lost.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from edge_agent.errors import ModelError, RuntimeUnavailable

log = logging.getLogger("edge_agent.inference.runtime")

CANDIDATES: tuple[str, ...] = ("tflite_runtime.interpreter", "ai_edge_litert.interpreter")
CHATTER: tuple[str, ...] = ("INFO: Created TensorFlow Lite", "INFO: Initialized TensorFlow Lite runtime")

_lock = threading.Lock()
_fd_lock = threading.Lock()
_module: Any = None
_name = ""
_reason: str | None = None


def _numpy_major() -> int:
    return int(np.__version__.split(".")[0])


def _resolve(candidates: tuple[str, ...] = CANDIDATES) -> tuple[Any, str, str]:
    """Import the first usable runtime; return (module, name, '') or (None, '', why none is usable)."""
    problems: list[str] = []
    for mod in candidates:
        if mod.startswith("tflite_runtime") and _numpy_major() >= 2:
            # Importable but unusable: it would fail on the first model with "compiled using NumPy 1.x".
            try:
                present = importlib.util.find_spec("tflite_runtime") is not None
            except (ImportError, ValueError):
                present = False
            if present:
                problems.append(f"tflite-runtime is installed but needs numpy<2 (numpy {np.__version__})")
            else:
                problems.append("tflite-runtime is not installed")
            continue
        try:
            m = importlib.import_module(mod)
        except ImportError as e:
            dist = mod.split(".")[0].replace("_", "-")
            problems.append(f"{dist} is not installed" if isinstance(e, ModuleNotFoundError)
                            else f"{dist} cannot be imported: {e}")
            continue
        except Exception as e:  # a broken wheel (wrong libc, missing .so) must not stop the agent
            problems.append(f"{mod} cannot be imported: {type(e).__name__}: {e}")
            continue
        if not hasattr(m, "Interpreter"):
            problems.append(f"{mod} has no Interpreter")
            continue
        return m, mod.split(".")[0], ""
    import platform

    where = f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
    return None, "", (f"no TFLite runtime usable on this platform ({where}): " + "; ".join(problems) +
                      ". Install one with `pip install 'edge-agent[tflite]'` (ai-edge-litert) or "
                      "`pip install tflite-runtime 'numpy<2'`; neither has wheels for 32-bit ARM.")


def _ensure() -> None:
    global _module, _name, _reason
    with _lock:
        if _reason is None:
            _module, _name, _reason = _resolve()


def unavailable_reason() -> str:
    """'' when a runtime is usable, else one sentence saying why models cannot be loaded here."""
    _ensure()
    assert _reason is not None
    return _reason


def runtime_name() -> str:
    """'tflite_runtime' or 'ai_edge_litert' ('' when none is usable)."""
    _ensure()
    return _name


def _reset_for_tests(candidates: tuple[str, ...] | None = None) -> None:
    """Forget the cached choice (tests use this to simulate a platform without a runtime)."""
    global _module, _name, _reason
    with _lock:
        if candidates is None:
            _module, _name, _reason = None, "", None
        else:
            _module, _name, _reason = _resolve(candidates)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Point fd 2 at a temp file for the duration; log what was written (chatter at DEBUG).

    Serialised by a lock because fd 2 is process-wide. Python-level ``sys.stderr`` writes from other
    threads during this short window land in the same file and are re-logged, not lost.
    """
    with _fd_lock:
        try:
            sys.stderr.flush()
        except Exception:
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (detached daemon): nothing to silence
            yield
            return
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                try:
                    sys.stderr.flush()
                except Exception:
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                text = tmp.read().decode(errors="replace")
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith(CHATTER):
                log.debug("runtime: %s", line)
            else:
                log.warning("runtime stderr: %s", line)


def make_interpreter(model: bytes, num_threads: int = 1) -> Any:
    """A ready interpreter (tensors allocated) for ``model`` bytes; ModelError if it cannot load.

    The runtime copies nothing: the bytes object is kept alive by the interpreter.
    """
    _ensure()
    if _module is None:
        raise RuntimeUnavailable(_reason or "no TFLite runtime")
    try:
        with quiet_stderr():
            it = _module.Interpreter(model_content=model, num_threads=num_threads)
            it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"not a loadable TFLite model: {msg}") from None
    return it
