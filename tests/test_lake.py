"""The Parquet lake (``--db lake:DIR``) on a real directory and a real DuckDB or PostgreSQL
ledger: the same records as the embedded store, file for file; hive day partitions other
readers (Polars, pyarrow, DuckDB) read as they are; a chunk's files appear whole or not at all,
a re-run replaces them, and a killed run's leftovers go when the chunk is written again."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import marketpipe
from marketpipe.config import IngestRequest, load_settings
from marketpipe.pipeline import ingest
from marketpipe.samples import (
    metadata_bytes,
    synthetic_trades,
    write_dbn,
    write_trade_days,
    write_trades_file,
)

from dbn_reference import MODEL
from pg import POSTGRES, SERVER, TIMESCALE, admin_url, fresh_database

FAMILY = MODEL.family_of("trades")
NO_S3FS = pytest.mark.skipif(
    importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed: nothing is missing"
)
FINAL = re.compile(r"[0-9a-f]{16}-[0-9a-f]{12}-\d+\.parquet")


def _files(lake: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in (lake / "trades").rglob(pattern) if p.is_file())


def _listed(lake: Path, ledger: Path | None = None) -> list[str]:
    """The files the lake's DuckDB ledger lists for trades."""
    with duckdb.connect(str(ledger or lake / "_marketpipe" / "ledger.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT path FROM marketpipe_lake_files WHERE table_name = 'trades'").fetchall()
    return sorted(p for (p,) in rows)


def _read(db: str) -> pa.Table:
    with marketpipe.open(db) as reader:
        return reader.read("trades")


def _by_time(table: pa.Table) -> pa.Table:
    return table.sort_by(
        [(FAMILY.time_column, "ascending"), ("instrument_id", "ascending"), ("sequence", "ascending")]
    )


def test_the_lake_holds_what_the_embedded_store_holds_file_for_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_trade_days(tmp_path / "d", 3, 20_000)
    lake = tmp_path / "lake"
    assert cli("ingest", "--from-file", str(tmp_path / "d"), "--db", f"lake:{lake}").exit_code == 0
    assert cli("ingest", "--from-file", str(tmp_path / "d")).exit_code == 0  # the DuckDB default
    for fmt in ("parquet", "csv"):
        lake_out, duck_out = tmp_path / f"lake.{fmt}", tmp_path / f"duck.{fmt}"
        assert (
            cli(
                "export",
                "--schema",
                "trades",
                "--format",
                fmt,
                "--out",
                str(lake_out),
                "--db",
                f"lake:{lake}",
            ).exit_code
            == 0
        )
        assert cli("export", "--schema", "trades", "--format", fmt, "--out", str(duck_out)).exit_code == 0
        assert lake_out.read_bytes() == duck_out.read_bytes()
    # One directory per table, one hive partition per UTC day, final names only.
    days = sorted(p.name for p in (lake / "trades").iterdir())
    assert days == ["day=2024-03-04", "day=2024-03-05", "day=2024-03-06"]
    files = _files(lake)
    assert [f.name for f in files if not FINAL.fullmatch(f.name)] == []
    assert [str(f.relative_to(lake)) for f in files] == _listed(lake)
    for file in files:
        assert pq.read_schema(file) == FAMILY.arrow_schema  # the exact types export writes
    status = cli("status", "--json", "--db", f"lake:{lake}")
    tables = {t["table"]: t["rows"] for t in json.loads(status.output)["tables"]}
    assert tables["trades"] == 60_000 and tables["mbo"] == 0


def test_other_readers_read_the_lake_directory_as_it_is(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Polars, pyarrow datasets and DuckDB read the partitioned directory directly (the day
    partition is a column of theirs); they see the records marketpipe exports."""
    polars = pytest.importorskip("polars", reason="Polars (the polars extra) is not installed")
    write_trade_days(tmp_path / "d", 2, 5_000)
    lake = tmp_path / "lake"
    assert cli("ingest", "--from-file", str(tmp_path / "d"), "--db", f"lake:{lake}").exit_code == 0
    exported = _by_time(_read(f"lake:{lake}"))
    frame = polars.scan_parquet(f"{lake}/trades/**/*.parquet", hive_partitioning=True).collect()
    assert sorted(frame["day"].cast(str).unique().to_list()) == ["2024-03-04", "2024-03-05"]
    assert _by_time(frame.drop("day").to_arrow()).cast(FAMILY.arrow_schema).equals(exported)
    dataset = ds.dataset(lake / "trades", partitioning="hive", format="parquet")
    assert _by_time(dataset.to_table(columns=FAMILY.column_names)).equals(exported)
    with duckdb.connect() as con:
        glob = f"{lake}/trades/*/*.parquet"
        rows = con.execute(
            f"SELECT count(*), count(DISTINCT day) FROM read_parquet('{glob}', hive_partitioning = true)"
        ).fetchone()
    assert rows == (10_000, 2)


def test_a_rerun_replaces_the_chunks_files(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_trade_days(tmp_path / "d", 2, 5_000)
    lake = tmp_path / "lake"
    command = ("ingest", "--from-file", str(tmp_path / "d"), "--db", f"lake:{lake}")
    assert cli(*command).exit_code == 0
    before = _files(lake)
    assert cli(*command, "--force").exit_code == 0
    after = _files(lake)
    assert len(after) == len(before) and not set(before) & set(after)
    assert [str(f.relative_to(lake)) for f in after] == _listed(lake)
    assert ds.dataset(lake / "trades", partitioning="hive").count_rows() == 10_000


def test_a_failed_chunk_leaves_no_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = write_trade_days(tmp_path / "d", 3, 2_000)
    bad = synthetic_trades(2_000, dt.date(2024, 3, 5), seed=1)
    bad["size"] = 0  # every trade breaks a rule: above the quarantine limit, the chunk fails
    write_trades_file(paths[1], bad)
    lake = tmp_path / "lake"
    result = cli("ingest", "--from-file", str(tmp_path / "d"), "--db", f"lake:{lake}")
    assert result.exit_code == 1
    assert sorted(p.name for p in (lake / "trades").iterdir() if any(p.iterdir())) == [
        "day=2024-03-04",
        "day=2024-03-06",
    ]
    assert [f.name for f in _files(lake, "*.tmp")] == []
    assert _read(f"lake:{lake}").num_rows == 4_000


@pytest.mark.slow
def test_a_killed_run_leaves_nothing_visible_and_the_next_run_clears_its_files(tmp_path: Path) -> None:
    """kill -9 while a chunk's files are written: marketpipe reads none of them, and the run
    that resumes the chunk stores it once and removes what the killed one left."""
    write_trade_days(tmp_path / "d", 1, 1_500_000)
    lake = tmp_path / "lake"
    env = {**os.environ, "MARKETPIPE_DB": f"lake:{lake}", "MARKETPIPE_BATCH_SIZE": "50000"}
    command = [sys.executable, "-m", "marketpipe", "ingest", "--from-file", str(tmp_path / "d")]
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None and not _files(lake, "*.tmp"):
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    left = _files(lake, "*.tmp")
    assert left, "the run was not caught writing"
    assert _read(f"lake:{lake}").num_rows == 0
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not any(f.exists() for f in left) and _files(lake, "*.tmp") == []
    assert [str(f.relative_to(lake)) for f in _files(lake)] == _listed(lake)
    assert _read(f"lake:{lake}").num_rows == 1_500_000


def test_a_lake_at_an_fsspec_url_with_its_own_ledger(tmp_path: Path) -> None:
    """``lake:`` and an fsspec URL (here fsspec's in-memory filesystem): written through fsspec,
    read by DuckDB through fsspec, the same records as a local directory."""
    write_trade_days(tmp_path / "d", 2, 3_000)
    request = IngestRequest(from_file=str(tmp_path / "d"))
    ledger = str(tmp_path / "ledger.duckdb")
    remote = load_settings(db="lake:memory://marketpipe-test/lake", ledger=ledger)
    assert ingest(request, remote).exit_code == 0
    assert ingest(request, load_settings(db=f"lake:{tmp_path / 'local'}")).exit_code == 0
    with marketpipe.open("lake:memory://marketpipe-test/lake", ledger) as reader:
        read = reader.read("trades")
    assert read.num_rows == 6_000
    assert _by_time(read).equals(_by_time(_read(f"lake:{tmp_path / 'local'}")))


def test_query_quarantine_and_coverage_read_the_lake(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    [path] = write_trade_days(tmp_path / "d", 1, 1_000)
    records = synthetic_trades(1_000, dt.date(2024, 3, 4), seed=0)
    records["size"][:3] = 0  # three records quarantined, the chunk stored
    write_trades_file(path, records)
    lake = f"lake:{tmp_path / 'lake'}"
    assert cli("ingest", "--from-file", str(tmp_path / "d"), "--db", lake).exit_code == 0
    counted = cli(
        "query",
        "SELECT count(*) AS n, min(ts_recv_time) AS first FROM trades_v",
        "--format",
        "json",
        "--db",
        lake,
    )
    assert counted.exit_code == 0 and json.loads(counted.output)[0]["n"] == 997
    for changing, found in (
        ("DROP VIEW trades", "DROP"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("SELECT 1; DROP VIEW trades", "SELECT, DROP"),
    ):
        refused = cli("query", changing, "--db", lake)
        assert refused.exit_code == 2
        assert (
            refused.output.strip()
            == f"error: query: query runs one SELECT statement (or EXPLAIN of one); found: {found}"
        )
    listed = cli("quarantine", "--db", lake)
    assert listed.exit_code == 0 and listed.output.count("size") >= 3
    coverage = cli("coverage", "--schema", "trades", "--json", "--db", lake)
    assert coverage.exit_code == 0, coverage.output
    assert sum(s["rows"] for s in json.loads(coverage.output)["symbols"].values()) == 997


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["ingest", "--db", "lake:s3://bucket/prefix"],
            "error: the lake s3://bucket/prefix needs a ledger: give --ledger",
        ),
        (
            ["ingest", "--db", "lake:bogus://x", "--ledger", "l.duckdb"],
            "error: cannot open the lake bogus://x: Protocol not known: bogus",
        ),
        pytest.param(
            ["ingest", "--db", "lake:s3://bucket/prefix", "--ledger", "l.duckdb"],
            "error: cannot open the lake s3://bucket/prefix: Install s3fs to access S3"
            " (pip install 'marketpipe[s3]')",
            marks=NO_S3FS,
        ),
        (["ingest", "--db", "lake:"], "error: bad setting: "),
        (["ingest", "--db", "lake:lk", "--ledger", "mysql://root@h/x"], "error: bad setting: "),
        (["status", "--db", "lake:missing"], "error: no marketpipe lake at /"),
        (["ingest", "--db", "lake:lk", "--ledger", "store.duckdb"], "error: /"),
        (["status", "--db", "lake:lk", "--ledger", "store.duckdb"], "error: /"),
    ],
)
def test_bad_lake_locations_are_one_line(cli, tmp_path: Path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    write_trade_days(tmp_path / "d", 1, 10)
    if "store.duckdb" in args:  # an embedded store's file given as a lake's ledger
        assert cli("ingest", "--from-file", str(tmp_path / "d")).exit_code == 0
    extra = ["--from-file", str(tmp_path / "d")] if args[0] == "ingest" else []
    result = cli(*args, *extra)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith(message), lines
    if "store.duckdb" in args:
        assert lines[0].endswith("holds a marketpipe store's tables: give the lake a ledger of its own")
    assert not (tmp_path / "missing").exists() and not (tmp_path / "x").exists()
    assert not (tmp_path / "l.duckdb").exists()  # a refused lake made no ledger either


@NO_S3FS
def test_an_input_url_whose_filesystem_is_not_installed_names_the_extra(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("ingest", "--from-file", "s3://bucket/day.dbn.zst")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --from-file s3://bucket/day.dbn.zst: Install s3fs to access S3 (pip install 'marketpipe[s3]')"
    )


def test_a_large_day_is_split_into_files_of_bounded_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file is closed once FILE_ARROW_BYTES of rows went in (512 MiB; here 256 KiB), so a busy
    day is several files, all listed, none larger than the bound plus one batch."""
    from marketpipe.stores import lake as lake_store

    monkeypatch.setattr(lake_store, "FILE_ARROW_BYTES", 256 * 1024)
    write_trade_days(tmp_path / "d", 1, 30_000)
    settings = load_settings(db=f"lake:{tmp_path / 'lake'}", batch_size=2_000)
    assert ingest(IngestRequest(from_file=str(tmp_path / "d")), settings).exit_code == 0
    files = _files(tmp_path / "lake")
    assert len(files) >= 5 and {f.parent.name for f in files} == {"day=2024-03-04"}
    assert [str(f.relative_to(tmp_path / "lake")) for f in files] == _listed(tmp_path / "lake")
    tables = [pq.read_table(f) for f in files]
    per_row = max(t.nbytes / t.num_rows for t in tables)
    assert all(t.nbytes < 256 * 1024 + 2_000 * per_row for t in tables)
    assert sum(t.num_rows for t in tables) == 30_000


def test_a_days_export_opens_that_days_files_and_a_damaged_file_is_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_trade_days(tmp_path / "d", 2, 1_000)
    lake = tmp_path / "lake"
    assert cli("ingest", "--from-file", str(tmp_path / "d"), "--db", f"lake:{lake}").exit_code == 0
    [first_day] = (lake / "trades" / "day=2024-03-04").glob("*.parquet")
    first_day.write_bytes(b"not parquet")  # damaged by hand
    second = cli(
        "export",
        "--schema",
        "trades",
        "--out",
        str(tmp_path / "5th.parquet"),
        "--db",
        f"lake:{lake}",
        "--start-date",
        "2024-03-05",
        "--end-date",
        "2024-03-05",
    )
    assert second.exit_code == 0, second.output
    assert pq.read_metadata(tmp_path / "5th.parquet").num_rows == 1_000
    whole = cli(
        "export", "--schema", "trades", "--out", str(tmp_path / "all.parquet"), "--db", f"lake:{lake}"
    )
    lines = [line for line in whole.output.splitlines() if line.strip()]
    assert whole.exit_code == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot read the lake lake:{lake}: ") and "--force" in lines[0]
    assert not (tmp_path / "all.parquet").exists()


# The ledger's server ends the connection while it runs COMMIT, the first time only (a
# sequence is not rolled back): the client cannot know whether the commit went through.
DIE_AT_COMMIT = """
CREATE SEQUENCE commit_faults;
CREATE FUNCTION die_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('commit_faults') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON marketpipe_lake_files
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION die_at_commit();
"""


def test_files_of_a_commit_that_failed_stay_until_the_chunk_is_written_again(
    cli, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The ledger's connection dies during COMMIT: whether it went through is unknown, so the
    renamed files stay (deleting them could lose a done chunk's rows); marketpipe reads only
    what the ledger lists, and the next write of the chunk deletes the files it does not list."""
    import psycopg

    write_trade_days(tmp_path / "first", 1, 1_000)
    lake = tmp_path / "lake"
    db = ["--db", f"lake:{lake}", "--ledger", pg_url]
    assert cli("ingest", "--from-file", str(tmp_path / "first"), *db).exit_code == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(DIE_AT_COMMIT)

    def listed() -> list[str]:
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT path FROM marketpipe_lake_files ORDER BY path").fetchall()
        return [p for (p,) in rows]

    before = listed()
    day = write_trades_file(tmp_path / "second.dbn", synthetic_trades(3_000, dt.date(2024, 3, 5), seed=7))
    monkeypatch.setenv("MARKETPIPE_DB_RETRIES", "1")  # the chunk fails instead of retrying
    failed = cli("ingest", "--from-file", str(day), *db)
    assert failed.exit_code == 1 and "administrator command" in failed.output, failed.output
    kept = [f for f in _files(lake) if str(f.relative_to(lake)) not in before]
    assert kept and all(FINAL.fullmatch(f.name) for f in kept)  # renamed, then the commit died
    assert listed() == before
    with marketpipe.open(f"lake:{lake}", pg_url) as reader:
        assert reader.read("trades").num_rows == 1_000  # only what the ledger lists is read

    again = cli("ingest", "--from-file", str(day), *db)
    assert again.exit_code == 0, again.output
    assert not any(f.exists() for f in kept)
    assert [str(f.relative_to(lake)) for f in _files(lake)] == listed()
    with marketpipe.open(f"lake:{lake}", pg_url) as reader:
        assert reader.read("trades").num_rows == 4_000


def test_one_process_writes_two_chunks_at_once_with_either_ledger(
    cli, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Either ledger takes writer threads: one process runs MARKETPIPE_WRITERS lanes, each with a
    ledger connection of its own (PostgreSQL: a connection; DuckDB: a connection to the file
    the process has open); the exports equal one writer's lake."""
    write_trade_days(tmp_path / "d", 4, 5_000)
    single = tmp_path / "single"
    with monkeypatch.context() as one_writer:
        one_writer.setenv("MARKETPIPE_WRITERS", "1")
        assert cli("ingest", "--from-file", str(tmp_path / "d"), "--db", f"lake:{single}").exit_code == 0
    expected = _read(f"lake:{single}")
    for name, ledger in (("postgresql", pg_url), ("duckdb", None)):
        lake = tmp_path / name
        log = tmp_path / "logs" / "marketpipe.jsonl"
        log.unlink(missing_ok=True)
        extra = ["--ledger", ledger] if ledger else []
        result = cli("ingest", "--from-file", str(tmp_path / "d"), "--db", f"lake:{lake}", *extra)
        assert result.exit_code == 0, result.output
        lines = log.read_text().splitlines()
        assert {json.loads(line).get("lane") for line in lines if '"chunk.start"' in line} == {1, 2}, name
        with marketpipe.open(f"lake:{lake}", ledger) as reader:
            assert reader.read("trades").equals(expected), name


@pytest.mark.parametrize(
    "store", ["duckdb", POSTGRES, TIMESCALE, "lake", pytest.param("lake-postgresql", marks=SERVER)]
)
def test_a_file_of_no_records_is_a_done_chunk_in_every_store(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, request, store: str
) -> None:
    """Databento delivers zero-record files for days without data: the chunk is done with 0
    rows, nothing is written to the lake, and a re-run skips it (the lake's DuckDB ledger once
    failed on an empty file list, #23)."""
    start = 1_709_510_400 * 10**9  # 2024-03-04
    metadata = metadata_bytes("GLBX.MDP3", "trades", start, start + 86_400 * 10**9, "raw_symbol", {})
    empty = write_dbn(tmp_path / "empty.dbn", metadata, [])
    lake = tmp_path / "lake"
    where = {
        "duckdb": ["--db", str(tmp_path / "s.duckdb")],
        "postgresql": ["--db", request.getfixturevalue("pg_url") if store == "postgresql" else ""],
        "timescaledb": ["--db", request.getfixturevalue("timescale_url") if store == "timescaledb" else ""],
        "lake": ["--db", f"lake:{lake}"],
        "lake-postgresql": ["--db", f"lake:{lake}", "--ledger", request.getfixturevalue("pg_url")]
        if store == "lake-postgresql"
        else [],
    }[store]
    first = cli("ingest", "--from-file", str(empty), *where, "--json")
    assert first.exit_code == 0, first.output
    counts = json.loads(first.stdout)["schemas"]["trades"]
    assert {k: v for k, v in counts.items() if k != "seconds"} == dict.fromkeys(
        ("read", "stored", "quarantined", "skipped", "failed"), 0
    )
    if store.startswith("lake"):
        assert _files(lake) == []
    again = cli("ingest", "--from-file", str(empty), *where, "--json")
    assert json.loads(again.stdout)["schemas"]["trades"]["skipped"] == 1
    status = cli("status", *where, "--json")
    assert {t["table"]: t["rows"] for t in json.loads(status.stdout)["tables"]}["trades"] == 0


def _open_at_once(lake: str, ledger: str, writers: int) -> list[str]:
    """``writers`` threads opening the lake for writing at the same moment; their errors."""
    import threading

    from marketpipe.stores import open_store

    barrier = threading.Barrier(writers)
    errors: list[str] = []

    def open_lake() -> None:
        barrier.wait()
        try:
            open_store(load_settings(db=lake, ledger=ledger).store, MODEL, read_only=False).close()
        except Exception as exc:  # every writer's failure, to show them all
            errors.append(str(exc))

    threads = [threading.Thread(target=open_lake) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_writers_opening_a_new_postgresql_ledger_at_once_all_succeed(pg_url: str, tmp_path: Path) -> None:
    """Eight writers make a new ledger's file list at the same moment: one makes it under the
    migration lock, the others find it (#23: a writer failed with a duplicate key in pg_type,
    in 4 of 5 rounds before the fix)."""
    for round in range(3):
        with fresh_database(admin_url(pg_url)) as ledger:
            assert _open_at_once(f"lake:{tmp_path / str(round)}", ledger, 8) == []
