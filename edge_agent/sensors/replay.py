"""``replay``: play back a CSV or JSON Lines file of timestamped values, to reproduce field data.

Each row becomes one reading. With a ``time_column`` the rows are played at the file's own pace
divided by ``speed`` (``speed = 60``: an hour of data per minute; ``speed = 0``: as fast as the
pipeline takes them, e.g. to feed a model a whole recorded incident in seconds). Without one, rows
come every ``interval`` seconds. The sampler keeps absolute deadlines, so a long replay at original
pace does not drift.

``value_column`` is published as ``{"value": x}``; ``value_columns = ["a", "b"]`` publishes each
under its own name instead. Numbers stay numbers; an empty cell is ``null``; any other text is kept
as a string. With ``use_file_time = true`` each reading's ``ts`` is the row's time (naive times are
UTC), else the time it was replayed. At the end of the file the sensor stops (``edge-agent run
--exit-when-done`` then exits) unless ``loop = true``; when looping with file times, each pass is
shifted by the file's duration so timestamps keep increasing.

Accepted times: epoch seconds (a number), or ISO 8601 text (``2013-12-02 21:15:00``,
``2013-12-02T21:15:00+01:00``, ``...Z``).

The file is read lazily, row by row, so a large recording does not sit in memory.

No wiring. Example: the NAB machine temperature data set, played fast::

    [[sensors]]
    name = "machine_temp"
    type = "replay"
    path = "/work/shared/data/nab/machine_temperature_system_failure.csv"
    time_column = "timestamp"
    value_column = "value"
    speed = 0
    use_file_time = true
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from edge_agent.errors import SensorError
from edge_agent.sensors.base import Exhausted, Sensor, Stamped

SAMPLE = """\
[[sensors]]
name = "machine_temp"
type = "replay"
path = "/var/lib/edge-agent/recordings/machine_temperature.csv"
time_column = "timestamp"   # "" = no time column: one row every `interval` seconds
value_column = "value"      # published as {"value": x}
# value_columns = []        # several columns, each under its own name (overrides value_column)
speed = 1.0                 # 1 = original pace, 60 = 60x faster, 0 = as fast as possible
loop = false                # start again at the end (else the sensor stops)
use_file_time = false       # stamp readings with the file's time instead of now
# format = "auto"           # auto (by extension), csv or jsonl
"""


@dataclass(frozen=True)
class ReplayOptions:
    path: str = field(metadata={"doc": "CSV (with a header row) or JSON Lines file."})
    format: str = field(default="auto", metadata={"doc": "auto (.jsonl/.ndjson = jsonl, else csv), csv, jsonl.",
                                                  "choices": ("auto", "csv", "jsonl")})
    time_column: str = field(default="timestamp", metadata={"doc": "Column/key holding each row's time "
                                                                   "('' = none: pace by interval)."})
    value_column: str = field(default="value", metadata={"doc": "Column published as 'value'."})
    value_columns: list[str] = field(default_factory=list, metadata={"doc": "Columns published under their "
                                                                            "own names (overrides value_column)."})
    speed: float = field(default=1.0, metadata={"doc": "Playback speed factor (0 = as fast as possible).",
                                                "ge": 0})
    loop: bool = field(default=False, metadata={"doc": "Start again at the end of the file."})
    use_file_time: bool = field(default=False, metadata={"doc": "Readings carry the file's timestamps."})

    @staticmethod
    def validate(o: ReplayOptions) -> list[tuple[str, str]]:
        errs: list[tuple[str, str]] = []
        p = Path(o.path)
        if not p.is_file():
            errs.append(("path", f"file not found: {o.path}"))
        if o.use_file_time and not o.time_column:
            errs.append(("use_file_time", "needs a time_column"))
        if not o.value_columns and not o.value_column:
            errs.append(("value_column", "give value_column or value_columns"))
        return errs


def parse_time(v: Any) -> float:
    """Epoch seconds from a number or ISO 8601 text (naive = UTC); ValueError if neither."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    s = str(v).strip()
    try:
        return float(s)
    except ValueError:
        pass
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _value(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    s = v.strip()
    if s == "":
        return None
    try:
        f = float(s)
    except ValueError:
        return v
    if math.isfinite(f) and f.is_integer() and "." not in s and "e" not in s.lower():
        return int(f)
    return f


class ReplaySensor(Sensor):
    Options = ReplayOptions
    SAMPLE = SAMPLE

    def __init__(self, name: str, options: Any, ctx: Any) -> None:
        super().__init__(name, options, ctx)
        o = self.options
        self.path = Path(o.path)
        self.fmt = o.format if o.format != "auto" else (
            "jsonl" if self.path.suffix.lower() in (".jsonl", ".ndjson") else "csv")
        self._fh: TextIO | None = None
        self._rows: Iterator[tuple[int, dict[str, Any]]] | None = None
        self._next: tuple[int, dict[str, Any]] | None = None
        self._pass = 0
        self._first_t: float | None = None
        self._last_t: float | None = None
        self._last_step = 0.0
        self._offset = 0.0  # added to file times on later passes of a loop
        self._pace: float | None = None
        self.rows_read = 0

    # ------------------------------------------------------------------ file
    def _open_file(self) -> None:
        self._close_file()
        try:
            self._fh = open(self.path, newline="", encoding="utf-8-sig")  # noqa: SIM115
        except OSError as e:
            raise SensorError(f"replay {self.path}: {e.strerror or e}") from None
        self._rows = self._iter_rows(self._fh)
        self._next = next(self._rows, None)

    def _iter_rows(self, fh: TextIO) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.fmt == "csv":
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            need = [c for c in self._needed() if c not in cols]
            if need:
                raise SensorError(f"replay {self.path}: column(s) {', '.join(need)} not in the header "
                                  f"({', '.join(cols) or 'empty file'})")
            for row in reader:
                yield reader.line_num, row
        else:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise SensorError(f"replay {self.path}:{n}: not JSON ({e})") from None
                if not isinstance(obj, dict):
                    raise SensorError(f"replay {self.path}:{n}: a line must be a JSON object")
                yield n, obj

    def _needed(self) -> list[str]:
        o = self.options
        cols = list(o.value_columns) or [o.value_column]
        return ([o.time_column] if o.time_column else []) + cols

    def _close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def open(self) -> None:
        self._open_file()
        if self._next is None:
            raise SensorError(f"replay {self.path}: no rows")

    def close(self) -> None:
        self._close_file()

    # ------------------------------------------------------------------ rows
    def _row_time(self, n: int, row: dict[str, Any]) -> float:
        raw = row.get(self.options.time_column)
        if raw is None:
            raise SensorError(f"replay {self.path}:{n}: no {self.options.time_column!r}")
        try:
            return parse_time(raw)
        except ValueError:
            raise SensorError(f"replay {self.path}:{n}: {self.options.time_column} = {raw!r} is not a time "
                              f"(epoch seconds or ISO 8601)") from None

    def _advance(self) -> tuple[int, dict[str, Any]] | None:
        """The row after the current one, reopening the file when looping."""
        assert self._rows is not None
        nxt = next(self._rows, None)
        if nxt is None and self.options.loop:
            self._pass += 1
            self._open_file()
            nxt = self._next
        return nxt

    def read(self) -> dict[str, Any] | Stamped:
        o = self.options
        cur = self._next
        if cur is None:
            raise Exhausted(f"replay {self.path}: end of file after {self.rows_read} row(s)")
        this_pass, offset = self._pass, self._offset
        self._next = self._advance()  # first, so a bad row is skipped, not retried forever
        self.rows_read += 1
        self._pace = None
        n, row = cur
        t = self._row_time(n, row) if o.time_column else None
        if t is not None and this_pass == 0:
            if self._first_t is None:
                self._first_t = t
            if self._last_t is not None:
                self._last_step = max(0.0, t - self._last_t)
            self._last_t = t
        if self._pass != this_pass and self._first_t is not None and self._last_t is not None:
            # the next pass continues the timeline: shift by the file's duration plus one step
            self._offset += self._last_t - self._first_t + self._last_step
        if o.value_columns:
            data = {c: _value(row.get(c)) for c in o.value_columns}
        else:
            if o.value_column not in row:
                raise SensorError(f"replay {self.path}:{n}: no {o.value_column!r}")
            data = {"value": _value(row[o.value_column])}
        if t is None:
            return data
        if self._next is None:
            self._pace = 0.0
        else:
            nn, nrow = self._next
            try:
                step = self._row_time(nn, nrow) - t
            except SensorError:
                step = 0.0
            if step < 0:  # wrapped around (loop) or rows out of order
                step = self._last_step
            self._pace = 0.0 if o.speed == 0 else step / o.speed
        return Stamped(data, t + offset) if o.use_file_time else data

    def pace(self) -> float | None:
        return self._pace
