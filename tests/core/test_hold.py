"""The write-behind hold on its own: rows() hands out held rows in seq order after a cursor, bounded by
``upto`` and ``limit``, skipping rows acked meanwhile. It used to list the whole hold on every forwarder
fetch (O(held) each time); its cost is measured by bench/throughput.py, not here."""

from __future__ import annotations

from edge_agent.outbox.hold import Hold


def row(seq: int, prio: int = 0) -> tuple:
    return (seq, prio, f"t/{seq}", b"x", 0, None, 1, 0, None)


def test_rows_after_a_cursor_in_order_bounded_by_upto_and_limit() -> None:
    h = Hold(flush_after=1.0, limit=1000)
    for s in range(1, 11):
        h.add(row(s), 0.0)
    h.add(row(11, prio=2), 0.0)
    assert [r[0] for r in h.rows(0, 0, None)] == list(range(1, 11))
    assert [r[0] for r in h.rows(0, 4, None)] == list(range(5, 11))
    assert [r[0] for r in h.rows(0, 4, 7)] == [5, 6, 7]
    assert [r[0] for r in h.rows(0, 4, None, limit=2)] == [5, 6]
    assert [r[0] for r in h.rows(2, 0, None)] == [11]
    assert h.ack(5) and h.ack(6)
    assert [r[0] for r in h.rows(0, 4, None, limit=2)] == [7, 8]  # acked rows are gone, the limit still fills


def test_acked_rows_are_compacted_and_new_ones_still_found() -> None:
    h = Hold(flush_after=1.0, limit=100_000)
    for s in range(1, 5001):
        h.add(row(s), 0.0)
    for s in range(1, 4991):
        assert h.ack(s)
    assert [r[0] for r in h.rows(0, 0, None)] == list(range(4991, 5001))
    assert len(h.keys[0]) <= 2 * 10 + 64  # compacted
    h.add(row(5001), 0.0)
    assert [r[0] for r in h.rows(0, 4995, None)] == [4996, 4997, 4998, 4999, 5000, 5001]

