"""Fixed-seed fuzzing of real Databento files: byte flips in header and body, truncations,
damaged length and rtype bytes, flips inside zstd frames.

For every mutant: either it is rejected in one line, or each record it stored that differs
from the clean file's records is possible by Databento's field definitions (checked here
independently of the shipped rules). No mutant may crash the run.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import databento as db
import databento_dbn as dbn
import duckdb
import numpy as np
import pyarrow as pa
import pytest
import zstandard

from dbn_reference import MODEL, canonical, decompressed, expected_rows

SEED = 20261126
MUTANTS_PER_FILE = 40
FILES = [
    "test_data.trades.dbn",
    "test_data.mbp-10.v1.dbn.zst",
    "test_data.mbo.v3.dbn",
    "test_data.bbo-1s.v2.dbn.zst",
    "test_data.definition.v1.dbn.zst",
    "test_data.statistics.v2.dbn.zst",
    "test_data.ohlcv-1h.dbn",
]
SIDES = {str(v.value) for v in dbn.Side.variants()}
ACTIONS = {str(v.value) for v in dbn.Action.variants()}
PRINTABLE = re.compile(r"[ -~]*")


def _mutants(data: bytes, compressed: bytes | None, rng: np.random.Generator) -> list[bytes]:
    """Damaged copies of a file: what disks, networks and bugs do to bytes."""
    header_end = 8 + int.from_bytes(data[4:8], "little")
    body = range(header_end, len(data)) if len(data) > header_end else range(0, len(data))
    out = []
    for i in range(MUTANTS_PER_FILE):
        mutant = bytearray(data)
        kind = i % 6
        if kind == 0:  # flips in the header and metadata
            for pos in rng.integers(0, header_end, size=int(rng.integers(1, 4))):
                mutant[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # flips in the records
            for pos in rng.integers(body.start, body.stop, size=int(rng.integers(1, 6))):
                mutant[pos] = int(rng.integers(0, 256))
        elif kind == 2:  # cut anywhere
            del mutant[int(rng.integers(1, len(data))) :]
        elif kind in (3, 4) and len(data) > header_end:  # a record's length or rtype byte
            mutant[header_end + (kind - 3)] = int(rng.integers(0, 256))
        elif compressed is not None:  # flips inside the zstd frames of the file as shipped
            frame = bytearray(compressed)
            for pos in rng.integers(4, len(frame), size=int(rng.integers(1, 4))):
                frame[pos] ^= 1 << int(rng.integers(0, 8))
            out.append(bytes(frame))
            continue
        else:  # records replaced by noise
            noise = rng.integers(0, 256, len(data) - header_end, np.uint8)
            mutant = bytearray(data[:header_end]) + noise.tobytes()
        out.append(bytes(mutant))
    return out


def _stored_rows(db_path: Path, table: str) -> list[tuple[str, dict[str, Any]]]:
    """(source file, row) of every stored row, timestamps as integer nanoseconds."""
    with duckdb.connect(str(db_path), read_only=True) as con:
        files = dict(con.execute("SELECT chunk_id, label FROM marketpipe_chunks").fetchall())
        data = con.sql(f"SELECT * FROM {table}").to_arrow_table()
    columns = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in data.columns]
    rows = pa.Table.from_arrays(columns, names=data.column_names).to_pylist()
    return [(str(files[row.pop("chunk_id")]), row) for row in rows]


def _impossible(row: dict[str, Any], schema: str, source: Path) -> list[str]:
    """What Databento's field definitions rule out in a stored row (empty: possible)."""
    family = MODEL.family_of(schema)
    meta = db.DBNStore.from_file(source).metadata
    found = []
    index = row[family.time_column]
    if index is None or index < meta.start or (meta.end is not None and index >= meta.end):
        found.append(f"{family.time_column}={index} outside the file's range")
    if row.get("side") is not None and family.table != "definitions" and row["side"] not in SIDES:
        found.append(f"side={row['side']!r}")
    if isinstance(row.get("action"), str) and row["action"] not in ACTIONS:
        found.append(f"action={row['action']!r}")
    for name, value in row.items():
        texts = ("symbol", "raw_symbol", "exchange", "group", "asset")
        if isinstance(value, str) and name in texts and not PRINTABLE.fullmatch(value):
            found.append(f"{name}={value!r}")
        if isinstance(value, Decimal) and not math.isfinite(value):
            found.append(f"{name}={value}")
    if family.table == "mbp10":
        for side, ordered in (("bid", lambda a, b: b <= a), ("ask", lambda a, b: b >= a)):
            levels = [row[f"{side}_px_{i:02d}"] for i in range(10)]
            pairs = [(a, b) for a, b in zip(levels, levels[1:], strict=False) if None not in (a, b)]
            if not all(ordered(a, b) for a, b in pairs):
                found.append(f"{side} levels out of order")
    return found


@pytest.mark.parametrize("name", FILES)
def test_mutants_are_rejected_cleanly_or_store_only_possible_records(
    name: str, samples: Path, cli, tmp_path: Path
) -> None:
    original = samples / name
    data = decompressed(original)
    compressed = original.read_bytes() if name.endswith(".zst") else None
    rng = np.random.default_rng([SEED, FILES.index(name)])
    directory = tmp_path / "mutants"
    directory.mkdir()
    for i, mutant in enumerate(_mutants(data, compressed, rng)):
        suffix = ".dbn.zst" if mutant[:4] == zstandard.FRAME_HEADER else ".dbn"
        (directory / f"m{i:03d}{suffix}").write_bytes(mutant)
    store = tmp_path / "fuzz.duckdb"
    result = cli("ingest", "--from-file", str(directory), "--db", str(store), "--json")
    output = result.output + result.stderr
    assert "Traceback" not in output and "internal error" not in output, output
    failed = json.loads(result.stdout)["failed"]
    # Each rejection is one line naming its mutant, once; the exit code says whether any failed.
    assert all("\n" not in f["error"] and f["error"] and "/mutants/m" in f["input"] for f in failed), failed
    assert len({f["input"] for f in failed}) == len(failed)
    assert result.exit_code == (1 if failed else 0), output
    assert store.exists()  # the run got past planning to the store, rejected mutants and all
    schema, clean = expected_rows(original)
    clean_rows = set(canonical(clean))
    impossible = []
    for label, row in _stored_rows(store, MODEL.family_of(schema).table):
        if canonical([row])[0] in clean_rows:
            continue
        source = Path(label.split(" [")[0].split(" (")[0])
        problems = _impossible(row, schema, source)
        if problems:
            impossible.append(f"{source.name}: {'; '.join(problems)}: {json.dumps(row, default=str)[:300]}")
    assert impossible == []
