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

from marketpipe.model import SENTINEL_FIELDS, family_of

UNDEF_PRICE = databento_dbn.UNDEF_PRICE
UNDEF_TIMESTAMP = databento_dbn.UNDEF_TIMESTAMP


def decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:4] == b"\x28\xb5\x2f\xfd":
        data = zstandard.ZstdDecompressor().stream_reader(data).read()
    return data


def distinct_data(paths: list[Path]) -> list[Path]:
    """One path per distinct DBN content: a .dbn and its .dbn.zst hold the same data."""
    seen: dict[bytes, Path] = {}
    for path in paths:
        seen.setdefault(decompressed(path), path)
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
    family = family_of(schema)
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
