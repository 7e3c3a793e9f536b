"""Windows cut from numpy ring buffers, O(1) per reading.

A model sees a window of ``window`` rows, one column per input sensor. Rows are appended by the pipeline
tap (a sensor thread), so :meth:`Windower.push` must be cheap and must never block: it writes one row
into a preallocated ring and, every ``hop`` rows once the ring is full, returns a copy of the last
``window`` rows. Each row is written twice (at ``i`` and ``i + window``) so the latest window is always
one contiguous slice and the copy is a single memcpy, whatever the ring position.

Every row carries the seqs of the readings it was made of, so a result can name exactly which stored
readings produced it (``[first_seq, last_seq]``), and a test can prove none was lost.

With several inputs, :class:`RowAssembler` aligns them by sample-and-hold on the first input (the
"clock"): each reading of the first input makes a row with the latest value of every other input; rows
are made only once every input has reported at least once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(slots=True)
class Window:  # not frozen: a frozen dataclass's __init__ costs ~1 us per window; nobody mutates it
    values: np.ndarray  # (window, n_inputs) float32, raw (not yet preprocessed)
    first_seq: int
    last_seq: int
    first_ts: float
    last_ts: float
    index: int  # 0, 1, 2, ... per model since start
    bad: bool = False  # holds a NaN/inf (a non-numeric reading): not run, counted as bad input


class Windower:
    def __init__(self, window: int, hop: int, n_inputs: int = 1) -> None:
        if window < 1 or hop < 1 or n_inputs < 1:
            raise ValueError(f"window ({window}), hop ({hop}) and inputs ({n_inputs}) must be >= 1")
        self.window = window
        self.hop = hop
        self.n_inputs = n_inputs
        self._vals = np.zeros((2 * window, n_inputs), dtype=np.float32)
        self._col = self._vals[:, 0]  # single input: scalar writes into a 1-D view are ~10x cheaper
        # seqs and times live in plain lists: a list store is cheaper than a numpy scalar store
        self._lo = [0] * (2 * window)
        self._hi = [0] * (2 * window)
        self._ts = [0.0] * (2 * window)
        self._pos = 0  # next write position in [0, window)
        self._last_bad = -1  # row number of the latest non-finite row: O(1) "does this window hold one?"
        self.rows = 0  # rows pushed since start
        self._since = 0  # rows since the last window was cut
        self.cut = 0  # windows cut

    def push(self, values: Any, seq_lo: int, seq_hi: int, ts: float) -> Window | None:
        """Append one row (a float for one input, else a sequence of ``n_inputs`` values); return a
        new window when one is due (every ``hop`` rows, once ``window`` rows have been seen)."""
        p, w = self._pos, self.window
        q = p + w
        if self.n_inputs == 1 and isinstance(values, float):
            col = self._col
            col[p] = values
            col[q] = values
            if not -math.inf < values < math.inf:  # NaN or inf, without a numpy call
                self._last_bad = self.rows
        else:
            self._vals[p] = values
            self._vals[q] = values
            if not np.isfinite(self._vals[p]).all():
                self._last_bad = self.rows
        self._lo[p] = self._lo[q] = seq_lo
        self._hi[p] = self._hi[q] = seq_hi
        self._ts[p] = self._ts[q] = ts
        p += 1
        self._pos = 0 if p == w else p
        self.rows += 1
        self._since += 1
        if self._since < self.hop or self.rows < w:
            return None
        self._since = 0
        start = self._pos  # the oldest row of the window sits where the next write goes
        end = start + w
        idx = self.cut
        self.cut += 1
        if self.n_inputs == 1:
            first, last = self._lo[start], self._hi[end - 1]
        else:
            first, last = min(self._lo[start:end]), max(self._hi[start:end])
        return Window(self._vals[start:end].copy(), first, last, self._ts[start], self._ts[end - 1], idx,
                      self._last_bad > self.rows - 1 - w)

    def latest(self) -> np.ndarray | None:
        """A copy of the most recent full window's rows (for a model's test invoke), or None."""
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
