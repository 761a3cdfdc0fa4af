"""Vectorized symbol resolution from DBN metadata mappings.

Databento maps ``(instrument_id, UTC date)`` to a symbol through the intervals in
``Metadata.mappings`` (``start_date`` inclusive, ``end_date`` exclusive). The date of a
record is the UTC date of its index timestamp: ``ts_recv`` where the record has one,
else ``ts_event`` (as ``DBNStore.to_df`` does). ``to_df``'s own resolution loops per
instrument in Python and is slow on large option files (databento-python #115), so the
lookup here is one ``searchsorted`` over packed ``(instrument_id, day)`` keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

NS_PER_DAY = 86_400 * 1_000_000_000
EPOCH = dt.date(1970, 1, 1)
_UNDEF_TIMESTAMP = np.uint64(2**64 - 1)


def _days(value: dt.date | str) -> int:
    day = dt.date.fromisoformat(value) if isinstance(value, str) else value
    return (day - EPOCH).days


def day_ns(day: dt.date) -> int:
    """Nanoseconds since the epoch at the start (00:00 UTC) of ``day``."""
    return _days(day) * NS_PER_DAY


def day_of(ns: int) -> dt.date:
    """The UTC day a nanosecond timestamp falls on."""
    return EPOCH + dt.timedelta(days=ns // NS_PER_DAY)


def days_touched(start_ns: int, end_ns: int) -> list[dt.date]:
    """The UTC days a [start, end) nanosecond range touches, in order."""
    first, last = day_of(start_ns), day_of(end_ns - 1)
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


class SymbolMap:
    """Resolves ``(instrument_id, day)`` pairs to symbols without a Python loop per record."""

    def __init__(
        self,
        mappings: Mapping[str, Sequence[Mapping[str, Any]]],
        stype_in: str | None,
        stype_out: str | None,
    ) -> None:
        # The symbols' own type: what the mappings map to or from instrument ids.
        self.stype = stype_out if stype_in == "instrument_id" else stype_in
        rows: list[tuple[int, int, int, str]] = []
        for symbol_in, intervals in mappings.items():
            for interval in intervals:
                symbol_out = str(interval["symbol"])
                if not symbol_out:
                    continue  # an interval Databento could not resolve
                if stype_in == "instrument_id":
                    instrument_id, symbol = int(symbol_in), symbol_out
                elif stype_out == "instrument_id":
                    instrument_id, symbol = int(symbol_out), symbol_in
                else:
                    continue
                start, end = _days(interval["start_date"]), _days(interval["end_date"])
                rows.append((instrument_id, start, end, symbol))
        rows.sort()
        # (instrument_id, first day, end day exclusive, symbol) as days since the epoch.
        self.intervals = rows
        # What the mappings say, independent of how the file spelled them: part of the data's identity.
        self.fingerprint = hashlib.sha256(repr(rows).encode()).digest()
        names = sorted({r[3] for r in rows})
        code = {name: i for i, name in enumerate(names)}
        self._ids = np.array([r[0] for r in rows], dtype=np.uint64)
        self._starts = self._ids << np.uint64(32) | np.array([r[1] for r in rows], dtype=np.uint64)
        self._ends = np.array([r[2] for r in rows], dtype=np.int64)
        self._codes = np.array([code[r[3]] for r in rows], dtype=np.int32)
        self._names = pa.array(names, type=pa.string())

    def resolve(self, instrument_id: np.ndarray, ts: np.ndarray) -> pa.Array:
        """Symbols for each record; NULL where no interval covers the record's day."""
        n = len(instrument_id)
        if n == 0 or len(self._ids) == 0:
            return pa.nulls(n, type=pa.string())
        days = (ts // np.uint64(NS_PER_DAY)).astype(np.uint64)
        ids = instrument_id.astype(np.uint64)
        keys = ids << np.uint64(32) | days
        pos = np.searchsorted(self._starts, keys, side="right") - 1
        safe = np.maximum(pos, 0)
        found = (
            (pos >= 0)
            & (self._ids[safe] == ids)
            & (days.astype(np.int64) < self._ends[safe])
            & (ts != _UNDEF_TIMESTAMP)
        )
        indices = pa.array(self._codes[safe], mask=~found)
        return self._names.take(indices)
