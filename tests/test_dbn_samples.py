"""Every real Databento sample file ingests and exports exactly what databento-dbn decodes."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from conftest import SAMPLES
from dbn_reference import MODEL, canonical, distinct_data, expected_rows, exported_rows

VALID = sorted(p.name for p in SAMPLES.glob("*.dbn*")) if SAMPLES.is_dir() else []
INVALID = sorted(p.name for p in (SAMPLES / "invalid").iterdir()) if SAMPLES.is_dir() else []


def _stored_rows(db: Path) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return sum(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in MODEL.families)  # type: ignore[index]
    finally:
        con.close()


@pytest.mark.parametrize("name", VALID)
def test_sample_round_trips_exactly(name: str, samples: Path, cli, tmp_path: Path) -> None:
    path = samples / name
    schema, expected = expected_rows(path)
    result = cli("ingest", "--from-file", str(path))
    assert result.exit_code == 0, result.output
    out = tmp_path / "out.parquet"
    result = cli("export", "--schema", schema, "--out", str(out))
    if not expected:  # the ohlcv-1d samples hold no record: said (exit 3), no file written
        assert result.exit_code == 3 and not out.exists(), result.output
        return
    assert result.exit_code == 0, result.output
    arrow_schema, rows = exported_rows(out)
    assert arrow_schema.remove_metadata() == MODEL.family_of(schema).arrow_schema
    assert len(rows) == len(expected)
    assert canonical(rows) == canonical(expected)


def test_whole_directory_ingests_and_reingest_adds_nothing(samples: Path, cli, tmp_path: Path) -> None:
    first = cli("ingest", "--from-file", str(samples))
    assert first.exit_code == 0, first.output
    stored = _stored_rows(tmp_path / "store.duckdb")
    distinct = distinct_data([samples / n for n in VALID])
    assert len(distinct) < len(VALID)  # the samples hold the same data plain and compressed
    assert stored == sum(len(expected_rows(p)[1]) for p in distinct)
    again = cli("ingest", "--from-file", str(samples), "--force")
    assert again.exit_code == 0, again.output
    assert _stored_rows(tmp_path / "store.duckdb") == stored


@pytest.mark.parametrize("name", INVALID)
def test_invalid_file_is_rejected_with_one_line(name: str, samples: Path, cli, tmp_path: Path) -> None:
    result = cli("ingest", "--from-file", str(samples / "invalid" / name))
    assert result.exit_code == 1
    failures = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert len(failures) == 1 and name in failures[0]
    assert "Traceback" not in result.output
    assert _stored_rows(tmp_path / "store.duckdb") == 0
