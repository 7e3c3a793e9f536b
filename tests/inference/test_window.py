"""Windowing: ring buffers cut the right rows, at the right hop, with the right seq ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.inference.window import RowAssembler, Windower, as_float


def test_windows_every_hop_with_seq_and_ts_ranges() -> None:
    w = Windower(window=4, hop=2)
    out = []
    for i in range(11):
        win = w.push([float(i)], seq_lo=100 + i, seq_hi=100 + i, ts=10.0 + i)
        if win is not None:
            out.append(win)
    # first window once 4 rows are in, then every 2 rows: rows 0-3, 2-5, 4-7, 6-9
    assert [list(x.values[:, 0]) for x in out] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert [(x.first_seq, x.last_seq) for x in out] == [(100, 103), (102, 105), (104, 107), (106, 109)]
    assert [(x.first_ts, x.last_ts) for x in out] == [(10, 13), (12, 15), (14, 17), (16, 19)]
    assert [x.index for x in out] == [0, 1, 2, 3]
    assert w.cut == 4 and w.rows == 11


def test_window_is_a_copy_not_a_view_of_the_ring() -> None:
    w = Windower(window=3, hop=3)
    first = [w.push([v], v, v, v) for v in (1.0, 2.0, 3.0)][-1]
    assert first is not None
    for v in (7.0, 8.0, 9.0):
        w.push([v], int(v), int(v), v)
    assert list(first.values[:, 0]) == [1, 2, 3]
    latest = w.latest()
    assert latest is not None and list(latest[:, 0]) == [7, 8, 9]


def test_no_overlap_default_tiles_the_stream_exactly() -> None:
    w = Windower(window=5, hop=5)
    wins = [x for i in range(1, 23) if (x := w.push([i], i, i, i)) is not None]
    covered = [s for x in wins for s in range(x.first_seq, x.last_seq + 1)]
    assert covered == list(range(1, 21))  # 4 windows; rows 21-22 wait for the next one


def test_multi_input_sample_and_hold_on_first_input() -> None:
    a = RowAssembler(2)
    w = Windower(window=2, hop=1, n_inputs=2)
    assert not a.put(0, 1.0, seq=1)  # input 1 has not reported yet: no row
    assert not a.put(1, 10.0, seq=2)  # not the clock input
    assert a.put(0, 2.0, seq=3)
    assert w.push(a.values, int(a.seqs.min()), 3, 0.0) is None
    assert not a.put(1, 20.0, seq=4)
    assert a.put(0, 3.0, seq=5)
    win = w.push(a.values, int(a.seqs.min()), 5, 1.0)
    assert win is not None
    assert win.values.tolist() == [[2.0, 10.0], [3.0, 20.0]]
    assert (win.first_seq, win.last_seq) == (2, 5)


def test_bad_values_become_nan_and_bad_sizes_are_refused() -> None:
    assert as_float(3) == 3.0 and as_float(2.5) == 2.5 and as_float(np.float32(1.5)) == 1.5
    assert math.isnan(as_float(None)) and math.isnan(as_float("x"))
    with pytest.raises(ValueError, match="must be >= 1"):
        Windower(window=0, hop=1)


def test_bad_rows_flag_exactly_the_windows_that_hold_them() -> None:
    w = Windower(window=3, hop=1)
    vals = [1.0, 2.0, math.nan, 4.0, 5.0, 6.0, math.inf, 8.0]
    flags = [x.bad for i, v in enumerate(vals) if (x := w.push(v, i, i, 0.0)) is not None]
    # windows end at rows 2..7: [1,2,nan] [2,nan,4] [nan,4,5] [4,5,6] [5,6,inf] [6,inf,8]
    assert flags == [True, True, True, False, True, True]
    m = Windower(window=2, hop=1, n_inputs=2)
    flags = [x.bad for r in ([1, 2], [3, math.nan], [5, 6], [7, 8]) if (x := m.push(r, 0, 0, 0.0)) is not None]
    assert flags == [True, True, False]


def test_window_comes_out_in_the_model_input_layout() -> None:
    w = Windower(window=3, hop=3, n_inputs=2)
    win = [w.push([float(i), 10.0 * i], i, i, float(i)) for i in range(3)][-1]
    assert win is not None and win.x.shape == (1, 6) and win.x.dtype == np.float32 and win.x.flags.c_contiguous
    assert win.x.tolist() == [[0, 0, 1, 10, 2, 20]]  # rows in time order, row-major
    assert win.values.tolist() == [[0, 0], [1, 10], [2, 20]] and win.n_inputs == 2
    one = Windower(window=4, hop=1)
    for i in range(5):
        last = one.push(float(i), 100 + i, 100 + i, float(i))
    assert last is not None and last.x.shape == (1, 4) and last.x.tolist() == [[1, 2, 3, 4]]
    xs, first, lastseq, t0, t1, idx, bad, n = last  # the worker unpacks it in one step
    assert xs is last.x and (first, lastseq, t0, t1, idx, bad, n) == (101, 104, 1.0, 4.0, 1, False, 1)
