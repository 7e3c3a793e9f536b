"""The numbers around a model, in plain Python: window buffers, standardising, scores, statistics.

One implementation of each formula, used whichever runtime backend runs the model, so that the agent
never needs numpy when the LiteRT C API does the inference (:mod:`.litert_c`; numpy alone costs ~11 MB
of RSS). Windows are flat float32 buffers (``array('f')``, or a ``memoryview`` of format ``'f'``), rows
in time order, one value per input in each row.

Equal to the former numpy code within float32 rounding: numpy computed in float32, this computes in
float64 and rounds to float32 where a buffer is stored (tested against numpy in tests/inference).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any


def as_f32(x: Any, n: int | None = None) -> memoryview:
    """``x`` as a flat float32 memoryview of ``n`` values: a float32 buffer of any shape is cast in
    place (no copy); anything else (float64, ints, nested lists) is converted. ValueError if the number
    of values differs."""
    try:
        mv: memoryview | None = memoryview(x)
    except TypeError:
        mv = None
    if mv is not None and mv.format == "f" and mv.c_contiguous:
        flat = mv.cast("B").cast("f")
    else:
        flat = memoryview(array("f", flatten(x if mv is None else mv.tolist())))
    if n is not None and len(flat) != n:
        raise ValueError(f"a window of {len(flat)} values, the model's input holds {n}")
    return flat


def flatten(x: Any) -> list[float]:
    """Nested sequences (rows) of numbers as one flat list of floats."""
    if isinstance(x, int | float):
        return [float(x)]
    out: list[float] = []
    for v in x:
        if isinstance(v, list | tuple):
            out.extend(flatten(v))
        else:
            out.append(float(v))
    return out


def copy_f32(x: Any) -> array:
    """A flat float32 copy of window ``x`` (e.g. of a view of the ring, which the writer will overwrite)."""
    a = array("f")
    a.frombytes(as_f32(x).cast("B"))
    return a


def f32(values: Iterable[float]) -> tuple[float, ...]:
    """Values rounded to float32 (as a model's metadata mean/std are used)."""
    return tuple(array("f", values))


def standardise(x: Sequence[float], mean: Sequence[float], inv_std: Sequence[float]) -> array:
    """``(x - mean) * inv_std``, one mean/inv_std per input (column), as a new float32 window."""
    n = len(mean)
    if n == 1:
        m, k = mean[0], inv_std[0]
        return array("f", [(v - m) * k for v in x])
    return array("f", [(v - mean[i % n]) * inv_std[i % n] for i, v in enumerate(x)])


def mse(a: Sequence[float], b: Sequence[float]) -> float:
    """Mean squared difference of two windows of equal length (the reconstruction score)."""
    return math.fsum((p - q) * (p - q) for p, q in zip(a, b, strict=True)) / len(a)


def all_finite(x: Iterable[float]) -> bool:
    return all(map(math.isfinite, x))


def pstdev(x: Sequence[float]) -> float:
    """Population standard deviation (numpy's ``std`` with ``ddof=0``)."""
    n = len(x)
    m = math.fsum(x) / n
    return math.sqrt(math.fsum((v - m) * (v - m) for v in x) / n)


def median(x: Sequence[float]) -> float:
    s = sorted(x)
    n = len(s)
    h = n // 2
    return s[h] if n % 2 else (s[h - 1] + s[h]) / 2.0


def quantile(x: Sequence[float], q: float) -> float:
    """numpy's ``quantile(x, q)`` (method 'linear', including its two-sided interpolation)."""
    s = sorted(x)
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    t = h - lo
    a, b = s[lo], s[hi]
    d = b - a
    return b - d * (1.0 - t) if t >= 0.5 else a + d * t
