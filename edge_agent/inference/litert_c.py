"""A numpy-free TFLite backend: a small ctypes binding to the LiteRT C API (``libLiteRt.so``).

ai-edge-litert ships ``libLiteRt.so`` beside its Python wrappers. Loading it through ctypes costs ~3 MB
of RSS, against ~20 MB for numpy + the wrapper's ``Interpreter`` (docs/inference.md, Memory), so this
is the backend :mod:`.runtime` picks first. Windows go in as plain ``array('f')``/``memoryview``
buffers, copied into the input tensor buffer; the output tensor buffer is read through a memoryview.

The C signatures below are those of ai-edge-litert 2.x (checked against 2.3.0: ``LiteRtCreateModelFrom
Buffer`` takes the environment first; a wrong signature would crash the process, so only these calls
are used). Handles are opaque pointers; ``LiteRtRankedTensorType`` (72 bytes: ``element_type`` int32,
then ``LiteRtLayout``: ``rank`` in the low 7 bits of a uint32, ``dimensions[8]`` int32 at byte 8) is
filled by the library and handed back to it as it came, so only the element type and the shape are
read from it here.

Every failing call raises :class:`LiteRtError` naming the call and its status (``LiteRtCreateModelFrom
Buffer: kLiteRtStatusErrorInvalidFlatbuffer (501)``); it is a ModelError, so a bad model is refused
like any other. The library verifies the flatbuffer: empty, truncated or corrupted bytes give status
1/501, not a crash (tested).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import math
import threading
from pathlib import Path
from typing import Any

from edge_agent.errors import ModelError
from edge_agent.inference.numeric import as_f32

LIBRARY = "libLiteRt.so"
PACKAGE = "ai_edge_litert"
HW_CPU = 1  # kLiteRtHwAcceleratorCpu
RANKED_TYPE_BYTES = 128  # sizeof(LiteRtRankedTensorType) is 72 (76 with MSVC): room to spare

STATUS = {0: "kLiteRtStatusOk", 1: "kLiteRtStatusErrorInvalidArgument",
          2: "kLiteRtStatusErrorMemoryAllocationFailure", 3: "kLiteRtStatusErrorRuntimeFailure",
          4: "kLiteRtStatusErrorMissingInputTensor", 5: "kLiteRtStatusErrorUnsupported",
          6: "kLiteRtStatusErrorNotFound", 7: "kLiteRtStatusErrorTimeoutExpired",
          8: "kLiteRtStatusErrorWrongVersion", 9: "kLiteRtStatusErrorUnknown",
          10: "kLiteRtStatusErrorAlreadyExists", 100: "kLiteRtStatusCancelled",
          500: "kLiteRtStatusErrorFileIO", 501: "kLiteRtStatusErrorInvalidFlatbuffer",
          502: "kLiteRtStatusErrorDynamicLoading", 503: "kLiteRtStatusErrorSerialization",
          504: "kLiteRtStatusErrorCompilation", 1000: "kLiteRtStatusErrorIndexOOB",
          1001: "kLiteRtStatusErrorInvalidIrType", 1002: "kLiteRtStatusErrorInvalidGraphInvariant"}
# LiteRtElementType -> the dtype name numpy would give
DTYPES = {1: "float32", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool", 7: "int16", 8: "complex64",
          9: "int8", 10: "float16", 11: "float64", 12: "complex128", 13: "uint64", 16: "uint32", 17: "uint16",
          18: "int4", 19: "bfloat16"}

_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_S = ctypes.c_size_t
_PS = ctypes.POINTER(ctypes.c_size_t)
_I = ctypes.c_int
# name -> argtypes (every one returns LiteRtStatus, an int, except the Destroy* calls: void)
SIGNATURES: dict[str, list[Any]] = {
    "LiteRtCreateEnvironment": [_I, _P, _PP],
    "LiteRtCreateModelFromBuffer": [_P, ctypes.c_char_p, _S, _PP],
    "LiteRtGetNumModelSignatures": [_P, _PS],
    "LiteRtGetModelSignature": [_P, _S, _PP],
    "LiteRtGetNumSignatureInputs": [_P, _PS],
    "LiteRtGetNumSignatureOutputs": [_P, _PS],
    "LiteRtGetSignatureInputTensorByIndex": [_P, _S, _PP],
    "LiteRtGetSignatureOutputTensorByIndex": [_P, _S, _PP],
    "LiteRtGetRankedTensorType": [_P, _P],
    "LiteRtCreateOptions": [_PP],
    "LiteRtSetOptionsHardwareAccelerators": [_P, _I],
    "LiteRtCreateCompiledModel": [_P, _P, _P, _PP],
    "LiteRtGetCompiledModelInputBufferRequirements": [_P, _S, _S, _PP],
    "LiteRtGetCompiledModelOutputBufferRequirements": [_P, _S, _S, _PP],
    "LiteRtCreateManagedTensorBufferFromRequirements": [_P, _P, _P, _PP],
    "LiteRtGetTensorBufferHostMemory": [_P, _PP],
    "LiteRtGetTensorBufferPackedSize": [_P, _PS],
    "LiteRtRunCompiledModel": [_P, _S, _S, _P, _S, _P],
    "LiteRtDestroyTensorBuffer": [_P],
    "LiteRtDestroyCompiledModel": [_P],
    "LiteRtDestroyModel": [_P],
    "LiteRtDestroyOptions": [_P],
}


class LiteRtError(ModelError):
    """A LiteRT C API call returned an error status."""

    def __init__(self, call: str, status: int, what: str = "") -> None:
        self.call = call
        self.status = status
        name = STATUS.get(status, "unknown status")
        super().__init__(f"{call}{f' ({what})' if what else ''}: {name} ({status})")


def library_path() -> Path | None:
    """``libLiteRt.so`` of the installed ai-edge-litert (found without importing the package), or None.
    ModelError if that ai-edge-litert is not 2.x (the C signatures here are those of 2.x)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    for d in (spec.submodule_search_locations or []) if spec is not None else []:
        p = Path(d) / LIBRARY
        if p.is_file():
            dists = p.parent.parent.glob(f"{PACKAGE}-*.dist-info")
            versions = [x.name[len(PACKAGE) + 1:-len(".dist-info")] for x in dists]
            if versions and not any(v.startswith("2.") for v in versions):
                raise ModelError(f"ai-edge-litert {versions[0]} is installed; this binding is written for the 2.x "
                                 f"C API (LiteRtCreateModelFromBuffer with the environment first)")
            return p
    return None


class _Lib:
    """The loaded library: typed functions, and the process's one LiteRtEnvironment (made on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dll = ctypes.CDLL(str(path))
        self.fn: dict[str, Any] = {}
        for name, argtypes in SIGNATURES.items():
            try:
                f = self.dll[name]  # a fresh function object: argtypes set here affect no other user
            except AttributeError:
                raise ModelError(f"{path} has no {name}: not the LiteRT 2.x C API") from None
            f.argtypes = argtypes
            f.restype = None if name.startswith("LiteRtDestroy") else ctypes.c_int
            self.fn[name] = f
        # the hot call, without argtypes: every argument is passed as a ready ctypes object (~0.4 us less)
        self.run = self.dll["LiteRtRunCompiledModel"]
        self.run.restype = ctypes.c_int
        self.env: Any = None
        self.env_lock = threading.Lock()

    def call(self, name: str, *args: Any, what: str = "") -> None:
        status = self.fn[name](*args)
        if status:
            raise LiteRtError(name, status, what)

    def out(self, name: str, *args: Any, what: str = "") -> Any:
        """Call ``name(*args, &result)`` and return the result (a pointer or a size)."""
        res: Any = _S() if name.startswith(("LiteRtGetNum", "LiteRtGetTensorBufferPacked")) else _P()
        self.call(name, *args, ctypes.byref(res), what=what)
        return res.value

    def environment(self) -> Any:
        with self.env_lock:
            if self.env is None:
                self.env = _P(self.out("LiteRtCreateEnvironment", 0, None))
            return self.env


_lib: _Lib | None = None
_lib_lock = threading.Lock()


def load_library(path: Path | None = None) -> _Lib:
    """Load ``libLiteRt.so`` (once per process); OSError/ModelError if it is not there or not loadable."""
    global _lib
    with _lib_lock:
        if _lib is None:
            p = path or library_path()
            if p is None:
                raise ModelError(f"no {LIBRARY}: ai-edge-litert 2.x is not installed")
            _lib = _Lib(p)
        return _lib


class TensorInfo:
    """One input or output tensor: its shape and element type, as the interpreter's details give them."""

    __slots__ = ("dtype", "shape")

    def __init__(self, shape: tuple[int, ...], dtype: str) -> None:
        self.shape = shape
        self.dtype = dtype


def _ranked_type(lib: _Lib, tensor: int, what: str) -> tuple[Any, TensorInfo]:
    raw = ctypes.create_string_buffer(RANKED_TYPE_BYTES)
    lib.call("LiteRtGetRankedTensorType", tensor, raw, what=what)
    b = raw.raw
    etype = int.from_bytes(b[0:4], "little", signed=True)
    rank = b[4] & 0x7F
    dims = tuple(int.from_bytes(b[8 + 4 * k:12 + 4 * k], "little", signed=True) for k in range(min(rank, 8)))
    return raw, TensorInfo(dims, DTYPES.get(etype, f"element type {etype}"))


class CompiledModel:
    """A model compiled for the CPU, with one host-memory tensor buffer per input and output.

    Made by :func:`compile_model`; run from one thread at a time. ``inputs``/``outputs`` describe the
    tensors; :meth:`run` copies a window in and returns the first output as a float memoryview (valid
    until the next run); :meth:`score` returns its first value as a float."""

    def __init__(self, lib: _Lib, blob: bytes) -> None:
        self.lib = lib
        self.blob = blob  # LiteRtCreateModelFromBuffer reads these bytes for the model's lifetime
        self.handles: dict[str, Any] = {"model": None, "options": None, "compiled": None}
        self.buffers: list[Any] = []
        self.inputs: list[TensorInfo] = []
        self.outputs: list[TensorInfo] = []
        self.views: list[memoryview] = []
        self._in: memoryview = memoryview(b"")
        self._out: memoryview = memoryview(b"")
        self._args: tuple[Any, ...] = ()
        self._run: Any = None  # LiteRtRunCompiledModel with every argument bound (one call per window)

    def compile(self) -> None:
        lib, h = self.lib, self.handles
        env = lib.environment()
        h["model"] = _P(lib.out("LiteRtCreateModelFromBuffer", env, self.blob, len(self.blob)))
        if lib.out("LiteRtGetNumModelSignatures", h["model"]) < 1:
            raise LiteRtError("LiteRtGetNumModelSignatures", 6, "the model has no signature")
        sig = lib.out("LiteRtGetModelSignature", h["model"], 0)
        h["options"] = _P(lib.out("LiteRtCreateOptions"))
        lib.call("LiteRtSetOptionsHardwareAccelerators", h["options"], HW_CPU)
        h["compiled"] = _P(lib.out("LiteRtCreateCompiledModel", env, h["model"], h["options"]))
        ins: list[Any] = []
        outs: list[Any] = []
        for side, infos, handles in (("Input", self.inputs, ins), ("Output", self.outputs, outs)):
            for k in range(lib.out(f"LiteRtGetNumSignature{side}s", sig)):
                what = f"{side.lower()} {k}"
                tensor = lib.out(f"LiteRtGetSignature{side}TensorByIndex", sig, k, what=what)
                raw, info = _ranked_type(lib, tensor, what)
                req = lib.out(f"LiteRtGetCompiledModel{side}BufferRequirements", h["compiled"], 0, k, what=what)
                buf = _P(lib.out("LiteRtCreateManagedTensorBufferFromRequirements", env, raw, req, what=what))
                self.buffers.append(buf)
                infos.append(info)
                handles.append(buf)
                self.views.append(self._host_view(buf, info, what))
        if not ins or not outs:
            raise ModelError(f"the model has {len(ins)} input and {len(outs)} output tensor(s); need 1 or more of each")
        self._in = self.views[0]
        self._out = self.views[len(ins)]
        self._args = (h["compiled"], _S(0), _S(len(ins)), (_P * len(ins))(*ins), _S(len(outs)),
                      (_P * len(outs))(*outs))
        self._run = functools.partial(lib.run, *self._args)

    def _host_view(self, buf: Any, info: TensorInfo, what: str) -> memoryview:
        """The tensor buffer's host memory as a flat memoryview (float32 'f', else bytes 'B')."""
        addr = self.lib.out("LiteRtGetTensorBufferHostMemory", buf, what=what)
        size = self.lib.out("LiteRtGetTensorBufferPackedSize", buf, what=what)
        mv = memoryview((ctypes.c_char * size).from_address(addr)).cast("B")
        if info.dtype != "float32":
            return mv  # refused by the model's checks (float32 only), with the tensor's type in the message
        n = math.prod(info.shape) if all(d >= 0 for d in info.shape) else -1
        if size != 4 * n:
            raise ModelError(f"{what}: a tensor buffer of {size} bytes for shape {list(info.shape)} float32 "
                             f"(dynamic or strided tensors are not supported)")
        return mv.cast("f")

    def score(self, x: Any) -> float:
        """Copy window ``x`` (``n`` float32 values: a memoryview/array('f'), or any buffer or rows of that
        many values) into the first input, run, return the first output value (the model's one score).
        The hot path: one slice copy, one C call, one float read."""
        try:
            self._in[:] = x
        except (ValueError, TypeError):
            self._in[:] = as_f32(x, len(self._in))
        status = self._run()
        if status:
            raise LiteRtError("LiteRtRunCompiledModel", status)
        return self._out[0]

    def run(self, x: Any) -> memoryview:
        """:meth:`score`, then the whole first output (a view of the output buffer, valid until the next run)."""
        self.score(x)
        return self._out

    def invoke(self) -> None:
        """Run on the buffers as they are (no copy in, nothing read out): the bench's bare ``invoke()``."""
        status = self._run()
        if status:
            raise LiteRtError("LiteRtRunCompiledModel", status)

    def close(self) -> None:
        """Free the C objects (also done when the object is collected)."""
        for mv in self.views:
            mv.release()
        self.views = []
        self._in = self._out = memoryview(b"")
        self._args = ()
        self._run = None
        fn = self.lib.fn
        for buf in self.buffers:
            fn["LiteRtDestroyTensorBuffer"](buf)
        self.buffers = []
        h = self.handles
        for key, destroy in (("compiled", "LiteRtDestroyCompiledModel"), ("model", "LiteRtDestroyModel"),
                             ("options", "LiteRtDestroyOptions")):
            if h.get(key) is not None:
                fn[destroy](h[key])
                h[key] = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to free into
            pass


def compile_model(blob: bytes, lib: _Lib | None = None) -> CompiledModel:
    """Load and compile ``blob`` for the CPU; LiteRtError (a ModelError) naming the failing call."""
    cm = CompiledModel(lib or load_library(), bytes(blob))
    try:
        cm.compile()
    except BaseException:
        cm.close()
        raise
    return cm
