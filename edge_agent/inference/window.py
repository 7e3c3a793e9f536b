"""Windows read in place from float32 ring buffers (``array('f')``), O(1) per reading.

A model sees a window of ``window`` rows, one column per input sensor. Rows are appended by the pipeline
tap (a sensor thread), so :meth:`Windower.push` must be cheap and must never block: it writes one row
into a preallocated ring and says when a window is due (every ``hop`` rows once ``window`` rows are in).
It copies nothing and allocates nothing per window: the worker reads window ``k`` straight out of the ring
with :meth:`Windower.get`, a view that is copied into the model's input as it is, and checks :meth:`Windower.intact`
afterwards (a lock-free read: if the writer has lapped the window meanwhile, the result is discarded and
the window counted as skipped). Rows at the start of the ring are written twice (at ``i`` and
``i + capacity``) so every window is one contiguous slice, whatever the ring position.

The ring holds ``keep`` due windows (the config's ``queue``) plus a margin, so a worker that falls behind
loses the oldest windows, counted, and memory never grows.

A window comes out as a flat float32 ``memoryview`` of ``window * inputs`` values (rows in time order,
row-major): :attr:`Window.x`. :attr:`Window.values` is the same data as ``(window, inputs)`` rows. On
the Python-wrapper backend, :meth:`Windower.use_numpy` makes ``x`` a numpy ``(1, window * inputs)``
view of the same ring instead (what ``set_tensor`` takes without conversion); numpy is imported only
then.

Every row carries the seqs of the readings it was made of, so a result can name exactly which stored
readings produced it (``[first_seq, last_seq]``), and a test can prove none was lost.

With several inputs, :class:`RowAssembler` aligns them by sample-and-hold on the first input (the
"clock"): each reading of the first input makes a row with the latest value of every other input; rows
are made only once every input has reported at least once.

Cost (single input, float readings, CPython 3.11): ~0.25 us per push; see ``bench/inference.py``.
"""

from __future__ import annotations

import math
from array import array
from numbers import Real
from operator import itemgetter
from typing import Any


class Window(tuple):  # type: ignore[type-arg]
    """One window: ``(x, first_seq, last_seq, first_ts, last_ts, index, bad, n_inputs)``.

    A tuple subclass rather than a dataclass because one is made per window on the worker's hot path: the
    windower builds it with a single ``tuple.__new__`` call (~0.1 us less than a slotted dataclass's
    ``__init__``) and the worker unpacks it in one step; the named properties are for everyone else.
    """

    __slots__ = ()

    def __new__(cls, x: Any, first_seq: int, last_seq: int, first_ts: float, last_ts: float, index: int,
                bad: bool = False, n_inputs: int = 1) -> Window:
        return _tuple_new(cls, (x, first_seq, last_seq, first_ts, last_ts, index, bad, n_inputs))

    x = property(itemgetter(0), doc="window * n_inputs float32 values, raw (not preprocessed), rows in time "
                                    "order, row-major (a memoryview; numpy (1, n) after use_numpy). From "
                                    "Windower.get a view of the ring (see Windower.intact)")
    first_seq = property(itemgetter(1), doc="seq of the oldest reading in the window")
    last_seq = property(itemgetter(2), doc="seq of the newest reading in the window")
    first_ts = property(itemgetter(3))
    last_ts = property(itemgetter(4))
    index = property(itemgetter(5), doc="0, 1, 2, ... per model since start")
    bad = property(itemgetter(6), doc="holds a NaN/inf (a non-numeric reading): not run, counted as bad input")
    n_inputs = property(itemgetter(7))

    @property
    def values(self) -> Any:
        """The window as ``(window, n_inputs)`` rows (a view of :attr:`x`; ``.tolist()`` gives lists)."""
        x, n = self[0], self[7]
        if hasattr(x, "reshape"):  # numpy (use_numpy)
            return x.reshape(-1, n)
        return memoryview(x).cast("B").cast("f", [len(x) // n, n])


_tuple_new = tuple.__new__


class Windower:
    """A ring of the newest rows of one model's input(s); windows are read from it in place.

    ``keep`` is how many due windows may wait for the worker: the ring holds ``window + hop * keep`` rows
    plus a margin (at least ``hop`` and 16 rows) for readings that arrive while the worker reads.
    """

    def __init__(self, window: int, hop: int, n_inputs: int = 1, keep: int = 1) -> None:
        if window < 1 or hop < 1 or n_inputs < 1 or keep < 1:
            raise ValueError(f"window ({window}), hop ({hop}), inputs ({n_inputs}) and keep ({keep}) must be >= 1")
        self.window = window
        self.hop = hop
        self.n_inputs = n_inputs
        self.keep = keep
        c = window + hop * keep + max(hop, 16)
        self.capacity = c
        n = n_inputs
        # rows 0..c-1, and again the first `window` rows at c..c+window-1: every window is one slice
        self._ring = array("f", bytes(4 * (c + window) * n))
        # stores go through a memoryview (a float store ~30 ns); the array is never resized
        self._mv = memoryview(self._ring)
        # the window starting at ring row s, as the model input takes it: made once (a list lookup), or for a
        # very large ring sliced per window (~0.1 us)
        self._views: Any = [self._mv[s * n:(s + window) * n] for s in range(c)] if c <= 4096 else None
        # seqs, times and bad-row marks live in array.arrays: a store costs ~30 ns (a numpy scalar store
        # ~80 ns, a list store 13 ns but a list also keeps a Python object per row alive: 3x the memory).
        # _bad[s] is the row number of the latest non-finite row at or before the row at s, so "does this
        # window hold one?" is one comparison. Mirrored like the ring (several inputs take min/max over a
        # slice). Memory: 4 bytes per input + 32 per row (config.MODEL_RING_ROW_BYTES, for its size check).
        self._lo = array("q", bytes(8 * (c + window)))
        self._hi = array("q", bytes(8 * (c + window)))
        self._ts = array("d", bytes(8 * (c + window)))
        self._bad = array("q", [-1]) * c
        self._pos = 0  # ring row of the next write: rows % capacity
        self._last_bad = -1  # row number of the latest non-finite row
        self._due = window  # the row count at which the next window is due
        self.rows = 0  # rows pushed since start
        self.cut = 0  # windows due since start (window k holds rows k*hop .. k*hop+window-1)
        self._np: Any = None  # numpy, once use_numpy() made the views numpy arrays

    def push(self, values: Any, seq_lo: int, seq_hi: int, ts: float) -> bool:
        """Append one row (a float for one input, else a sequence of ``n_inputs`` values); True when it
        completes a window (every ``hop`` rows, once ``window`` rows have been seen): window ``cut - 1``."""
        p = self._pos
        rows = self.rows
        if values.__class__ is float and self.n_inputs == 1:  # the tap's case: every line here is counted
            mv = self._mv
            mv[p] = values
            if p < self.window:
                mv[p + self.capacity] = values
            if values - values:  # x - x is 0.0 for a finite x, NaN (truthy) for NaN and +-inf
                self._last_bad = rows
            # one input: a window's first seq/ts is its oldest row's and its last its newest row's, read
            # from the ring position directly, so these lists need no mirror
            self._lo[p] = seq_lo
            self._hi[p] = seq_hi
            self._ts[p] = ts
        else:
            self._push_row(p, values, seq_lo, seq_hi, ts)
        self._bad[p] = self._last_bad
        rows += 1
        p += 1
        if p == self.capacity:
            p = 0
        self._pos = p
        self.rows = rows  # last: a reader that sees this count sees the row's data
        if rows < self._due:
            return False
        self._due = rows + self.hop
        self.cut += 1
        return True

    def _push_row(self, p: int, values: Any, seq_lo: int, seq_hi: int, ts: float) -> None:
        """The general row write: several inputs, or a non-float value for one input."""
        n = self.n_inputs
        row = values if values.__class__ is array and values.typecode == "f" else array(
            "f", [values] * n if isinstance(values, Real) else values)
        if len(row) != n:
            raise ValueError(f"a row of {len(row)} values for {n} input(s)")
        self._mv[p * n:(p + 1) * n] = row
        for v in row:
            if v - v:  # NaN (truthy) for NaN and +-inf
                self._last_bad = self.rows
                break
        self._lo[p] = seq_lo
        self._hi[p] = seq_hi
        self._ts[p] = ts
        if p < self.window:
            q = p + self.capacity
            self._mv[q * n:(q + 1) * n] = row
            self._lo[q] = seq_lo
            self._hi[q] = seq_hi
            self._ts[q] = ts

    def get(self, k: int) -> Window | None:
        """Window ``k`` (0 <= k < cut) read in place: its ``x`` is a view of the ring, no copy. None if
        the ring has already overwritten part of it (the reader fell more than ``keep`` windows behind).

        The view stays valid only while :meth:`intact` says so: a reader on another thread than the
        writer uses the data (e.g. ``set_tensor``), then checks ``intact(k)`` and discards the result if
        it is False. A window to keep is copied: ``win.x.copy()``."""
        r0 = k * self.hop
        c = self.capacity
        if k >= self.cut or self.rows >= r0 + c:
            return None
        s = r0 % c
        e = (r0 + self.window - 1) % c
        views = self._views
        x = views[s] if views is not None else self._view(s)
        bad = self._bad[e] >= r0
        if self.n_inputs == 1:
            return _tuple_new(Window, (x, self._lo[s], self._hi[e], self._ts[s], self._ts[e], k, bad, 1))
        end = s + self.window
        return _tuple_new(Window, (x, min(self._lo[s:end]), max(self._hi[s:end]), self._ts[s], self._ts[e], k,
                                   bad, self.n_inputs))

    def _view(self, s: int) -> Any:
        n = self.n_inputs
        x = self._mv[s * n:(s + self.window) * n]
        return x if self._np is None else self._np.frombuffer(x, self._np.float32).reshape(1, -1)

    def use_numpy(self) -> None:
        """Windows come out as numpy ``(1, window * inputs)`` float32 views of the same ring (for a Python
        wrapper's ``set_tensor``, which takes them without conversion). Imports numpy."""
        if self._np is not None:
            return
        import numpy as np

        self._np = np
        if self._views is not None:
            self._views = [np.frombuffer(v, np.float32).reshape(1, -1) for v in self._views]

    def intact(self, k: int) -> bool:
        """True while no row of window ``k`` has been overwritten (nor is being written) in the ring."""
        # the writer may be half-way through row number `rows` (data written, count not yet): that row
        # overwrites row `rows - capacity`, so the window's first row must be newer than that
        return self.rows < k * self.hop + self.capacity

    def latest(self) -> array | None:
        """A copy of the most recent full window, flat float32 (for a test invoke), or None."""
        if self.rows < self.window:
            return None
        s = (self.rows - self.window) % self.capacity
        n = self.n_inputs
        return array("f", self._mv[s * n:(s + self.window) * n])


def as_float(v: Any) -> float:
    """A reading value as float; anything non-numeric becomes NaN (the window is then not run)."""
    if isinstance(v, float):
        return v
    if isinstance(v, int):  # bool too
        return float(v)
    if isinstance(v, Real):  # numpy scalars, Fraction
        return float(v)
    return math.nan


class RowAssembler:
    """Sample-and-hold alignment of several inputs on the first one (see module doc)."""

    def __init__(self, n_inputs: int) -> None:
        self.n = n_inputs
        self.values = array("f", [math.nan]) * n_inputs
        self.seqs = array("q", [0]) * n_inputs
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
