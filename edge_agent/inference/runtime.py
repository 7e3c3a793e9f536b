"""The one module that picks and loads a TFLite runtime (with :mod:`.litert_c`, its C-API binding).

First choice: the LiteRT C API, ``libLiteRt.so`` from the ai-edge-litert wheel, loaded through ctypes
(:mod:`.litert_c`): no numpy, no Python wrapper, ~16 MB less peak RSS. Set ``EDGE_AGENT_TFLITE=python`` to
skip it (use a Python wrapper and numpy), ``=c`` to accept nothing else; default ``auto``.

Then the Python wrappers. Two wheels provide the same ``Interpreter`` API and neither exists everywhere:

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
import math
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from edge_agent.errors import ModelError, RuntimeUnavailable
from edge_agent.inference import litert_c
from edge_agent.inference.litert_c import TensorInfo
from edge_agent.inference.numeric import as_f32

log = logging.getLogger("edge_agent.inference.runtime")

C_API = "litert_c"
WRAPPERS: tuple[str, ...] = ("tflite_runtime.interpreter", "ai_edge_litert.interpreter")
CANDIDATES: tuple[str, ...] = (C_API, *WRAPPERS)
BACKEND_ENV = "EDGE_AGENT_TFLITE"  # "auto" (default), "c" (the C API only), "python" (a wrapper + numpy)
CHATTER: tuple[str, ...] = ("INFO: Created TensorFlow Lite", "INFO: Initialized TensorFlow Lite runtime",
                            "INFO: [", "WARNING: [npu_registry.cc", "WARNING: [gpu_registry.cc")

_lock = threading.Lock()
_fd_lock = threading.Lock()
_module: Any = None
_name = ""
_reason: str | None = None
_wrapper: tuple[Any, str, str] | None = None  # for make_interpreter when the backend is the C API


def _numpy_version() -> str:
    import numpy as np

    return str(np.__version__)


def _load_c_api(choice: str) -> tuple[Any, str]:
    """(the loaded library, '') or (None, why the C API is not used)."""
    if choice == "python":
        return None, f"the LiteRT C API is not used ({BACKEND_ENV}=python)"
    try:
        return litert_c.load_library(), ""
    except (OSError, ModelError) as e:
        return None, f"the LiteRT C API cannot be used: {e}"


def _resolve(candidates: tuple[str, ...] = CANDIDATES) -> tuple[Any, str, str]:
    """Load the first usable runtime; return (module or library, name, '') or (None, '', why none is)."""
    problems: list[str] = []
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "c", "python"):
        return None, "", f"{BACKEND_ENV} must be 'auto', 'c' or 'python', got {choice!r}"
    for mod in candidates:
        if mod == C_API:
            lib, why = _load_c_api(choice)
            if lib is not None:
                return lib, C_API, ""
            problems.append(why)
            continue
        if choice == "c":
            continue
        if mod.startswith("tflite_runtime") and int(_numpy_version().split(".")[0]) >= 2:
            # Importable but unusable: it would fail on the first model with "compiled using NumPy 1.x".
            try:
                present = importlib.util.find_spec("tflite_runtime") is not None
            except (ImportError, ValueError):
                present = False
            if present:
                problems.append(f"tflite-runtime is installed but needs numpy<2 (numpy {_numpy_version()})")
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
    """'litert_c' (the C API), 'tflite_runtime' or 'ai_edge_litert' ('' when none is usable)."""
    _ensure()
    return _name


def uses_numpy() -> bool:
    """True when models run through a Python wrapper (which needs numpy arrays), False for the C API."""
    _ensure()
    return _name != C_API


def _reset_for_tests(candidates: tuple[str, ...] | None = None) -> None:
    """Forget the cached choice (tests use this to simulate a platform without a runtime)."""
    global _module, _name, _reason, _wrapper
    with _lock:
        _wrapper = None
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
    """A ready Python-wrapper interpreter (tensors allocated) for ``model`` bytes; ModelError if it cannot
    load. Whatever the backend (tests and the bench compare against it); the bytes are kept alive by it."""
    global _wrapper
    _ensure()
    module = _module
    if _name == C_API or _module is None:
        with _lock:
            if _wrapper is None:
                _wrapper = _resolve(WRAPPERS) if _name == C_API else (None, "", _reason or "")
        module = _wrapper[0]
    if module is None:
        raise RuntimeUnavailable((_wrapper[2] if _wrapper else "") or _reason or "no TFLite runtime")
    try:
        with quiet_stderr():
            it = module.Interpreter(model_content=model, num_threads=num_threads)
            it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"not a loadable TFLite model: {msg}") from None
    return it


def make_engine(model: bytes) -> Any:
    """The model compiled by the chosen backend: a :class:`.litert_c.CompiledModel` or a
    :class:`WrapperEngine`; both have ``inputs``/``outputs`` (TensorInfo), ``run(x)`` and ``score(x)``."""
    _ensure()
    if _module is None:
        raise RuntimeUnavailable(_reason or "no TFLite runtime")
    if _name == C_API:
        try:
            with quiet_stderr():
                return litert_c.compile_model(model, _module)
        except litert_c.LiteRtError as e:
            raise ModelError(f"not a loadable TFLite model: {e}") from None
    return WrapperEngine(make_interpreter(model))


class WrapperEngine:
    """A Python wrapper's Interpreter (numpy arrays in and out) behind the engine interface."""

    def __init__(self, interpreter: Any) -> None:
        import numpy as np

        self.interpreter = interpreter
        self.np = np
        ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
        self.inputs = [TensorInfo(tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]).name) for d in ins]
        self.outputs = [TensorInfo(tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]).name) for d in outs]
        self._i = ins[0]["index"] if ins else -1
        self._o = outs[0]["index"] if outs else -1
        self._shape = self.inputs[0].shape if ins else ()
        self._n = math.prod(self._shape)

    def _converted(self, x: Any) -> Any:
        """``x`` in another shape or type (rows, array('f'), float64) as the input tensor's float32 array."""
        return self.np.frombuffer(as_f32(x, self._n), self.np.float32).reshape(self._shape)

    def score(self, x: Any) -> float:
        """Set ``x``, invoke, return the first output value (the hot path: three interpreter calls)."""
        it = self.interpreter
        try:
            it.set_tensor(self._i, x)  # a window as the numpy ring cuts it: no conversion
        except (ValueError, TypeError):
            it.set_tensor(self._i, self._converted(x))
        it.invoke()
        return it.get_tensor(self._o).item(0)  # type: ignore[no-any-return]

    def run(self, x: Any) -> Any:
        """:meth:`score`, then the whole first output flattened (a list of floats)."""
        self.score(x)
        return self.interpreter.get_tensor(self._o).reshape(-1).tolist()

    def close(self) -> None:
        pass
