"""The worker's direct runs (Slot.run_direct): a model that takes the raw window and gives the score runs
a whole run of windows back to back. Same results, same counters, same failure handling as one window at
a time; a real interpreter and, end to end, a real Pipeline and SQLite outbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.inference.model import NonFiniteOutput, load
from edge_agent.inference.slot import Slot
from tests.inference.conftest import model_cfg, model_files, tb

W = 4


def sum_model(tmp: Path, name: str = "m") -> Path:
    """score = 10 * sum(window): raw in, score out (the direct path); 1e38 in a window overflows to inf."""
    p, _, _ = model_files(tmp / name, [tb.Dense(np.full((1, W), 10.0), np.zeros(1))], n_in=W, name=name,
                          output="score", threshold=1e9)
    return p


def loaded(tmp: Path, values: list[float], queue: int = 100) -> tuple[Slot, Any]:
    cfg = model_cfg(sum_model(tmp), window=W, queue=queue)
    slot = Slot(cfg, tmp / "state")
    model = load(cfg, Path(cfg.path))
    assert model.raw_score is not None, "the test model must take the direct path"
    for k, v in enumerate(values):
        slot.windower.push(float(v), k, k, 1000.0 + k)
    return slot, model


def test_a_direct_run_gives_what_one_window_at_a_time_gives_and_stops_at_a_failure(tmp_path: Path) -> None:
    # windows (hop = window): 0 ok, 1 holds a NaN (bad input), 2 overflows to inf (a failure), 3 and 4 ok
    vals = [1, 2, 3, 4, 5, float("nan"), 7, 8, 1e38, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    slot, model = loaded(tmp_path, vals)
    assert slot.windower.cut == 5
    done: list[Any] = []
    assert slot.run_direct(model, 5, done)
    # the run ends at the failure; what comes after it is run again after the failure is handled
    assert slot.next == 3 and slot.bad_input == 1 and slot.skipped == 0
    (w0, s0, f0, k0), (w2, s2, f2, _) = done
    assert (w0.index, s0, f0, k0) == (0, 100.0, None, None)
    assert w0.first_seq == 0 and w0.last_seq == 3
    assert w2.index == 2 and s2 is None and isinstance(f2, NonFiniteOutput) and "non-finite score" in str(f2)
    done.clear()
    assert slot.run_direct(model, 5, done)
    assert slot.next == 5 and [(w.index, s) for w, s, _, _ in done] == [(3, 80.0), (4, 120.0)]
    # the same windows one at a time through the model's own score(): the same numbers
    assert [model.score(slot.windower.get(k).x) for k in (0, 3, 4)] == [100.0, 80.0, 120.0]


def test_windows_the_ring_has_lapped_are_counted_as_skipped(tmp_path: Path) -> None:
    slot, model = loaded(tmp_path, [1.0] * (W * 40), queue=2)  # the ring keeps about 2 windows
    done: list[Any] = []
    assert slot.run_direct(model, slot.windower.cut, done)
    assert slot.skipped > 30 and len(done) + slot.skipped == slot.windower.cut
    assert all(s == 40.0 and f is None for _, s, f, _ in done)


def test_an_invoke_that_raises_consumes_nothing_and_leaves_the_windows_to_the_slow_path(tmp_path: Path) -> None:
    slot, model = loaded(tmp_path, [1.0] * (W * 3))
    real = model.raw_score
    calls = []

    def flaky(x: Any) -> float:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("engine gave up")
        return real(x)

    model.raw_score = flaky
    done: list[Any] = []
    assert not slot.run_direct(model, 3, done)
    assert done == [] and slot.next == 0 and (slot.skipped, slot.bad_input) == (0, 0)


def test_the_worker_publishes_every_direct_result_with_its_seqs(tmp_path: Path, harness_factory: Any) -> None:
    h = harness_factory([model_cfg(sum_model(tmp_path), window=W, queue=1000)])
    vals = [float(k % 7) for k in range(W * 200)]
    h.start()
    seqs = h.feed(vals)
    assert h.service.wait_idle(20)
    res = [e["data"] for e in h.messages("inference/m")]
    assert [r["score"] for r in res] == [10.0 * sum(vals[i:i + W]) for i in range(0, len(vals), W)]
    assert [r["seq"] for r in res] == [[seqs[i], seqs[i + W - 1]] for i in range(0, len(vals), W)]
    d = h.service.describe()[0]
    assert (d["windows_run"], d["windows_skipped"], d["errors"], d["bad_input"]) == (200, 0, 0, 0)
