"""Windows cut from numpy ring buffers, O(1) per reading.

A model sees a window of ``window`` rows, one column per input sensor. Rows are appended by the pipeline
tap (a sensor thread), so :meth:`Windower.push` must be cheap and must never block: it writes one row
into a preallocated ring and, every ``hop`` rows once the ring is full, returns a copy of the last
``window`` rows. Each row is written twice (at ``i`` and ``i + window``) so the latest window is always
one contiguous slice and the copy is a single memcpy, whatever the ring position.

The copy comes out already in the model's usual input layout, ``(1, window * inputs)`` float32 (rows in
time order, row-major), so it can go to ``set_tensor`` as it is: :attr:`Window.x`. :attr:`Window.values`
is the same data as ``(window, inputs)`` rows.

Every row carries the seqs of the readings it was made of, so a result can name exactly which stored
readings produced it (``[first_seq, last_seq]``), and a test can prove none was lost.

With several inputs, :class:`RowAssembler` aligns them by sample-and-hold on the first input (the
"clock"): each reading of the first input makes a row with the latest value of every other input; rows
are made only once every input has reported at least once.

Cost (single input, float readings, CPython 3.11): ~0.2 us per push, plus ~0.3 us when it cuts a window
(the 128-byte copy and the :class:`Window` tuple); see ``bench/inference.py``.
"""

from __future__ import annotations

import math
from operator import itemgetter
from typing import Any

import numpy as np


class Window(tuple):  # type: ignore[type-arg]
    """One cut window: ``(x, first_seq, last_seq, first_ts, last_ts, index, bad, n_inputs)``.

    A tuple subclass rather than a dataclass because one is made per window on the sensor thread: the
    windower builds it with a single ``tuple.__new__`` call (~0.1 us less than a slotted dataclass's
    ``__init__``) and the worker unpacks it in one step; the named properties are for everyone else.
    """

    __slots__ = ()

    def __new__(cls, x: np.ndarray, first_seq: int, last_seq: int, first_ts: float, last_ts: float, index: int,
                bad: bool = False, n_inputs: int = 1) -> Window:
        return _tuple_new(cls, (x, first_seq, last_seq, first_ts, last_ts, index, bad, n_inputs))

    x = property(itemgetter(0), doc="(1, window * n_inputs) float32, raw (not preprocessed), rows in time "
                                    "order, row-major: the model's usual input layout")
    first_seq = property(itemgetter(1), doc="seq of the oldest reading in the window")
    last_seq = property(itemgetter(2), doc="seq of the newest reading in the window")
    first_ts = property(itemgetter(3))
    last_ts = property(itemgetter(4))
    index = property(itemgetter(5), doc="0, 1, 2, ... per model since start")
    bad = property(itemgetter(6), doc="holds a NaN/inf (a non-numeric reading): not run, counted as bad input")
    n_inputs = property(itemgetter(7))

    @property
    def values(self) -> np.ndarray:
        """The window as ``(window, n_inputs)`` rows (a view of :attr:`x`)."""
        return self[0].reshape(-1, self[7])


_tuple_new = tuple.__new__


class Windower:
    def __init__(self, window: int, hop: int, n_inputs: int = 1) -> None:
        if window < 1 or hop < 1 or n_inputs < 1:
            raise ValueError(f"window ({window}), hop ({hop}) and inputs ({n_inputs}) must be >= 1")
        self.window = window
        self.hop = hop
        self.n_inputs = n_inputs
        n = n_inputs
        self._ring = np.zeros(2 * window * n, dtype=np.float32)
        self._vals = self._ring.reshape(2 * window, n)  # row view (several inputs)
        # single input: a float store through a memoryview is ~2x cheaper than a numpy scalar store
        self._mv = memoryview(self._ring)
        # the window starting at ring row k, already shaped as the model input: cutting = one .copy()
        self._views = [self._ring[k * n:(k + window) * n].reshape(1, window * n) for k in range(window)]
        # seqs and times live in plain lists: a list store is cheaper than a numpy scalar store
        self._lo = [0] * (2 * window)
        self._hi = [0] * (2 * window)
        self._ts = [0.0] * (2 * window)
        self._pos = 0  # next write position in [0, window)
        self._last_bad = -1  # row number of the latest non-finite row: O(1) "does this window hold one?"
        self._due = window  # the row count at which the next window is cut
        self.rows = 0  # rows pushed since start
        self.cut = 0  # windows cut

    def push(self, values: Any, seq_lo: int, seq_hi: int, ts: float) -> Window | None:
        """Append one row (a float for one input, else a sequence of ``n_inputs`` values); return a
        new window when one is due (every ``hop`` rows, once ``window`` rows have been seen)."""
        p = self._pos
        w = self.window
        rows = self.rows
        if values.__class__ is float and self.n_inputs == 1:  # the tap's case: every line here is counted
            mv = self._mv
            mv[p] = mv[p + w] = values
            if values - values:  # x - x is 0.0 for a finite x, NaN (truthy) for NaN and +-inf
                self._last_bad = rows
            # one input: a window's first seq/ts is its oldest row's, its last are the newest row's (the
            # arguments), so each is stored once (the oldest row sits where the next write goes)
            self._lo[p] = seq_lo
            self._ts[p] = ts
        else:
            self._push_row(p, values, seq_lo, seq_hi, ts)
        rows += 1
        self.rows = rows
        p += 1
        if p == w:
            p = 0
        self._pos = p
        if rows < self._due:
            return None
        self._due = rows + self.hop
        idx = self.cut
        self.cut = idx + 1
        bad = self._last_bad > rows - 1 - w
        if self.n_inputs == 1:  # p is now the oldest row of the window
            return _tuple_new(Window, (self._views[p].copy(), self._lo[p], seq_hi, self._ts[p], ts, idx, bad, 1))
        end = p + w
        return _tuple_new(Window, (self._views[p].copy(), min(self._lo[p:end]), max(self._hi[p:end]), self._ts[p],
                                   ts, idx, bad, self.n_inputs))

    def _push_row(self, p: int, values: Any, seq_lo: int, seq_hi: int, ts: float) -> None:
        """The general row write: several inputs, or a non-float value for one input."""
        q = p + self.window
        self._vals[p] = values
        self._vals[q] = values
        if not np.isfinite(self._vals[p]).all():
            self._last_bad = self.rows
        self._lo[p] = self._lo[q] = seq_lo
        self._hi[p] = self._hi[q] = seq_hi
        self._ts[p] = self._ts[q] = ts

    def latest(self) -> np.ndarray | None:
        """A copy of the most recent full window's rows, ``(window, n_inputs)`` (for a test invoke), or None."""
        if self.rows < self.window:
            return None
        return self._vals[self._pos:self._pos + self.window].copy()


def as_float(v: Any) -> float:
    """A reading value as float; anything non-numeric becomes NaN (the window is then not run)."""
    if isinstance(v, float):
        return v
    if isinstance(v, int | np.integer | np.floating) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, bool):
        return float(v)
    return math.nan


class RowAssembler:
    """Sample-and-hold alignment of several inputs on the first one (see module doc)."""

    def __init__(self, n_inputs: int) -> None:
        self.n = n_inputs
        self.values = np.full(n_inputs, np.nan, dtype=np.float32)
        self.seqs = np.zeros(n_inputs, dtype=np.int64)
        self._seen = 0
        self._have = [False] * n_inputs

    def put(self, col: int, value: float, seq: int) -> bool:
        """Record input ``col``; True when a row is due (the clock input reported and all have values)."""
        self.values[col] = value
        self.seqs[col] = seq
        if not self._have[col]:
            self._have[col] = True
            self._seen += 1
        return col == 0 and self._seen == self.n
