"""Validation stages: vectorized checks that split a batch into kept and quarantined rows.

A check returns a boolean mask of the rows it rejects. A rejected row is taken out of the
batch and handed on as a ``Rejection`` (rule, message, the record in full) for the
quarantine table, so the count always closes: read = stored + quarantined.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from databento_dbn import RType, Schema

from marketpipe.model import Family, Kind
from marketpipe.sources.base import Chunk

UNDEF_TIMESTAMP = np.uint64(2**64 - 1)
_MAX_NS = np.uint64(2**63 - 1)
# v1 OHLCV files may carry the rtype used before the per-interval ones existed.
_LEGACY_RTYPES = {"ohlcv": {17}}


@dataclass(frozen=True)
class Rejection:
    stage: str
    rule: str
    message: str
    record: str  # the full record as JSON: every field, exact integers


@dataclass(frozen=True)
class Check:
    name: str
    message: str
    applies: Callable[[Family], bool]
    # (family, schema, chunk, batch) -> mask of rejected rows
    rejects: Callable[[Family, str, Chunk, object], np.ndarray]


def _allowed_rtypes(family: Family, schema: str) -> np.ndarray:
    rtypes = {int(RType.from_schema(Schema(schema)).value)} | _LEGACY_RTYPES.get(family.table, set())
    return np.array(sorted(rtypes), dtype=np.uint8)


def _timestamp_fields(family: Family) -> list[str]:
    return [c.name for c in family.columns if c.kind is Kind.TIMESTAMP]


def _unrepresentable_timestamps(family: Family, _s: str, _c: Chunk, records: object) -> np.ndarray:
    assert isinstance(records, np.ndarray)
    bad = np.zeros(len(records), dtype=bool)
    for name in _timestamp_fields(family):
        values = records[name]
        bad |= (values > _MAX_NS) & (values != UNDEF_TIMESTAMP)
    return bad


def _outside_window(_f: Family, _s: str, chunk: Chunk, records: object) -> np.ndarray:
    assert isinstance(records, np.ndarray)
    ts = records["ts_event"]
    bad = np.zeros(len(records), dtype=bool)
    if chunk.start_ns is not None:
        bad |= ts < np.uint64(chunk.start_ns)
    if chunk.end_ns is not None:
        bad |= ts >= np.uint64(chunk.end_ns)
    return bad


def _high_below_low(_f: Family, _s: str, _c: Chunk, table: object) -> np.ndarray:
    assert isinstance(table, pa.Table)
    below = pc.less(table["high"], table["low"])
    return np.asarray(pc.fill_null(below, False).to_numpy(zero_copy_only=False), dtype=bool)


INITIAL_CHECKS: tuple[Check, ...] = (
    Check(
        "rtype_matches_schema",
        "record type does not belong to the file's schema",
        lambda f: True,
        lambda f, s, c, r: ~np.isin(r["rtype"], _allowed_rtypes(f, s)),  # type: ignore[index]
    ),
    Check(
        "ts_event_defined",
        "ts_event is undefined",
        lambda f: True,
        lambda f, s, c, r: r["ts_event"] == UNDEF_TIMESTAMP,  # type: ignore[index]
    ),
    Check(
        "timestamps_representable",
        "a timestamp is beyond 2262-04-11 and not the undefined sentinel",
        lambda f: True,
        _unrepresentable_timestamps,
    ),
    Check(
        "ts_event_in_requested_range",
        "ts_event is outside the requested range",
        lambda f: True,
        _outside_window,
    ),
)

POST_CHECKS: tuple[Check, ...] = (
    Check(
        "ohlcv_high_not_below_low",
        "high is below low",
        lambda f: f.table == "ohlcv",
        _high_below_low,
    ),
)


def _raw_json(records: np.ndarray) -> list[str]:
    names = [n for n in records.dtype.names or () if not n.startswith("_")]
    rows = []
    for rec in records:
        row = {}
        for name in names:
            value = rec[name]
            row[name] = value.decode("latin-1") if isinstance(value, bytes) else int(value)
        rows.append(json.dumps(row))
    return rows


def _table_json(table: pa.Table) -> list[str]:
    # Exact text for decimals and integer nanoseconds for timestamps: no float, no µs.
    columns = []
    for field, column in zip(table.schema, table.columns, strict=False):
        if pa.types.is_timestamp(field.type):
            column = column.cast(pa.int64())
        elif pa.types.is_decimal(field.type):
            column = column.cast(pa.string())
        columns.append(column)
    plain = pa.Table.from_arrays(columns, names=table.column_names)
    return [json.dumps(row) for row in plain.to_pylist()]


def run_checks(
    stage: str,
    checks: Sequence[Check],
    family: Family,
    schema: str,
    chunk: Chunk,
    batch: np.ndarray | pa.Table,
) -> tuple[np.ndarray, list[Rejection]]:
    """Mask of rows kept, and one Rejection per rejected row (its first failing rule)."""
    rejected = np.zeros(len(batch), dtype=bool)
    rejections: list[Rejection] = []
    for check in checks:
        if not check.applies(family):
            continue
        new = check.rejects(family, schema, chunk, batch) & ~rejected
        if not new.any():
            continue
        rejected |= new
        rows = np.flatnonzero(new)
        if isinstance(batch, np.ndarray):
            records = _raw_json(batch[rows])
        else:
            records = _table_json(batch.take(pa.array(rows)))
        rejections.extend(Rejection(stage, check.name, check.message, r) for r in records)
    return ~rejected, rejections
