"""The standardized model: one table per DBN record layout, declared once.

Columns are derived from databento's own record layouts (DBN v3, the current version),
keeping Databento's field names (levels flattened as ``bid_px_00`` ...), so the model can
never drift from the records it stores. Every store (DuckDB, PostgreSQL) and every export
is built from the declarations here.

Exactness rules:
- prices are int64 fixed-point with scale 1e-9: stored as DECIMAL(19, 9), which holds every
  int64 value exactly; ``UNDEF_PRICE`` becomes NULL.
- timestamps are uint64 nanoseconds since the UNIX epoch (UTC); ``UNDEF_TIMESTAMP`` becomes NULL.
- integer fields whose "not set" value is the type's maximum (see ``SENTINEL_FIELDS``) become NULL.
- c_char / c_char-array fields are text, exactly as ``DBNStore.to_df()`` decodes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

import numpy as np
import pyarrow as pa
from databento.common.constants import SCHEMA_STRUCT_MAP
from databento_dbn import Schema

PRICE_SCALE = 9
PRICE_TYPE = pa.decimal128(19, PRICE_SCALE)
TIMESTAMP_TYPE = pa.timestamp("ns", tz="UTC")

# Fields whose type maximum means "not set" in DBN (the value databento-dbn's own
# constructors give a field left undefined; checked against the library by the tests).
SENTINEL_FIELDS: dict[str, frozenset[str]] = {
    "definitions": frozenset(
        {
            "inst_attrib_value",
            "market_depth_implied",
            "market_depth",
            "market_segment_id",
            "max_trade_vol",
            "min_lot_size",
            "min_lot_size_block",
            "min_lot_size_round_lot",
            "min_trade_vol",
            "contract_multiplier",
            "decay_quantity",
            "original_contract_size",
            "appl_id",
            "maturity_year",
            "decay_start_date",
            "channel_id",
            "main_fraction",
            "price_display_format",
            "sub_fraction",
            "underlying_product",
            "maturity_month",
            "maturity_day",
            "maturity_week",
            "contract_multiplier_unit",
            "flow_schedule_type",
            "tick_rule",
        }
    ),
    "statistics": frozenset({"quantity", "channel_id"}),
    "mbo": frozenset({"channel_id"}),
    "imbalance": frozenset({"market_imbalance_qty", "unpaired_qty"}),
}


class Kind(StrEnum):
    """How a DBN field maps to a column."""

    PRICE = "price"
    TIMESTAMP = "timestamp"
    INTEGER = "integer"
    TEXT = "text"
    SYMBOL = "symbol"
    SCHEMA = "schema"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    arrow_type: pa.DataType
    # Raw value that means NULL (prices, timestamps and SENTINEL_FIELDS), else None.
    sentinel: int | None = None


@dataclass(frozen=True)
class Family:
    """One record layout and the table that holds it."""

    table: str
    schemas: tuple[str, ...]
    columns: tuple[Column, ...]
    # numpy dtype of the DBN v3 record, the layout every file is read (or upgraded) into.
    record_dtype: np.dtype

    @property
    def time_column(self) -> str:
        """Event time: what users filter on and what TimescaleDB partitions by."""
        return "ts_event"

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


_FAMILY_OF_STRUCT = {
    "OHLCVMsg": "ohlcv",
    "TradeMsg": "trades",
    "MBP1Msg": "mbp1",
    "MBP10Msg": "mbp10",
    "MBOMsg": "mbo",
    "BBOMsg": "bbo",
    "CBBOMsg": "cbbo",
    "CMBP1Msg": "cmbp1",
    "InstrumentDefMsg": "definitions",
    "StatMsg": "statistics",
    "StatusMsg": "status",
    "ImbalanceMsg": "imbalance",
}

_UNDEF_U64 = 2**64 - 1
_UNDEF_I64 = 2**63 - 1


def _field_column(table: str, name: str, dtype: np.dtype, struct: type) -> Column:
    if name in struct._price_fields:  # type: ignore[attr-defined]
        return Column(name, Kind.PRICE, PRICE_TYPE, _UNDEF_I64)
    if name in struct._timestamp_fields:  # type: ignore[attr-defined]
        return Column(name, Kind.TIMESTAMP, TIMESTAMP_TYPE, _UNDEF_U64)
    if dtype.kind == "S":
        return Column(name, Kind.TEXT, pa.string())
    sentinel = int(np.iinfo(dtype).max) if name in SENTINEL_FIELDS.get(table, ()) else None
    return Column(name, Kind.INTEGER, pa.from_numpy_dtype(dtype), sentinel)


def _build_families() -> dict[str, Family]:
    schemas_of: dict[str, list[str]] = {}
    structs: dict[str, type] = {}
    for schema, struct in SCHEMA_STRUCT_MAP.items():
        table = _FAMILY_OF_STRUCT[struct.__name__]
        schemas_of.setdefault(table, []).append(Schema(schema).value)
        structs[table] = struct
    families = {}
    for table, struct in structs.items():
        dtype = np.dtype(struct._dtypes)
        hidden = set(struct._hidden_fields)
        fields = [n for n in dtype.names or () if n not in hidden and not n.startswith("_")]
        # Same leading order as DBNStore.to_df(): the index timestamp first.
        lead = [n for n in ("ts_recv", "ts_event") if n in fields]
        ordered = lead + [n for n in fields if n not in lead]
        columns = [_field_column(table, n, dtype[n], struct) for n in ordered]
        columns.append(Column("symbol", Kind.SYMBOL, pa.string()))
        if len(schemas_of[table]) > 1:
            columns.append(Column("schema", Kind.SCHEMA, pa.string()))
        families[table] = Family(table, tuple(sorted(schemas_of[table])), tuple(columns), dtype)
    return dict(sorted(families.items()))


FAMILIES: dict[str, Family] = _build_families()
FAMILY_OF_SCHEMA: dict[str, Family] = {s: f for f in FAMILIES.values() for s in f.schemas}
SCHEMAS: tuple[str, ...] = tuple(sorted(FAMILY_OF_SCHEMA))


def family_of(schema: str) -> Family:
    """The family storing ``schema``; a clear error for names Databento does not publish."""
    from marketpipe.errors import UsageError

    try:
        return FAMILY_OF_SCHEMA[schema]
    except KeyError:
        raise UsageError(f"unknown schema {schema!r}; known schemas: {', '.join(SCHEMAS)}") from None
