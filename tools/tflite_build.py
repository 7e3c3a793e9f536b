"""Write a float32 ``.tflite`` from numpy arrays, without TensorFlow.

Why: TensorFlow is 1.6 GB and slow to import; the device, the tests and CI must never need it. A small
dense network (the shipped autoencoder, test fixtures) is just a list of FULLY_CONNECTED ops plus a few
element-wise ops, which we can serialise directly with ``flatbuffers`` and the TFLite schema bindings
that ``ai-edge-litert`` ships (``ai_edge_litert.schema_py_generated``). Both runtimes execute the result
and match numpy to ~1e-7.

A model is a chain of layers applied to one input tensor of shape ``[1, n]``::

    from tflite_build import Dense, Unary, build
    blob = build(32, [Dense(w1, b1, "relu"), Dense(w2, b2), Unary("sqrt")])

``Dense(w, b)`` computes ``act(x @ w.T + b)`` with ``w`` of shape ``(out, in)`` (TFLite's layout).
``Unary(op)`` is one of tanh, relu, logistic, sqrt, abs, exp, neg. ``Scale(k)`` multiplies by a scalar.

This is a developer tool (tools/ is not installed with the package); the agent itself only reads models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as s

_ACT = {"none": s.ActivationFunctionType.NONE, "relu": s.ActivationFunctionType.RELU,
        "relu6": s.ActivationFunctionType.RELU6, "tanh": s.ActivationFunctionType.NONE}
_UNARY = {"tanh": s.BuiltinOperator.TANH, "relu": s.BuiltinOperator.RELU,
          "logistic": s.BuiltinOperator.LOGISTIC, "sqrt": s.BuiltinOperator.SQRT,
          "abs": s.BuiltinOperator.ABS, "exp": s.BuiltinOperator.EXP, "neg": s.BuiltinOperator.NEG}


@dataclass(frozen=True)
class Dense:
    w: np.ndarray  # (out, in)
    b: np.ndarray  # (out,)
    act: str = "none"


@dataclass(frozen=True)
class Unary:
    op: str


@dataclass(frozen=True)
class Scale:
    k: float


Layer = Dense | Unary | Scale


class _Graph:
    def __init__(self) -> None:
        self.buffers: list[s.BufferT] = [s.BufferT()]  # buffer 0: the conventional empty buffer
        self.tensors: list[s.TensorT] = []
        self.ops: list[s.OperatorT] = []
        self.codes: list[int] = []

    def tensor(self, name: str, shape: Sequence[int], data: np.ndarray | None = None) -> int:
        t = s.TensorT()
        t.name = name
        t.shape = [int(d) for d in shape]
        t.type = s.TensorType.FLOAT32
        if data is None:
            t.buffer = 0
        else:
            b = s.BufferT()
            b.data = np.ascontiguousarray(data, dtype="<f4").tobytes()
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], opt_type: int = 0, opt: object = None) -> None:
        if code not in self.codes:
            self.codes.append(code)
        o = s.OperatorT()
        o.opcodeIndex = self.codes.index(code)
        o.inputs = inputs
        o.outputs = outputs
        o.builtinOptionsType = opt_type
        o.builtinOptions = opt
        self.ops.append(o)


def build(n_in: int, layers: Sequence[Layer], description: str = "edge-agent tflite_build") -> bytes:
    """Serialise ``layers`` applied to a ``[1, n_in]`` float32 input; return the .tflite bytes."""
    g = _Graph()
    cur = g.tensor("input", [1, n_in])
    inp, width = cur, n_in
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense):
            w = np.asarray(layer.w, dtype=np.float32)
            b = np.asarray(layer.b, dtype=np.float32)
            if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
                raise ValueError(f"layer {i}: weights {w.shape} / bias {b.shape} do not fit input width {width}")
            wt = g.tensor(f"dense{i}/w", w.shape, w)
            bt = g.tensor(f"dense{i}/b", b.shape, b)
            out = g.tensor(f"dense{i}/out", [1, w.shape[0]])
            opt = s.FullyConnectedOptionsT()
            opt.fusedActivationFunction = _ACT[layer.act]
            g.op(s.BuiltinOperator.FULLY_CONNECTED, [cur, wt, bt], [out], s.BuiltinOptions.FullyConnectedOptions, opt)
            cur, width = out, w.shape[0]
            if layer.act == "tanh":  # FULLY_CONNECTED cannot fuse tanh: a separate TANH op
                out = g.tensor(f"dense{i}/tanh", [1, width])
                g.op(s.BuiltinOperator.TANH, [cur], [out])
                cur = out
        elif isinstance(layer, Unary):
            out = g.tensor(f"{layer.op}{i}/out", [1, width])
            g.op(_UNARY[layer.op], [cur], [out])
            cur = out
        elif isinstance(layer, Scale):
            k = g.tensor(f"scale{i}/k", [1], np.array([layer.k], dtype=np.float32))
            out = g.tensor(f"scale{i}/out", [1, width])
            g.op(s.BuiltinOperator.MUL, [cur, k], [out], s.BuiltinOptions.MulOptions, s.MulOptionsT())
            cur = out
        else:  # pragma: no cover - typing guards this
            raise TypeError(f"layer {i}: unknown layer {layer!r}")
    if not g.ops:  # an identity model still needs one op: multiply by 1
        return build(n_in, [Scale(1.0)], description)
    sg = s.SubGraphT()
    sg.tensors, sg.operators, sg.inputs, sg.outputs, sg.name = g.tensors, g.ops, [inp], [cur], "main"
    m = s.ModelT()
    m.version = 3
    m.description = description
    m.buffers = g.buffers
    m.subgraphs = [sg]
    codes = []
    for c in g.codes:
        oc = s.OperatorCodeT()
        oc.builtinCode = c
        oc.deprecatedBuiltinCode = min(c, 127)
        oc.version = 1
        codes.append(oc)
    m.operatorCodes = codes
    fb = flatbuffers.Builder(1024)
    fb.Finish(m.Pack(fb), file_identifier=b"TFL3")
    return bytes(fb.Output())


def numpy_forward(x: np.ndarray, layers: Sequence[Layer]) -> np.ndarray:
    """The same network in numpy (float32), to check a built model against."""
    y = np.asarray(x, dtype=np.float32)
    for layer in layers:
        if isinstance(layer, Dense):
            y = y @ np.asarray(layer.w, np.float32).T + np.asarray(layer.b, np.float32)
            if layer.act == "relu":
                y = np.maximum(y, 0)
            elif layer.act == "relu6":
                y = np.clip(y, 0, 6)
            elif layer.act == "tanh":
                y = np.tanh(y)
        elif isinstance(layer, Scale):
            y = y * np.float32(layer.k)
        else:
            fn = {"tanh": np.tanh, "relu": lambda v: np.maximum(v, 0), "logistic": lambda v: 1 / (1 + np.exp(-v)),
                  "sqrt": np.sqrt, "abs": np.abs, "exp": np.exp, "neg": np.negative}[layer.op]
            with np.errstate(invalid="ignore"):
                y = fn(y)
    return y.astype(np.float32)
