"""``marketpipe delete``: a schema's rows (some symbols, some days) go with the ledger's record
of them, in one transaction, on every store; coverage then shows what is missing, and the
next ingest of the same inputs stores exactly that again (#24 item 4).

The API cases run against the local HTTPS server (tests/databento_server.py); each store is a
real one: a DuckDB file, plain PostgreSQL, TimescaleDB (compressed days too) and the lake.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from test_coverage import _day_file
from test_identity import CL, JAN, downloads, run, served, stored

from databento_server import DatabentoServer

DAYS = ("--start-date", "2024-01-03", "--end-date", "2024-01-03")


@pytest.fixture
def db(store_location: str) -> str:
    return store_location


def _coverage(cli, db: str, *args: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    result = cli("coverage", "--schema", "trades", "--db", db, *args, "--json")
    assert result.exit_code == 0, result.output
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_delete_a_symbols_day_then_the_same_ingest_fetches_only_that(  # type: ignore[no-untyped-def]
    api: DatabentoServer, db: str, cli
) -> None:
    run(db, ["CL.FUT"])
    before = stored(db)
    assert before == served(list(CL.values()), JAN) and downloads(api) == 1
    dry = cli("delete", "--schema", "trades", "--symbols", "CLH4", *DAYS, "--db", db, "--dry-run", "--json")
    counted = json.loads(dry.stdout)["rows"]
    one_day = served([CL["CLH4"]], [JAN[1]])
    assert dry.exit_code == 0 and counted == sum(one_day.values()) > 0
    assert stored(db) == before  # a dry run deletes nothing

    result = cli("delete", "--schema", "trades", "--symbols", "CLH4", *DAYS, "--db", db, "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == counted
    assert stored(db) == before - one_day
    assert _coverage(cli, db)["complete"] is False  # the week's chunk is no longer whole

    # The same ingest: only CLH4's day is requested (coverage of the rest is still recorded).
    run(db, ["CL.FUT"])
    assert downloads(api) == 2
    assert stored(db) == before
    assert _coverage(cli, db)["complete"] is True


def test_delete_whole_days_of_day_files_forgets_them_and_the_files_store_them_again(  # type: ignore[no-untyped-def]
    db: str, cli, tmp_path: Path
) -> None:
    days = [dt.date(2024, 1, 2) + dt.timedelta(days=i) for i in range(3)]
    for day in days:
        _day_file(tmp_path / "files", day)
    assert cli("ingest", "--from-file", str(tmp_path / "files"), "--db", db).exit_code == 0
    before = stored(db)
    result = cli("delete", "--schema", "trades", *DAYS, "--db", db, "--yes")
    assert result.exit_code == 0, result.output
    assert "deleted 200 trades rows; 1 chunk forgotten" in result.output
    coverage = _coverage(cli, db, "--start-date", "2024-01-02", "--end-date", "2024-01-04")
    assert coverage["states"] == {"2024-01-02": "done", "2024-01-03": "never", "2024-01-04": "done"}
    assert sum(n for s in coverage["symbols"].values() for n in s["rows_by_session"].values()) == 400  # type: ignore[attr-defined]
    again = cli("ingest", "--from-file", str(tmp_path / "files"), "--db", db)
    assert again.exit_code == 0 and "skipped 2 chunks already stored" in again.output
    assert stored(db) == before
    assert _coverage(cli, db)["complete"] is True


@pytest.mark.timescale
def test_delete_from_compressed_days_of_timescaledb(api: DatabentoServer, timescale_url: str, cli) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    run(timescale_url, ["CL.FUT"])
    before = stored(timescale_url)
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        (compressed,) = conn.execute(
            "SELECT count(compress_chunk(c)) FROM show_chunks('trades') c"
        ).fetchone()  # type: ignore[misc]
    assert compressed > 0
    result = cli("delete", "--schema", "trades", "--symbols", "CL.FUT", *DAYS, "--db", timescale_url, "--yes")
    assert result.exit_code == 0, result.output
    assert stored(timescale_url) == before - served(list(CL.values()), [JAN[1]])
    run(timescale_url, ["CL.FUT"])
    assert stored(timescale_url) == before


def test_refused_deletes_change_nothing(db: str, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _day_file(tmp_path / "files", dt.date(2024, 1, 2))
    assert cli("ingest", "--from-file", str(tmp_path / "files"), "--db", db).exit_code == 0
    before = stored(db)
    no_terminal = cli("delete", "--schema", "trades", "--db", db)  # CliRunner's stdin is no terminal
    assert no_terminal.exit_code == 2 and "give --yes" in no_terminal.output
    backwards = cli("delete", "--schema", "trades", "--db", db, "--yes", "--start-date", "2024-01-05",
                    "--end-date", "2024-01-02")  # fmt: skip
    assert backwards.exit_code == 2 and "before start date" in backwards.output
    bad_schema = cli("delete", "--schema", "tradez", "--db", db, "--yes")
    assert bad_schema.exit_code == 2
    typo = cli("delete", "--schema", "trades", "--symbols", "ESH4,ESZZ", "--db", db, "--yes")
    assert typo.exit_code == 2 and "--symbols: ESZZ: the store knows no instrument" in typo.output
    assert stored(db) == before
    missing = cli("delete", "--schema", "trades", "--db", str(tmp_path / "none.duckdb"), "--yes")
    assert missing.exit_code == 2 and not (tmp_path / "none.duckdb").exists()


def test_forget_failures_clears_failed_inputs_that_are_gone(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Six unreadable files fail at planning; once two are removed, forget-failures drops those
    two from the ledger (and status), keeps the four still there, and --all the rest."""
    db = str(tmp_path / "store.duckdb")
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(6):
        (bad / f"notes{i}.dbn").write_text("not market data\n")
    _day_file(tmp_path / "bad", dt.date(2024, 1, 2))
    result = cli("ingest", "--from-file", str(bad), "--db", db)
    assert result.exit_code == 1

    def failed() -> list[str]:
        status = json.loads(cli("status", "--db", db, "--json").stdout)
        return sorted(Path(f["input"]).name for f in status["failed"])

    assert failed() == [f"notes{i}.dbn" for i in range(6)]
    text = cli("status", "--db", db).output
    assert "6 failed chunks in all (the latest 5 above)" in text
    assert text.count(str(bad / "notes0.dbn")) <= 1  # the path is not repeated in its line
    (bad / "notes0.dbn").unlink()
    (bad / "notes1.dbn").unlink()
    dry = cli("forget-failures", "--db", db, "--dry-run")
    assert dry.exit_code == 0 and "would forget 2 failed chunks whose input is gone; kept 4" in dry.output
    assert len(failed()) == 6
    done = cli("forget-failures", "--db", db)
    assert done.exit_code == 0 and "forgot 2 failed chunks" in done.output
    assert failed() == [f"notes{i}.dbn" for i in range(2, 6)]
    assert "forgot 4 failed chunks" in cli("forget-failures", "--db", db, "--all").output
    assert failed() == []
    rows = json.loads(cli("query", "SELECT count(*) AS n FROM trades", "--db", db, "--format", "json").stdout)
    assert rows == [{"n": 200}]  # the good file's rows are untouched
