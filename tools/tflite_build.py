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
``Sub(v)`` subtracts a constant (a scalar or one value per element). ``Centre()`` subtracts the
tensor's own mean (MEAN + SUB: per-window centring, no weights). ``SquaredError(w, ref)`` ends a
reconstruction graph: ``sum_i w_i * (cur_i - ref_i)^2`` as a ``[1, 1]`` tensor (SQUARED_DIFFERENCE, then a
FULLY_CONNECTED with the weight row ``w``), where ``ref`` names an earlier tensor: 0 = the graph input,
``k`` = the output of ``layers[k - 1]``.

:func:`anomaly_graph` turns an autoencoder trained on standardised windows into a graph that takes the raw
readings and outputs the anomaly score itself (metadata ``"output": "score"``): the mean is subtracted
in the graph (SUB), ``1/std`` is folded into the first layer's weights, ``std`` into the last layer's, and
the score is the mean squared error in standardised units — exactly the same algebra as the agent's
numpy path (standardise, run, MSE), with one float32 value out instead of a window.

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


@dataclass(frozen=True)
class Sub:
    v: np.ndarray | float  # subtracted from the current tensor: a scalar or one value per element


@dataclass(frozen=True)
class Centre:
    """Subtract the tensor's own mean over all its values (MEAN with keep_dims, then SUB): per-window centring."""


@dataclass(frozen=True)
class SquaredError:
    w: np.ndarray  # (width,) weight of each squared difference; the output is their weighted sum, [1, 1]
    ref: int = 0  # compared against: 0 = the graph input, k = the output of layers[k - 1]


Layer = Dense | Unary | Scale | Sub | Centre | SquaredError


def anomaly_graph(layers: Sequence[Layer], mean: Sequence[float] | float, std: Sequence[float] | float,
                  window: int, centre: bool = False) -> list[Layer]:
    """An autoencoder over standardised windows as a raw-in, score-out graph (see the module doc).

    ``layers`` maps a standardised window ``z = (x - mean) / std`` (row-major ``(window, inputs)``, one
    mean/std per input or one for all) to its reconstruction; the first and the last layer must be
    Dense. The result computes ``score = mean((layers(z) - z)^2)`` from the raw ``x``:
    ``Sub(mean)``, first Dense with ``w / std`` (per input column), the hidden layers unchanged, last
    Dense with ``w * std`` and ``b * std`` (per output row) — i.e. the reconstruction of ``x - mean`` —
    then ``SquaredError`` against ``x - mean`` with weights ``1 / (n * std^2)``.

    ``centre=True``: ``layers`` was trained on *centred* standardised windows ``z - mean(z)`` (one input
    only): the graph starts with ``Centre()`` instead of ``Sub(mean)`` (centring removes any constant, so
    the training mean is not needed) and the score compares against the centred window.
    """
    first, last = layers[0], layers[-1]
    if not isinstance(first, Dense) or not isinstance(last, Dense) or len(layers) < 2:
        raise ValueError("anomaly_graph needs at least two layers, the first and the last Dense")
    m = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    sd = np.atleast_1d(np.asarray(std, dtype=np.float64))
    n_in = max(len(m), len(sd))
    m_full = np.tile(np.broadcast_to(m, (n_in,)), window)
    s_full = np.tile(np.broadcast_to(sd, (n_in,)), window)
    w1 = np.asarray(first.w, dtype=np.float64)
    wl, bl = np.asarray(last.w, dtype=np.float64), np.asarray(last.b, dtype=np.float64)
    if w1.shape[1] != len(m_full) or wl.shape[0] != len(m_full):
        raise ValueError(f"window {window} x {n_in} input(s) = {len(m_full)} values does not fit layers "
                         f"{w1.shape[1]} -> ... -> {wl.shape[0]}")
    if centre and n_in != 1:
        raise ValueError("anomaly_graph(centre=True) centres the whole window: one input only")
    sub: Sub | Centre = Centre() if centre else Sub(float(m[0]) if len(m) == 1 else m_full)
    return [sub, Dense(w1 / s_full[None, :], first.b, first.act), *layers[1:-1],
            Dense(wl * s_full[:, None], bl * s_full, last.act),
            SquaredError(1.0 / (len(s_full) * s_full ** 2), ref=1)]


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
        is_int = data is not None and np.asarray(data).dtype == np.int32  # only MEAN's axis
        t.type = s.TensorType.INT32 if is_int else s.TensorType.FLOAT32
        if data is None:
            t.buffer = 0
        else:
            b = s.BufferT()
            b.data = np.ascontiguousarray(data, dtype="<i4" if is_int else "<f4").tobytes()
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
    outs = [(cur, width)]  # outs[k]: the tensor after layers[:k] and its width (SquaredError's ref)
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
        elif isinstance(layer, Sub):
            v = np.atleast_1d(np.asarray(layer.v, dtype=np.float32))
            if v.shape not in ((1,), (width,)):
                raise ValueError(f"layer {i}: Sub needs 1 or {width} values, got {v.shape}")
            k = g.tensor(f"sub{i}/v", [1, width] if len(v) > 1 else [1], v)
            out = g.tensor(f"sub{i}/out", [1, width])
            g.op(s.BuiltinOperator.SUB, [cur, k], [out], s.BuiltinOptions.SubOptions, s.SubOptionsT())
            cur = out
        elif isinstance(layer, Centre):
            axis = g.tensor(f"centre{i}/axis", [1], np.array([1], dtype=np.int32))
            mu = g.tensor(f"centre{i}/mean", [1, 1])
            opt = s.ReducerOptionsT()
            opt.keepDims = True
            g.op(s.BuiltinOperator.MEAN, [cur, axis], [mu], s.BuiltinOptions.ReducerOptions, opt)
            out = g.tensor(f"centre{i}/out", [1, width])
            g.op(s.BuiltinOperator.SUB, [cur, mu], [out], s.BuiltinOptions.SubOptions, s.SubOptionsT())
            cur = out
        elif isinstance(layer, SquaredError):
            if not 0 <= layer.ref <= i:
                raise ValueError(f"layer {i}: SquaredError ref {layer.ref} must name an earlier tensor (0..{i})")
            ref, ref_w = outs[layer.ref]
            w = np.asarray(layer.w, dtype=np.float32).reshape(1, -1)
            if ref_w != width or w.shape[1] != width:
                raise ValueError(f"layer {i}: SquaredError compares width {width} with ref width {ref_w} "
                                 f"using {w.shape[1]} weights")
            sq = g.tensor(f"sqerr{i}/sq", [1, width])
            g.op(s.BuiltinOperator.SQUARED_DIFFERENCE, [cur, ref], [sq], s.BuiltinOptions.SquaredDifferenceOptions,
                 s.SquaredDifferenceOptionsT())
            wt = g.tensor(f"sqerr{i}/w", w.shape, w)
            bt = g.tensor(f"sqerr{i}/b", [1], np.zeros(1, np.float32))
            out = g.tensor(f"sqerr{i}/out", [1, 1])
            opt = s.FullyConnectedOptionsT()
            opt.fusedActivationFunction = s.ActivationFunctionType.NONE
            g.op(s.BuiltinOperator.FULLY_CONNECTED, [sq, wt, bt], [out], s.BuiltinOptions.FullyConnectedOptions, opt)
            cur, width = out, 1
        else:  # pragma: no cover - typing guards this
            raise TypeError(f"layer {i}: unknown layer {layer!r}")
        outs.append((cur, width))
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
    outs = [y]
    for layer in layers:
        if isinstance(layer, Sub):
            y = y - np.asarray(layer.v, np.float32)
        elif isinstance(layer, Centre):
            y = y - y.mean(axis=-1, keepdims=True, dtype=np.float32)
        elif isinstance(layer, SquaredError):
            d = y - outs[layer.ref]
            y = (d * d) @ np.asarray(layer.w, np.float32).reshape(-1, 1)
        elif isinstance(layer, Dense):
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
        y = y.astype(np.float32)
        outs.append(y)
    return y
