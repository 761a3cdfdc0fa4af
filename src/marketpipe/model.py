"""The record layouts Databento publishes and the types of the standardized model.

The layouts (DBN v3, the current version) come from databento's own record definitions, so
they never drift from the records read. Which columns the tables have, and how each is made
from a record, is declared in the transformation file (``configs/transformations/databento.yaml``)
and compiled by ``marketpipe.rules.transformation`` into the ``Family`` objects every store,
rule and export is built from.

Exactness rules (the operations of the transformation file):
- prices are int64 fixed-point with scale 1e-9: stored as DECIMAL(19, 9), which holds every
  int64 value exactly; ``UNDEF_PRICE`` becomes NULL.
- timestamps are uint64 nanoseconds since the UNIX epoch (UTC); ``UNDEF_TIMESTAMP`` becomes NULL.
- integer fields whose "not set" value is the type's maximum become NULL where the file says so.
- c_char / c_char-array fields are text, exactly as ``DBNStore.to_df()`` decodes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

import databento_dbn as dbn
import numpy as np
import pyarrow as pa

from marketpipe.errors import UsageError

PRICE_SCALE = 9
PRICE_TYPE = pa.decimal128(19, PRICE_SCALE)
TIMESTAMP_TYPE = pa.timestamp("ns", tz="UTC")


class Kind(StrEnum):
    """How a column is made from a record: the operations of the transformation file."""

    PRICE = "price"
    TIMESTAMP = "nanoseconds"
    INTEGER = "integer"
    TEXT = "text"
    ENUM = "enum"
    SYMBOL = "symbol"
    SCHEMA = "schema"
    CONSTANT = "constant"
    TS_OUT = "ts_out"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    arrow_type: pa.DataType
    # Raw value that means NULL (prices, timestamps, integers with ``null_if: max``), else None.
    sentinel: int | None = None
    # The record field the column is made from (None for symbol, schema and constants).
    source: str | None = None
    # enum: raw value -> label; constant: the value.
    labels: tuple[tuple[str | int, str], ...] = ()
    value: str | None = None

    @property
    def is_timestamp(self) -> bool:
        """Nanoseconds since the epoch (record timestamps and ts_out)."""
        return self.arrow_type == TIMESTAMP_TYPE


@dataclass(frozen=True)
class Layout:
    """One DBN v3 record layout and the schemas whose records have it."""

    name: str
    schemas: tuple[str, ...]
    # numpy dtype of the DBN v3 record, the layout every file is read (or upgraded) into.
    dtype: np.dtype

    @property
    def fields(self) -> list[str]:
        """Fields carrying data (reserved padding excluded), in record order."""
        return [n for n in self.dtype.names or () if not n.startswith("_")]


@dataclass(frozen=True)
class Family:
    """One table: the schemas it holds, its columns, and the record layout they come from."""

    table: str
    schemas: tuple[str, ...]
    columns: tuple[Column, ...]
    record_dtype: np.dtype
    # The timestamp Databento indexes these schemas by: what the table is partitioned, filtered
    # and ordered by, never NULL (declared per table in the transformation file).
    time_column: str
    # TimescaleDB chunk interval of the table, nanoseconds.
    chunk_interval_ns: int

    @property
    def time_field(self) -> str:
        """The record field the time column is made from."""
        source = next(c.source for c in self.columns if c.name == self.time_column)
        assert source is not None
        return source

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


# The DBN v3 record each schema is sent as (Databento's schema pages). The databento client
# keeps the same table (SCHEMA_STRUCT_MAP, which a test compares this with), but importing it
# costs half a second (pandas, the HTTP client) that every command would pay.
RECORD_OF_SCHEMA: dict[str, type] = {
    "mbo": dbn.MBOMsg,
    "mbp-1": dbn.MBP1Msg,
    "tbbo": dbn.MBP1Msg,
    "mbp-10": dbn.MBP10Msg,
    "trades": dbn.TradeMsg,
    "ohlcv-1s": dbn.OHLCVMsg,
    "ohlcv-1m": dbn.OHLCVMsg,
    "ohlcv-1h": dbn.OHLCVMsg,
    "ohlcv-1d": dbn.OHLCVMsg,
    "ohlcv-eod": dbn.OHLCVMsg,
    "definition": dbn.InstrumentDefMsg,
    "statistics": dbn.StatMsg,
    "status": dbn.StatusMsg,
    "imbalance": dbn.ImbalanceMsg,
    "cmbp-1": dbn.CMBP1Msg,
    "cbbo-1s": dbn.CBBOMsg,
    "cbbo-1m": dbn.CBBOMsg,
    "tcbbo": dbn.CBBOMsg,
    "bbo-1s": dbn.BBOMsg,
    "bbo-1m": dbn.BBOMsg,
}


def _build_layouts() -> dict[str, Layout]:
    schemas_of: dict[str, list[str]] = {}
    structs: dict[str, type] = {}
    for schema, struct in RECORD_OF_SCHEMA.items():
        schemas_of.setdefault(struct.__name__, []).append(schema)
        structs[struct.__name__] = struct
    return {
        name: Layout(
            name,
            tuple(sorted(schemas_of[name])),
            np.dtype(struct._dtypes),  # type: ignore[attr-defined]
        )
        for name, struct in sorted(structs.items())
    }


LAYOUTS: dict[str, Layout] = _build_layouts()
LAYOUT_OF_SCHEMA: dict[str, Layout] = {s: layout for layout in LAYOUTS.values() for s in layout.schemas}
DBN_VERSIONS = (1, 2, 3)


def record_dtype(schema: str, version: int) -> np.dtype:
    """The layout of ``schema``'s records in DBN ``version`` (databento-dbn's v1 and v2 records
    where they differ from v3's)."""
    module = {1: dbn.v1, 2: dbn.v2}.get(version, dbn)
    return np.dtype(getattr(module, LAYOUT_OF_SCHEMA[schema].name)._dtypes)


SCHEMAS: tuple[str, ...] = tuple(sorted(LAYOUT_OF_SCHEMA))


def check_schema(schema: str) -> None:
    """A clear error for a schema name Databento does not publish."""
    if schema not in LAYOUT_OF_SCHEMA:
        raise UsageError(f"unknown schema {schema!r}; known schemas: {', '.join(SCHEMAS)}")


@dataclass(frozen=True)
class Model:
    """The standardized tables, compiled from the transformation file once and handed to every
    stage that needs it (``marketpipe.rules.transformation.load_model``)."""

    families: Mapping[str, Family]

    def family_of(self, schema: str) -> Family:
        """The family storing ``schema``."""
        check_schema(schema)
        return next(f for f in self.families.values() if schema in f.schemas)
