"""``marketpipe query``: the user's own SQL, read-only, against DuckDB and PostgreSQL alike."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from marketpipe.samples import make_sample

from pg import POSTGRES

COUNTS = "SELECT symbol, count(*) AS n FROM trades_v GROUP BY symbol ORDER BY symbol"
FIRST = "SELECT price, ts_recv_time, size FROM trades_v ORDER BY ts_recv, sequence LIMIT 1"


@pytest.fixture(params=["duckdb", POSTGRES])
def db(request: pytest.FixtureRequest, tmp_path: Path, cli) -> str:  # type: ignore[no-untyped-def]
    url = str(tmp_path / "store.duckdb") if request.param == "duckdb" else request.getfixturevalue("pg_url")
    make_sample(tmp_path / "sample")
    result = cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", url)
    assert result.exit_code == 0, result.output
    return str(url)


def _json(cli, db: str, statement: str) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    result = cli("query", statement, "--db", db, "--format", "json")
    assert result.exit_code == 0, result.output
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_the_same_sql_gives_the_same_exact_rows_on_either_store(cli, db: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    counts = _json(cli, db, COUNTS)
    assert [row["symbol"] for row in counts] == ["CL.FUT", "ES.FUT"]
    assert (
        sum(int(str(row["n"])) for row in counts)
        == _json(cli, db, "SELECT count(*) AS n FROM trades")[0]["n"]
    )
    [first] = _json(cli, db, FIRST)
    # Exact: the price as its nine decimals, the time (a view column) to the nanosecond in UTC.
    assert first["price"] == "72.000000000" and str(first["ts_recv_time"]).startswith("2024-01-02 14:00:00")
    table = pq.read_table(_parquet(cli, db, tmp_path, "SELECT price FROM trades"))
    assert pa.types.is_decimal(table.schema.field("price").type)


def _parquet(cli, db: str, tmp_path: Path, statement: str) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / "q.parquet"
    result = cli("query", statement, "--db", db, "--format", "parquet", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    ("statement", "fragment"),
    [
        ("SELEC 1", "error: query: "),
        ("DELETE FROM trades", "error: query: "),
        ("SELECT * FROM no_such_table", "error: query: "),
    ],
)
def test_bad_or_writing_sql_fails_in_one_line_and_changes_nothing(  # type: ignore[no-untyped-def]
    cli, db: str, statement: str, fragment: str
) -> None:
    before = _json(cli, db, "SELECT count(*) AS n FROM trades")
    result = cli("query", statement, "--db", db)
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith(fragment)
    assert _json(cli, db, "SELECT count(*) AS n FROM trades") == before


def test_table_shows_the_first_rows_and_the_count(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("query", "SELECT symbol, price FROM trades ORDER BY ts_recv", "--db", db, "--limit", "3")
    total = _json(cli, db, "SELECT count(*) AS n FROM trades")[0]["n"]
    assert result.exit_code == 0 and result.stdout.rstrip().endswith(f"first 3 of {total:,} rows")


def test_output_arguments_are_checked_before_the_store_opens(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "none.duckdb"
    parquet = cli("query", "SELECT 1", "--db", str(store), "--format", "parquet")
    assert parquet.exit_code == 2 and "--format parquet writes a file: give --out" in parquet.output
    own = cli("query", "SELECT 1", "--db", str(store), "--format", "csv", "--out", str(store))
    assert own.exit_code == 2
    assert not store.exists()


@pytest.mark.parametrize("kind", ["duckdb", "lake"])
def test_query_reads_the_store_and_nothing_else(cli, kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The escapes a DuckDB query could take (#24): writing a file, reading any file, attaching
    another database, installing an extension, a second statement, turning the switches back.
    Each is refused in one line, exit 2, and no file appears."""
    db = str(tmp_path / "store.duckdb") if kind == "duckdb" else f"lake:{tmp_path / 'lake'}"
    make_sample(tmp_path / "sample")
    assert cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", db).exit_code == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.csv"
    secret.write_text("a\n42\n")
    escapes = [
        f"COPY (SELECT 42) TO '{outside / 'x.csv'}'",
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM '{secret}'",
        f"ATTACH '{outside / 'y.duckdb'}' AS y",
        "INSTALL httpfs",
        "SELECT 1; SELECT 2",
        "SET enable_external_access = true",
        f"SELECT count(*) FROM trades UNION ALL SELECT count(*) FROM read_csv('{secret}')",
    ]
    for statement in escapes:
        result = cli("query", statement, "--db", db)
        assert result.exit_code == 2, (statement, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: query: "), (statement, result.output)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.csv"]
    # Reading the store itself still works, views and all.
    result = cli("query", "SELECT count(*) AS n FROM trades_v", "--format", "json", "--db", db)
    assert result.exit_code == 0, result.output
