"""``marketpipe query``: the user's own SQL, read-only, against DuckDB and PostgreSQL alike."""

from __future__ import annotations

import json
import shutil
import tempfile
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
    assert result.output.startswith(fragment)
    assert _json(cli, db, "SELECT count(*) AS n FROM trades") == before


def test_the_databases_hints_and_caret_are_kept(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    """DuckDB suggests the table meant; PostgreSQL points at the place of the error."""
    result = cli("query", "SELECT * FROM trade", "--db", db)
    assert result.exit_code == 2
    if db.startswith("postgresql"):
        assert 'relation "trade" does not exist' in result.output
        assert "LINE 1: SELECT * FROM trade" in result.output and "^" in result.output
    else:
        assert 'Did you mean "trades"' in result.output


def test_one_statement_only(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("query", "SELECT count(*) FROM trades; SELECT 1", "--db", db)
    assert result.exit_code == 2 and result.output.startswith("error: query: ")
    assert "┃" not in result.output  # neither statement's rows


def test_columns_and_expanded_mode(cli, db: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A row wider than the terminal is shown as psql's expanded mode, every value whole;
    --columns picks the columns; --no-expanded keeps the table and folds, never cuts."""
    monkeypatch.setenv("COLUMNS", "80")
    wide = cli("query", "SELECT * FROM trades_v ORDER BY ts_recv, sequence", "--db", db, "--limit", "2")
    assert wide.exit_code == 0 and "…" not in wide.output
    assert wide.output.startswith("-[ RECORD 1 ]") and "-[ RECORD 2 ]" in wide.output
    assert "ts_recv_time  | 2024-01-02 14:00:00.000025" in wide.output
    picked = cli(
        "query", "SELECT * FROM trades_v ORDER BY ts_recv", "--db", db, "--limit", "1",
        "--columns", "symbol,price",
    )  # fmt: skip
    assert picked.exit_code == 0 and "RECORD" not in picked.output
    header = picked.output.splitlines()[1]
    assert "symbol" in header and "price" in header and "size" not in header
    unknown = cli("query", "SELECT 1 AS a", "--db", db, "--columns", "b")
    assert unknown.exit_code == 2 and "--columns: no column b in the result; it has a" in unknown.output


@pytest.mark.postgres
def test_postgresql_query_reads_no_server_file_even_as_a_superuser(  # type: ignore[no-untyped-def]
    cli, pg_url: str, tmp_path: Path
) -> None:
    """The README's URLs connect as a superuser, who may write and read the server's files:
    query runs the statement as pg_read_all_data, so COPY TO a file, COPY TO PROGRAM and the
    server-file functions are refused (exit 2) and no file appears. The same COPY, run as that
    superuser outside marketpipe, does write the file: the test can fail."""
    import psycopg

    make_sample(tmp_path / "sample")
    assert cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", pg_url).exit_code == 0
    outside = Path(tempfile.mkdtemp(prefix="marketpipe-query-"))
    outside.chmod(0o777)  # the server's own user may write here: only the role stops it
    try:
        proof = outside / "proof.csv"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"COPY (SELECT 42) TO '{proof}'")
        assert proof.exists()
        proof.unlink()
        escapes = [
            f"COPY (SELECT 42) TO '{outside / 'x.csv'}'",
            f"COPY (SELECT 42) TO PROGRAM 'touch {outside / 'y'}'",
            "SELECT pg_read_file('/etc/hostname')",
            "SELECT pg_ls_dir('.')",
            f"SELECT lo_export(lo_import('/etc/hostname'), '{outside / 'z'}')",
            "SELECT 1; SELECT 2",
            "CREATE TABLE stolen (a int)",
        ]
        for statement in escapes:
            result = cli("query", statement, "--db", pg_url)
            assert result.exit_code == 2, (statement, result.output)
            assert result.output.startswith("error: query: "), (statement, result.output)
        assert list(outside.iterdir()) == []
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT to_regclass('stolen')").fetchone() == (None,)
    finally:
        shutil.rmtree(outside)


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
        assert result.output.startswith("error: query: "), (statement, result.output)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.csv"]
    # Reading the store itself still works, views and all.
    result = cli("query", "SELECT count(*) AS n FROM trades_v", "--format", "json", "--db", db)
    assert result.exit_code == 0, result.output
