"""Windowing: ring buffers give the right rows, at the right hop, with the right seq ranges, read in place."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.inference.numeric import copy_f32
from edge_agent.inference.window import RowAssembler, Window, Windower, as_float


def pushed(w: Windower, values: list, seqs: list[int] | None = None, ts: list[float] | None = None) -> list[Window]:
    """Push rows one by one; every window as soon as it is due, copied (as a caller that keeps it must)."""
    out = []
    for i, v in enumerate(values):
        s = seqs[i] if seqs else i
        if w.push(v, s, s, ts[i] if ts else float(i)):
            win = w.get(w.cut - 1)
            assert win is not None
            out.append(Window(copy_f32(win.x), *win[1:]))
    return out


def test_windows_every_hop_with_seq_and_ts_ranges() -> None:
    w = Windower(window=4, hop=2)
    out = pushed(w, [[float(i)] for i in range(11)], [100 + i for i in range(11)], [10.0 + i for i in range(11)])
    # first window once 4 rows are in, then every 2 rows: rows 0-3, 2-5, 4-7, 6-9
    assert [[r[0] for r in x.values.tolist()] for x in out] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert [(x.first_seq, x.last_seq) for x in out] == [(100, 103), (102, 105), (104, 107), (106, 109)]
    assert [(x.first_ts, x.last_ts) for x in out] == [(10, 13), (12, 15), (14, 17), (16, 19)]
    assert [x.index for x in out] == [0, 1, 2, 3]
    assert w.cut == 4 and w.rows == 11
    assert w.get(4) is None  # not due yet


def test_get_reads_in_place_and_intact_says_when_the_ring_lapped_it() -> None:
    w = Windower(window=3, hop=1, keep=2)
    c = w.capacity
    assert c == 3 + 1 * 2 + 16
    for v in range(3):
        w.push(float(v), v, v, float(v))
    first = w.get(0)
    assert first is not None and first.x.tolist() == [0, 1, 2] and first.x.obj is w._ring  # a view
    for v in range(3, c - 1):  # rows 3 .. c-2
        w.push(float(v), v, v, float(v))
    assert w.intact(0) and first.x.tolist() == [0, 1, 2]
    w.push(float(c - 1), c - 1, c - 1, float(c - 1))  # the ring is full: the next row will land on row 0
    # conservative: a reader on another thread cannot tell whether that next write has started
    assert not w.intact(0) and w.get(0) is None and first.x.tolist() == [0, 1, 2]
    w.push(float(c), c, c, float(c))  # row c lands on row 0's slot
    assert not w.intact(0) and first.x[0] == c
    assert not w.intact(1) and w.intact(2)  # row 1 is next to go; rows 2..4 are safe
    latest = w.latest()
    assert latest is not None and list(latest) == [c - 2, c - 1, c]
    # every window position (also the ones that wrap round the end of the ring) is one contiguous slice
    for k in range(w.cut - 5, w.cut):
        win = w.get(k)
        assert win is not None and win.x.c_contiguous and win.x.tolist() == [k, k + 1, k + 2]
        assert (win.first_seq, win.last_seq, win.first_ts, win.last_ts) == (k, k + 2, k, k + 2)


def test_no_overlap_default_tiles_the_stream_exactly() -> None:
    w = Windower(window=5, hop=5)
    wins = pushed(w, [[i] for i in range(1, 23)], list(range(1, 23)))
    covered = [s for x in wins for s in range(x.first_seq, x.last_seq + 1)]
    assert covered == list(range(1, 21))  # 4 windows; rows 21-22 wait for the next one


def test_multi_input_sample_and_hold_on_first_input() -> None:
    a = RowAssembler(2)
    w = Windower(window=2, hop=1, n_inputs=2)
    assert not a.put(0, 1.0, seq=1)  # input 1 has not reported yet: no row
    assert not a.put(1, 10.0, seq=2)  # not the clock input
    assert a.put(0, 2.0, seq=3)
    assert not w.push(a.values, min(a.seqs), 3, 0.0)
    assert not a.put(1, 20.0, seq=4)
    assert a.put(0, 3.0, seq=5)
    assert w.push(a.values, min(a.seqs), 5, 1.0)
    win = w.get(0)
    assert win is not None
    assert win.values.tolist() == [[2.0, 10.0], [3.0, 20.0]]
    assert (win.first_seq, win.last_seq) == (2, 5)


def test_multi_input_windows_across_the_ring_mirror() -> None:
    w = Windower(window=3, hop=1, n_inputs=2, keep=1)
    rows = [[float(i), 100.0 + i] for i in range(3 * w.capacity)]
    for i, r in enumerate(rows):
        assert w.push(r, 10 * i, 10 * i + 1, float(i)) == (i >= 2)
        win = w.get(w.cut - 1) if i >= 2 else None
        if win is not None:
            assert win.values.tolist() == rows[i - 2:i + 1]
            assert (win.first_seq, win.last_seq, win.first_ts, win.last_ts) == (10 * (i - 2), 10 * i + 1, i - 2, i)


def test_bad_values_become_nan_and_bad_sizes_are_refused() -> None:
    assert as_float(3) == 3.0 and as_float(2.5) == 2.5 and as_float(np.float32(1.5)) == 1.5
    assert math.isnan(as_float(None)) and math.isnan(as_float("x"))
    with pytest.raises(ValueError, match="must be >= 1"):
        Windower(window=0, hop=1)
    with pytest.raises(ValueError, match="keep"):
        Windower(window=2, hop=1, keep=0)


def test_bad_rows_flag_exactly_the_windows_that_hold_them() -> None:
    w = Windower(window=3, hop=1)
    vals = [1.0, 2.0, math.nan, 4.0, 5.0, 6.0, math.inf, 8.0]
    flags = [x.bad for x in pushed(w, vals)]
    # windows end at rows 2..7: [1,2,nan] [2,nan,4] [nan,4,5] [4,5,6] [5,6,inf] [6,inf,8]
    assert flags == [True, True, True, False, True, True]
    m = Windower(window=2, hop=1, n_inputs=2)
    flags = [x.bad for x in pushed(m, [[1, 2], [3, math.nan], [5, 6], [7, 8]])]
    assert flags == [True, True, False]


def test_bad_flag_is_right_when_read_late() -> None:
    """The worker reads a window after newer rows arrived: a later NaN must not hide an earlier one, nor
    flag a clean window."""
    w = Windower(window=2, hop=1, keep=8)
    for i, v in enumerate([1.0, math.nan, 3.0, 4.0, 5.0, math.nan, 7.0]):
        w.push(v, i, i, 0.0)
    flags = []
    for k in range(w.cut):
        win = w.get(k)
        assert win is not None
        flags.append(win.bad)
    # windows: [1,nan] [nan,3] [3,4] [4,5] [5,nan] [nan,7]
    assert flags == [True, True, False, False, True, True]


def test_window_comes_out_in_the_model_input_layout() -> None:
    w = Windower(window=3, hop=3, n_inputs=2)
    for i in range(3):
        w.push([float(i), 10.0 * i], i, i, float(i))
    win = w.get(0)
    assert win is not None and win.x.format == "f" and win.x.shape == (6,) and win.x.c_contiguous
    assert win.x.tolist() == [0, 0, 1, 10, 2, 20]  # rows in time order, row-major
    assert win.values.tolist() == [[0, 0], [1, 10], [2, 20]] and win.n_inputs == 2
    one = Windower(window=4, hop=1)
    last = pushed(one, [float(i) for i in range(5)], [100 + i for i in range(5)])[-1]
    assert last.x.tolist() == [1, 2, 3, 4]
    xs, first, lastseq, t0, t1, idx, bad, n = last  # the worker unpacks it in one step
    assert xs is last.x and (first, lastseq, t0, t1, idx, bad, n) == (101, 104, 1.0, 4.0, 1, False, 1)


def test_use_numpy_gives_numpy_views_of_the_same_ring() -> None:
    """For a Python wrapper's set_tensor: (1, window * inputs) float32 views, still read in place."""
    w = Windower(window=3, hop=3, n_inputs=2)
    w.use_numpy()
    for i in range(3):
        w.push([float(i), 10.0 * i], i, i, float(i))
    win = w.get(0)
    assert win is not None and isinstance(win.x, np.ndarray)
    assert win.x.shape == (1, 6) and win.x.dtype == np.float32 and win.x.flags.c_contiguous
    assert win.x.tolist() == [[0, 0, 1, 10, 2, 20]] and win.values.tolist() == [[0, 0], [1, 10], [2, 20]]
    for i in range(3, 3 + w.capacity):  # round the ring and over the mirror rows: still the same values
        w.push([float(i), 10.0 * i], i, i, float(i))
    k = w.cut - 1
    win = w.get(k)
    assert win is not None and win.x.tolist() == [[v for r in range(3 * k, 3 * k + 3) for v in (r, 10 * r)]]


def test_intact_never_vouches_for_a_lapped_window() -> None:
    """The reader's protocol: get(k), use the data, then intact(k). Whatever the writer did in between
    (m whole rows, and then half of the next one: its value written, the count not yet), a window that
    intact() accepts still holds exactly its own rows. Deterministic, so every interleaving is covered;
    with intact() off by a single row this fails."""
    checked = lapped = 0
    for m in range(40):
        w = Windower(window=4, hop=1, keep=2)
        for i in range(30):
            w.push(float(i), i, i, float(i))
        wins = [win for k in range(w.cut) if (win := w.get(k)) is not None]
        for i in range(30, 30 + m):
            w.push(float(i), i, i, float(i))
        p = w.rows % w.capacity  # the writer is half-way through the next row
        w._mv[p] = -1.0
        if p < w.window:
            w._mv[p + w.capacity] = -1.0
        for win in wins:
            k = win.index
            if w.intact(k):
                checked += 1
                assert win.x.tolist() == [k, k + 1, k + 2, k + 3], (m, k)
            else:
                lapped += 1
    assert checked > 100 and lapped > 100


@pytest.mark.parametrize("numpy_views", [False, True])
def test_a_large_ring_slices_each_window_on_demand(numpy_views: bool) -> None:
    """Above 4096 rows no per-position views are kept: each window is sliced when read, same values."""
    w = Windower(window=4, hop=1, keep=5000)
    assert w.capacity > 4096 and w._views is None
    if numpy_views:
        w.use_numpy()
    for i in range(w.capacity + 100):  # round the ring once, over the mirror rows
        w.push(float(i), i, i, float(i))
    for k in (w.cut - 1, w.cut - 4000):
        win = w.get(k)
        assert win is not None and isinstance(win.x, np.ndarray) is numpy_views
        assert np.asarray(win.x).reshape(-1).tolist() == [k, k + 1, k + 2, k + 3]
