"""Seq ranges: ``[first, last]`` lists, and :class:`Acked`, the acked rows still stored."""

from __future__ import annotations

import bisect
from collections.abc import Iterable


def ranges(seqs: Iterable[int]) -> list[list[int]]:
    """``[3, 1, 2, 7]`` -> ``[[1, 3], [7, 7]]``."""
    out: list[list[int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def merge_ranges(rs: Iterable[Iterable[int]]) -> list[list[int]]:
    """Union of ``[first, last]`` ranges, sorted and coalesced."""
    out: list[list[int]] = []
    for a, b in sorted((int(x[0]), int(x[1])) for x in (list(r) for r in rs)):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def range_end(rngs: list[list[int]], starts: list[int], seq: int) -> int | None:
    """The last seq of the range in ``rngs`` (sorted, disjoint; ``starts`` their first seqs) that holds
    ``seq``, or None."""
    i = bisect.bisect_right(starts, seq) - 1
    return rngs[i][1] if i >= 0 and rngs[i][1] >= seq else None


class Acked:
    """Rows the broker acknowledged that are still stored (they leave in bulk, see the writer): their
    ranges (sorted, disjoint) and how many rows those hold. Never changed once made: the writer publishes
    a new one after each commit, so readers need no lock to use the one they hold."""

    __slots__ = ("ranges", "rows", "starts")

    def __init__(self, rngs: list[list[int]] | None = None, rows: int = 0) -> None:
        self.ranges: list[list[int]] = rngs or []
        self.starts = [r[0] for r in self.ranges]
        self.rows = rows

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self.starts, seq) - 1
        return i >= 0 and self.ranges[i][1] >= seq

    def end_of(self, seq: int) -> int | None:
        """The last seq of the acked range holding ``seq``, or None."""
        return range_end(self.ranges, self.starts, seq)


NONE_ACKED = Acked()
