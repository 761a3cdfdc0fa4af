"""marketpipe verify [--repair]: the store against its ledger, on every store, after real damage
(rows deleted by hand, a lake file deleted or truncated), then repaired and stored again."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import psycopg
import pytest

from marketpipe.samples import write_trade_days

from databento_server import DatabentoServer
from pg import fingerprint

DAYS = 3
ROWS = 20_000


@pytest.fixture
def db(store_location: str) -> str:
    if store_location.startswith("arrow:"):
        pytest.skip("these tests damage each built-in kind's own files by hand")
    return store_location


def _rows(db: str) -> int:
    if db.startswith("postgresql"):
        return fingerprint(db, "trades")[0]
    if db.startswith("lake:"):
        return sum(1 for _ in _lake_rows(db))
    with duckdb.connect(db, read_only=True) as con:
        return int(con.execute("SELECT count(*) FROM trades").fetchone()[0])  # type: ignore[index]


def _lake_rows(db: str) -> list[object]:
    import marketpipe

    with marketpipe.open(db) as reader:
        return reader.read("trades")["ts_recv"].to_pylist()


def _delete_some_rows(db: str) -> None:
    """By hand, behind marketpipe's back: the first day's rows of instrument 1."""
    statement = "DELETE FROM trades WHERE instrument_id = 1 AND ts_recv < {}"
    if db.startswith("postgresql"):
        with psycopg.connect(db) as conn:
            conn.execute(statement.format(1709596800 * 10**9))  # 2024-03-05 00:00 UTC in ns
    else:
        with duckdb.connect(db) as con:
            con.execute(statement.format("TIMESTAMP '2024-03-05'"))


def _verify(cli, db: str, *flags: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def,type-arg]
    result = cli("verify", "--db", db, "--json", *flags)
    return result.exit_code, json.loads(result.stdout)


def test_damage_is_found_repaired_and_stored_again(cli, db: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_trade_days(tmp_path / "d", DAYS, ROWS)
    assert cli("ingest", "--from-file", str(tmp_path / "d"), "--db", db).exit_code == 0
    code, report = _verify(cli, db)
    assert (code, report["chunks"], report["damaged"]) == (0, DAYS, [])
    if db.startswith("lake:"):
        root = Path(db.removeprefix("lake:"))
        files = sorted((root / "trades").rglob("*.parquet"))
        files[0].unlink()
        files[1].write_bytes(files[1].read_bytes()[:100])  # truncated
        changed = bytearray(files[2].read_bytes())  # one byte changed in place, same size
        changed[len(changed) // 2] ^= 0xFF
        files[2].write_bytes(bytes(changed))
        export = cli("export", "--schema", "trades", "--out", str(tmp_path / "x.parquet"), "--db", db)
        assert export.exit_code != 0  # a listed file is gone: every read fails until repaired
        damaged_count = 3
    else:
        _delete_some_rows(db)
        damaged_count = 1
    code, report = _verify(cli, db)
    assert code == 1 and len(report["damaged"]) == damaged_count, report
    if db.startswith("lake:"):
        reasons = " ".join(d["reason"] for d in report["damaged"])
        assert "missing" in reasons and "bytes, " in reasons and "SHA-256" in reasons, reasons
    assert all("trades-2024-03-0" in d["input"] for d in report["damaged"])
    # Found, not changed: a second look finds the same.
    assert _verify(cli, db)[1]["damaged"] == report["damaged"]
    code, repaired = _verify(cli, db, "--repair")
    assert code == 1 and repaired["repaired"] and repaired["damaged"] == report["damaged"]
    status = json.loads(cli("status", "--db", db, "--json").stdout)
    assert sum(c["chunks"] for c in status["chunks"] if c["status"] == "failed") == damaged_count
    assert all(f["error"].startswith("damaged (verify): ") for f in status["failed"])
    # Reads work again (3: every row of the lake's was in a damaged file, nothing to export).
    readable = cli("export", "--schema", "trades", "--out", str(tmp_path / "y.parquet"), "--db", db)
    assert readable.exit_code in (0, 3), readable.output
    # The same ingest again stores the damaged chunks again, and only them.
    again = cli("ingest", "--from-file", str(tmp_path / "d"), "--db", db, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["totals"]["stored"] == damaged_count * ROWS
    assert _verify(cli, db) == (0, {**report, "damaged": [], "repaired": False})
    assert _rows(db) == DAYS * ROWS


def test_an_api_chunk_repaired_is_downloaded_again(api: DatabentoServer, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "store.duckdb")
    request = [
        "ingest", "--dataset", "GLBX.MDP3", "--schema", "trades", "--symbols", "CL.FUT",
        "--stype-in", "parent", "--start-date", "2024-01-02", "--end-date", "2024-01-05",
        "--chunk-days", "7", "--db", db,
    ]  # fmt: skip
    assert cli(*request).exit_code == 0
    with duckdb.connect(db) as con:
        stored = int(con.execute("SELECT count(*) FROM trades").fetchone()[0])  # type: ignore[index]
        con.execute("DELETE FROM trades WHERE instrument_id = 1002")
    assert cli(*request).exit_code == 0 and api.count("timeseries.get_range") == 1  # whole, says the ledger
    assert cli("verify", "--db", db, "--repair").exit_code == 1
    assert cli(*request).exit_code == 0
    assert api.count("timeseries.get_range") == 2  # no longer whole: fetched again
    with duckdb.connect(db, read_only=True) as con:
        assert int(con.execute("SELECT count(*) FROM trades").fetchone()[0]) == stored  # type: ignore[index]
    assert cli("verify", "--db", db).exit_code == 0


@pytest.mark.parametrize("repair", [[], ["--repair"]], ids=["verify", "repair"])
def test_verify_of_no_store_is_one_line(cli, tmp_path: Path, repair: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = cli("verify", "--db", str(tmp_path / "none.duckdb"), *repair)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no marketpipe store at {tmp_path / 'none.duckdb'}: nothing has been ingested there"
    ]
    assert not (tmp_path / "none.duckdb").exists()
