"""What databento's own libraries say a DBN file holds, to compare marketpipe's exports with.

Independent of marketpipe's reader: records come from databento-dbn's decoder (upgraded to
DBN v3), laid out with databento-python's numpy layouts, symbols from ``DBNStore.to_df()``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import databento as db
import databento_dbn
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from databento.common.constants import SCHEMA_STRUCT_MAP

from marketpipe.model import PRICE_TYPE, TIMESTAMP_TYPE, Column, Family, Kind
from marketpipe.rules.transformation import load_model
from marketpipe.symbology import NS_PER_DAY

# The shipped transformation file, compiled once for the whole test session.
MODEL = load_model()
UNDEF_PRICE = databento_dbn.UNDEF_PRICE
UNDEF_TIMESTAMP = databento_dbn.UNDEF_TIMESTAMP

# Integer fields whose type maximum means "not set" (the value databento-dbn's own
# constructors leave in a field; test_model checks this list against the library).
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


def decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:4] == b"\x28\xb5\x2f\xfd":
        data = zstandard.ZstdDecompressor().stream_reader(data).read()
    return data


def distinct_data(paths: list[Path]) -> list[Path]:
    """One path per distinct data: the same records (upgraded to DBN v3 by databento-dbn) with
    the same symbol mappings, whatever the DBN version or compression of the file."""
    seen: dict[tuple[str, bytes, str], Path] = {}
    for path in paths:
        schema, records = decoded_records(path)
        mappings = db.DBNStore.from_file(path).metadata.mappings
        canonical_mappings = repr(sorted((k, [dict(i) for i in v]) for k, v in mappings.items()))
        seen.setdefault((schema, records.tobytes(), canonical_mappings), path)
    return list(seen.values())


def decoded_records(path: Path) -> tuple[str, np.ndarray]:
    data = decompressed(path)
    decoder = databento_dbn.DBNDecoder(upgrade_policy=databento_dbn.VersionUpgradePolicy.UPGRADE_TO_V3)
    decoder.write(data)
    records = decoder.decode()
    metadata = records[0]
    schema = str(metadata.schema.value)
    struct = SCHEMA_STRUCT_MAP[databento_dbn.Schema(schema)]
    body = b"".join(bytes(r) for r in records[1:])
    return schema, np.frombuffer(body, dtype=np.dtype(struct._dtypes))


def expected_rows(path: Path) -> tuple[str, list[dict[str, Any]]]:
    schema, records = decoded_records(path)
    struct = SCHEMA_STRUCT_MAP[databento_dbn.Schema(schema)]
    family = MODEL.family_of(schema)
    symbols = db.DBNStore.from_file(path).to_df(map_symbols=True)["symbol"].tolist() if len(records) else []
    rows = []
    for i, rec in enumerate(records):
        row: dict[str, Any] = {}
        for name in records.dtype.names:
            if name == "length" or name.startswith("_"):
                continue
            raw = rec[name]
            if name in struct._price_fields:
                row[name] = None if int(raw) == UNDEF_PRICE else Decimal(int(raw)).scaleb(-9)
            elif name in struct._timestamp_fields:
                row[name] = None if int(raw) == UNDEF_TIMESTAMP else int(raw)
            elif isinstance(raw, bytes):
                row[name] = raw.decode()
            elif name in SENTINEL_FIELDS.get(family.table, ()) and int(raw) == np.iinfo(raw.dtype).max:
                row[name] = None
            else:
                row[name] = int(raw)
        row["symbol"] = symbols[i] if isinstance(symbols[i], str) else None  # to_df: NaN if unmapped
        if "schema" in family.column_names:
            row["schema"] = schema
        row["ts_out"] = None  # historical data: no live gateway send time
        rows.append(row)
    return schema, rows


def exported_rows(path: Path) -> tuple[pa.Schema, list[dict[str, Any]]]:
    """Rows of an exported Parquet file, timestamps as integer nanoseconds."""
    table = pq.read_table(path)
    columns = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in table.columns]
    return table.schema, pa.Table.from_arrays(columns, names=table.column_names).to_pylist()


def canonical(rows: list[dict[str, Any]]) -> list[str]:
    """Order-free form: exports are in event-time order, files in receive order."""
    return sorted(repr(sorted(r.items())) for r in rows)


_TABLE_OF_STRUCT = {
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


def _reference_column(table: str, name: str, dtype: np.dtype, struct: type) -> Column:
    if name in struct._price_fields:  # type: ignore[attr-defined]
        return Column(name, Kind.PRICE, PRICE_TYPE, UNDEF_PRICE, name)
    if name in struct._timestamp_fields:  # type: ignore[attr-defined]
        return Column(name, Kind.TIMESTAMP, TIMESTAMP_TYPE, UNDEF_TIMESTAMP, name)
    if dtype.kind == "S":
        return Column(name, Kind.TEXT, pa.string(), None, name)
    sentinel = int(np.iinfo(dtype).max) if name in SENTINEL_FIELDS.get(table, ()) else None
    return Column(name, Kind.INTEGER, pa.from_numpy_dtype(dtype), sentinel, name)


def reference_families() -> dict[str, Family]:
    """The standardized model of the core issue, straight from databento's record layouts.

    One table per layout, Databento's field names and order with the index timestamp first
    (as ``DBNStore.to_df()``), then ``symbol``, then ``schema`` where a table holds several,
    then ``ts_out`` (set for live recordings only).
    """
    schemas_of: dict[str, list[str]] = {}
    structs: dict[str, type] = {}
    for schema, struct in SCHEMA_STRUCT_MAP.items():
        table = _TABLE_OF_STRUCT[struct.__name__]
        schemas_of.setdefault(table, []).append(databento_dbn.Schema(schema).value)
        structs[table] = struct
    out = {}
    for table, struct in sorted(structs.items()):
        dtype = np.dtype(struct._dtypes)  # type: ignore[attr-defined]
        hidden = set(struct._hidden_fields)  # type: ignore[attr-defined]
        fields = [n for n in dtype.names or () if n not in hidden and not n.startswith("_")]
        lead = [n for n in ("ts_recv", "ts_event") if n in fields]
        ordered = lead + [n for n in fields if n not in lead]
        columns = [_reference_column(table, n, dtype[n], struct) for n in ordered]
        columns.append(Column("symbol", Kind.SYMBOL, pa.string()))
        if len(schemas_of[table]) > 1:
            columns.append(Column("schema", Kind.SCHEMA, pa.string()))
        columns.append(Column("ts_out", Kind.TS_OUT, TIMESTAMP_TYPE, UNDEF_TIMESTAMP))
        # Databento indexes (selects, sorts, maps symbols) by ts_recv, else ts_event.
        time_column = lead[0]
        out[table] = Family(
            table, tuple(sorted(schemas_of[table])), tuple(columns), dtype, time_column, NS_PER_DAY
        )
    return out
