"""The compiled transformation: DBN v3 numpy records -> standardized Arrow columns.

Each column's operation (declared in the transformation file) runs over a whole column of
the batch; no Python object is made per record.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from marketpipe.model import PRICE_TYPE, TIMESTAMP_TYPE, Column, Family, Kind
from marketpipe.types import RawBatch


def decimal_prices(values: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """int64 fixed-point (scale 1e-9) as exact DECIMAL(19, 9), without a Python object each.

    A decimal128 value is the unscaled integer as two's-complement int128, so the int64
    sign-extended into a (low, high) pair is already the decimal of the same scale.
    """
    n = len(values)
    pairs = np.empty((n, 2), dtype=np.int64)
    pairs[:, 0] = values
    pairs[:, 1] = values >> 63
    validity = None
    null_count = 0
    if valid is not None and not valid.all():
        validity = pa.array(valid, type=pa.bool_()).buffers()[1]
        null_count = int(n - np.count_nonzero(valid))
    return pa.Array.from_buffers(PRICE_TYPE, n, [validity, pa.py_buffer(pairs)], null_count)


def constant_strings(value: str, n: int) -> pa.Array:
    indices = pa.array(np.zeros(n, dtype=np.int8))
    return pa.DictionaryArray.from_arrays(indices, pa.array([value])).cast(pa.string())


def text_array(values: np.ndarray) -> pa.Array:
    """c_char fields as C strings (up to the first NUL, as ``DBNStore.to_df()`` reads them).

    Offsets and bytes are computed with numpy and handed to Arrow as buffers; the cast to
    string only validates UTF-8. ``pa.array`` on the numpy bytes is ~3x slower.
    """
    n, width = len(values), values.dtype.itemsize
    raw = values.view(np.uint8).reshape(n, width)
    if width == 1:  # a single character (side, action): empty where NUL; half the passes
        kept = raw[:, 0] != 0
        lengths, data = kept.astype(np.int32), raw[kept, 0]
    else:
        nul = raw == 0
        lengths = np.where(nul.any(axis=1), np.argmax(nul, axis=1), width).astype(np.int32)
        data = raw[np.arange(width) < lengths[:, None]]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
    return pa.Array.from_buffers(pa.binary(), n, buffers).cast(pa.string())


def enum_labels(column: Column, raw: np.ndarray) -> pa.Array:
    """Raw codes -> labels through the distinct values only; unlabelled codes keep their text."""
    distinct, codes = np.unique(raw, return_inverse=True)
    labels = dict(column.labels)
    keys = [v.decode() if isinstance(v, bytes) else int(v) for v in distinct.tolist()]
    names = pa.array([labels.get(k, str(k)) for k in keys], type=pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), names).cast(pa.string())


def column_array(column: Column, raw: np.ndarray) -> pa.Array:
    """One record field as its model column; sentinels become NULL."""
    values = np.ascontiguousarray(raw)
    if column.kind is Kind.ENUM:
        return enum_labels(column, values)
    valid = None if column.sentinel is None else values != values.dtype.type(column.sentinel)
    if column.kind is Kind.PRICE:
        return decimal_prices(values, valid)
    mask = None if valid is None or valid.all() else ~valid
    if column.kind is Kind.TIMESTAMP:
        return pa.array(values.view(np.int64), type=column.arrow_type, mask=mask)
    if column.kind is Kind.TEXT:
        return text_array(values)
    return pa.array(values, type=column.arrow_type, mask=mask)


def ts_out_array(ts_out: np.ndarray | None, n: int) -> pa.Array:
    """The live gateway's send time after each record; NULL where the data has none."""
    if ts_out is None:
        return pa.nulls(n, type=TIMESTAMP_TYPE)
    return column_array(Column("ts_out", Kind.TIMESTAMP, TIMESTAMP_TYPE, 2**64 - 1), ts_out)


def to_table(family: Family, schema: str, batch: RawBatch) -> pa.Table:
    """The standardized table of one batch of records."""
    records = batch.records
    arrays = []
    for column in family.columns:
        if column.kind is Kind.SYMBOL:
            arrays.append(batch.symbols)
        elif column.kind is Kind.SCHEMA:
            arrays.append(constant_strings(schema, len(records)))
        elif column.kind is Kind.CONSTANT:
            arrays.append(constant_strings(column.value or "", len(records)))
        elif column.kind is Kind.TS_OUT:
            arrays.append(ts_out_array(batch.ts_out, len(records)))
        else:
            arrays.append(column_array(column, records[column.source]))
    return pa.Table.from_arrays(arrays, schema=family.arrow_schema)
