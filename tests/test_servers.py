"""PostgreSQL as found in the wild: TimescaleDB preloaded, installed but not preloaded, not
permitted, read-only roles, and databases an earlier release made. Real servers only: the
machine's cluster and a second cluster that preloads a real TimescaleDB build."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import psycopg
import pytest

from marketpipe.config import load_settings
from marketpipe.samples import Interval, metadata_bytes, synthetic_trades, write_dbn, write_trades_file
from marketpipe.stores import migrations, open_store
from marketpipe.symbology import NS_PER_DAY, day_ns

from dbn_reference import MODEL
from pg import fingerprint


def _trades_file(path: Path, records: int = 2_000) -> Path:
    return write_trades_file(path, synthetic_trades(records, dt.date(2024, 3, 4), seed=3))


def _modes(tmp_path: Path) -> list[dict[str, object]]:
    lines = (tmp_path / "logs" / "marketpipe.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == "store.mode"]


def _snapshot(url: str) -> tuple[object, ...]:
    """Everything a read-only command must leave as it was."""
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT table_name, table_type FROM information_schema.tables"
            " WHERE table_schema = 'public' ORDER BY 1"
        ).fetchall()
        migrations = conn.execute("SELECT * FROM marketpipe_migrations ORDER BY 1").fetchall()
        extensions = conn.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall()
        chunks = conn.execute("SELECT * FROM marketpipe_chunks ORDER BY chunk_key").fetchall()
        runs = conn.execute("SELECT * FROM marketpipe_runs ORDER BY run_id").fetchall()
    return tables, migrations, extensions, chunks, runs, fingerprint(url, "trades")


@contextmanager
def _role(url: str, grants: list[str]) -> Iterator[str]:
    """A LOGIN role with only ``grants`` in the database of ``url``; its URL while it exists."""
    role = f"marketpipe_role_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        for grant in grants:
            conn.execute(grant.format(role=f'"{role}"'))
    info = psycopg.conninfo.conninfo_to_dict(url)
    try:
        yield f"postgresql://{role}@{info['host']}:{info.get('port', 5432)}/{info['dbname']}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            conn.execute(f'DROP OWNED BY "{role}" CASCADE')
            conn.execute(f'DROP ROLE "{role}"')


READ_ONLY = [
    "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
]


def test_timescaledb_mode_partitions_on_the_index_timestamp(timescale_url: str, cli, tmp_path: Path) -> None:
    """Hypertables on the transformation file's time column and chunk interval, compressible."""
    result = cli("ingest", "--from-file", str(_trades_file(tmp_path / "t.dbn")), "--db", timescale_url)
    assert result.exit_code == 0, result.output
    assert [e["mode"] for e in _modes(tmp_path)] == ["timescaledb"]
    with psycopg.connect(timescale_url) as conn:
        dimensions = {
            table: (column, interval)
            for table, column, interval in conn.execute(
                "SELECT hypertable_name, column_name, integer_interval"
                " FROM timescaledb_information.dimensions"
            )
        }
        compression = {
            str(table): (segmentby, orderby)
            for table, segmentby, orderby in conn.execute(
                "SELECT hypertable, segmentby, orderby"
                " FROM timescaledb_information.hypertable_compression_settings"
            )
        }
        now_functions = conn.execute(
            "SELECT DISTINCT integer_now_func FROM timescaledb_information.dimensions"
        ).fetchall()
    expected = {f.table: (f.time_column, f.chunk_interval_ns) for f in MODEL.families.values()}
    assert dimensions == expected
    assert dimensions["ohlcv"][0] == "ts_event" and dimensions["bbo"][0] == "ts_recv"
    families = MODEL.families.values()
    assert compression == {f.table: ("instrument_id", f"{f.time_column} DESC") for f in families}
    assert now_functions == [("marketpipe_now_ns",)]


def test_installed_but_not_preloaded_server_works_in_plain_mode(pg_url: str, cli, tmp_path: Path) -> None:
    """The machine's cluster has TimescaleDB installed but not in shared_preload_libraries:
    CREATE EXTENSION would fail FATAL there. Every command works, in plain PostgreSQL mode."""
    with psycopg.connect(pg_url) as conn:
        available = conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
        preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    if available != (1,) or "timescaledb" in str(preload):
        if os.environ.get("MARKETPIPE_REQUIRE_TIMESCALE"):
            pytest.fail("TimescaleDB should be installed but not preloaded on the machine's cluster")
        pytest.skip("TimescaleDB is not installed (or is preloaded) on the machine's cluster")
    data = _trades_file(tmp_path / "t.dbn")
    assert cli("ingest", "--from-file", str(data), "--db", pg_url).exit_code == 0
    assert cli("status", "--db", pg_url).exit_code == 0
    out = tmp_path / "t.parquet"
    assert cli("export", "--schema", "trades", "--out", str(out), "--db", pg_url).exit_code == 0
    assert cli("quarantine", "--db", pg_url).exit_code == 0
    assert out.stat().st_size > 0
    modes = _modes(tmp_path)
    assert {e["mode"] for e in modes} == {"postgresql"}
    assert "not in the server's shared_preload_libraries" in str(modes[0]["reason"])
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone() == (
            0,
        )
        assert conn.execute("SELECT count(*) FROM trades").fetchone() == (2_000,)


def test_role_without_create_privilege_gets_plain_mode_and_status_never_converts(
    timescale_url: str, cli, tmp_path: Path
) -> None:
    """Available but not permitted: plain mode, said why. When the extension later becomes
    usable, a read-only command must not turn the plain tables into hypertables."""
    grants = [
        "REVOKE CREATE ON DATABASE {db} FROM PUBLIC",
        "GRANT CREATE, USAGE ON SCHEMA public TO {role}",
    ]
    dbname = psycopg.conninfo.conninfo_to_dict(timescale_url)["dbname"]
    with _role(timescale_url, [g.replace("{db}", f'"{dbname}"') for g in grants]) as owner_url:
        data = _trades_file(tmp_path / "t.dbn")
        result = cli("ingest", "--from-file", str(data), "--db", owner_url)
        assert result.exit_code == 0, result.output
        [mode] = _modes(tmp_path)
        assert mode["mode"] == "postgresql"
        assert mode["reason"] == "this role may not create the timescaledb extension in this database"
        before = _snapshot(timescale_url)
        # The superuser could create the extension now; status must still change nothing.
        for command in (
            ["status"],
            ["quarantine"],
            ["export", "--schema", "trades", "--out", str(tmp_path / "o.csv"), "--format", "csv"],
        ):
            result = cli(*command, "--db", timescale_url)
            assert result.exit_code == 0, result.output
        assert _snapshot(timescale_url) == before
        assert before[2] == [("plpgsql",)]  # no timescaledb extension was created


def test_select_only_role_reads_and_changes_nothing(server_url: str, cli, tmp_path: Path) -> None:
    data = _trades_file(tmp_path / "t.dbn")
    assert cli("ingest", "--from-file", str(data), "--db", server_url).exit_code == 0
    before = _snapshot(server_url)
    with _role(server_url, READ_ONLY) as reader_url:
        status = cli("status", "--db", reader_url)
        assert status.exit_code == 0, status.output
        assert "trades" in status.output and "2,000" in status.output
        out = tmp_path / "t.parquet"
        export = cli("export", "--schema", "trades", "--out", str(out), "--db", reader_url)
        assert export.exit_code == 0, export.output
        assert "wrote 2,000 trades records" in export.output
        assert cli("quarantine", "--db", reader_url).exit_code == 0
        # Writing needs more than SELECT: one line, nothing half-done.
        ingest = cli("ingest", "--from-file", str(data), "--db", reader_url, "--force")
        assert ingest.exit_code == 2, ingest.output
        assert "permission denied" in ingest.output and "Traceback" not in ingest.output
    assert _snapshot(server_url) == before


def test_read_only_commands_on_an_empty_database_say_so(pg_url: str, cli) -> None:
    for command in (["status"], ["quarantine"], ["export", "--schema", "trades", "--out", "x.parquet"]):
        result = cli(*command, "--db", pg_url)
        assert result.exit_code == 2
        assert result.output.startswith("error: no marketpipe tables in postgresql://"), result.output
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone() == (0,)


def test_read_only_commands_never_create_a_duckdb_file(cli, tmp_path: Path) -> None:
    path = tmp_path / "typo.duckdb"
    for command in (["status"], ["quarantine"], ["export", "--schema", "trades", "--out", "x.parquet"]):
        result = cli(*command, "--db", str(path))
        assert result.exit_code == 2
        assert (
            result.output.strip() == f"error: no marketpipe store at {path}: nothing has been ingested there"
        )
    assert not path.exists()


def test_postgres_database_of_an_earlier_release_is_refused(pg_url: str, cli, tmp_path: Path) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "CREATE TABLE marketpipe_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        conn.execute("INSERT INTO marketpipe_migrations (version, name) VALUES (1, 'standardized model')")
    data = _trades_file(tmp_path / "t.dbn")
    for command in (["ingest", "--from-file", str(data)], ["status"]):
        result = cli(*command, "--db", pg_url)
        assert result.exit_code == 2, result.output
        assert "was made by an earlier marketpipe release" in result.output
        assert len(result.output.strip().splitlines()) == 1
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM marketpipe_migrations").fetchall() == [(1,)]
        assert conn.execute("SELECT to_regclass('trades')").fetchone() == (None,)


def test_duckdb_file_of_an_earlier_release_is_refused(cli, tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:  # the first release's bookkeeping, no migrations table
        con.execute("CREATE TABLE marketpipe_chunks (chunk_key TEXT PRIMARY KEY, status TEXT)")
    data = _trades_file(tmp_path / "t.dbn")
    for command in (["ingest", "--from-file", str(data)], ["status"]):
        result = cli(*command, "--db", str(path))
        assert result.exit_code == 2, result.output
        assert "was made by an earlier marketpipe release" in result.output
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT table_name FROM information_schema.tables").fetchall() == [
            ("marketpipe_chunks",)
        ]


def test_store_opened_read_only_rejects_writes(server_url: str, tmp_path: Path) -> None:
    """The read-only store runs every transaction READ ONLY, whatever a bug might try."""
    data = _trades_file(tmp_path / "t.dbn")
    settings = load_settings(db=server_url)
    open_store(settings.store, MODEL).close()
    store = open_store(settings.store, MODEL, read_only=True)
    try:
        with pytest.raises(Exception, match="read-only transaction"):
            store.ledger.execute("DELETE FROM marketpipe_chunks")  # type: ignore[attr-defined]
    finally:
        store.close()
    assert data.exists()


def _indexes(url: str) -> dict[str, set[str]]:
    """Index definitions of each family's table (its own, and its hypertable chunks' in
    TimescaleDB, whose names carry the chunk's prefix), table names removed."""
    found: dict[str, set[str]] = {f.table: set() for f in MODEL.families.values()}
    with psycopg.connect(url) as conn:
        for family in MODEL.families.values():
            rows = conn.execute(
                "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)"
                " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
                " WHERE c.oid = %s::regclass OR c.oid IN (SELECT inhrelid FROM pg_inherits"
                " WHERE inhparent = %s::regclass)",
                (family.table, family.table),
            ).fetchall()
            for name, definition in rows:
                using = definition.split(" USING ", 1)[1]
                found[family.table].add(f"{name.split('.')[-1].split('_chunk_')[-1]} USING {using}")
    return found


def test_symbol_and_time_are_indexed_by_one_brin(server_url: str, cli, tmp_path: Path) -> None:
    """Each family table carries one index, a BRIN on (instrument_id, time column), and a
    symbol+time query and a time-only query both scan it (no sequential scan needed)."""
    result = cli("ingest", "--from-file", str(_trades_file(tmp_path / "t.dbn", 20_000)), "--db", server_url)
    assert result.exit_code == 0, result.output
    assert _indexes(server_url) == {
        f.table: {
            f"{f.table}_instrument_time_brin USING brin (instrument_id, {f.time_column})"
            " WITH (pages_per_range='16')"
        }
        for f in MODEL.families.values()
    }
    with psycopg.connect(server_url) as conn:
        conn.execute("SET enable_seqscan = off")
        lo, hi = 1709510400 * 10**9, 1709514000 * 10**9
        in_range = "ts_recv >= %s AND ts_recv < %s"
        for where in (f"instrument_id = 2 AND {in_range}", in_range):
            rows = conn.execute(f"EXPLAIN SELECT * FROM trades WHERE {where}", (lo, hi))
            plan = "\n".join(r for (r,) in rows)
            assert "Bitmap Index Scan on" in plan and "instrument_time_brin" in plan, plan
            assert "Seq Scan" not in plan, plan


def test_an_earlier_stores_b_tree_is_replaced_by_the_brin(server_url: str) -> None:
    """A store made before the BRIN: its B-tree and time BRIN go, the BRIN comes, once."""
    settings = load_settings(db=server_url)
    open_store(settings.store, MODEL).close()
    with psycopg.connect(server_url) as conn:
        conn.execute("DROP INDEX trades_instrument_time_brin")
        conn.execute("CREATE INDEX trades_instrument_time ON trades (instrument_id, ts_recv)")
        conn.execute("CREATE INDEX trades_time_brin ON trades USING brin (ts_recv)")
        conn.execute("DELETE FROM marketpipe_migrations WHERE version = %s", (migrations.BRIN_INDEX,))
    open_store(settings.store, MODEL).close()
    assert _indexes(server_url)["trades"] == {
        "trades_instrument_time_brin USING brin (instrument_id, ts_recv) WITH (pages_per_range='16')"
    }
    with psycopg.connect(server_url) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM marketpipe_migrations WHERE version = %s", (migrations.BRIN_INDEX,)
        ).fetchone()  # type: ignore[misc]
    assert count == 1


def test_force_on_a_compressed_day_holding_several_chunks_replaces_only_its_own(  # type: ignore[no-untyped-def]
    cli, timescale_url: str, tmp_path: Path
) -> None:
    """Two files of one day, compressed together (160,000 rows in one chunk): deleting one
    file's rows decompresses more than TimescaleDB's default 100,000 tuples per transaction,
    which used to fail every --force of the day (#23); now its rows are replaced and the
    other file's kept."""
    day = dt.date(2024, 3, 4)
    files = [
        write_trades_file(tmp_path / "d" / f"t{seed}.dbn", synthetic_trades(80_000, day, seed=seed))
        for seed in (0, 1)
    ]
    assert cli("ingest", "--from-file", str(tmp_path / "d"), "--db", timescale_url).exit_code == 0
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        compressed = conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('trades') c").fetchone()
    assert compressed == (1,)
    before = fingerprint(timescale_url, "trades")
    result = cli("ingest", "--from-file", str(files[0]), "--db", timescale_url, "--force", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["stored"] == 80_000
    assert fingerprint(timescale_url, "trades") == before  # the same rows, each once


@pytest.mark.slow
def test_compressed_days_of_a_million_rows_take_force_late_files_and_replacement(  # type: ignore[no-untyped-def]
    cli, timescale_url: str, tmp_path: Path
) -> None:
    """A day of 1,200,000 rows in several chunks (a file of two parts and another file),
    compressed; then, with no server setting changed: --force of the two-part file, a late
    file of the same day, and a whole-day input (mapped, as Databento's files are) whose
    coverage replaces all of them. Each time every record is stored once."""
    day = dt.date(2024, 3, 4)
    start = day_ns(day)
    big = synthetic_trades(1_100_000, day, seed=0)
    write_trades_file(tmp_path / "d" / "a.dbn", big)  # two parts: 1,000,000 and 100,000
    small = synthetic_trades(100_000, day, seed=1)
    write_trades_file(tmp_path / "d" / "b.dbn", small)
    assert cli("ingest", "--from-file", str(tmp_path / "d"), "--db", timescale_url).exit_code == 0

    def compress() -> None:
        with psycopg.connect(timescale_url, autocommit=True) as conn:
            conn.execute("SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('trades') c")

    compress()
    assert fingerprint(timescale_url, "trades")[0] == 1_200_000
    forced = cli("ingest", "--from-file", str(tmp_path / "d" / "a.dbn"), "--db", timescale_url, "--force")
    assert forced.exit_code == 0, forced.output
    assert fingerprint(timescale_url, "trades")[0] == 1_200_000
    compress()
    late = synthetic_trades(50_000, day, seed=2)
    write_trades_file(tmp_path / "late" / "c.dbn", late)
    assert cli("ingest", "--from-file", str(tmp_path / "late"), "--db", timescale_url).exit_code == 0
    assert fingerprint(timescale_url, "trades")[0] == 1_250_000
    compress()
    # The whole day, as one historical file of instruments 1-4: it replaces all three inputs.
    whole = np.sort(np.concatenate([big, small, late]), order="ts_recv")
    mappings = {f"ES{i}": [Interval(day, day + dt.timedelta(days=1), str(i))] for i in range(1, 5)}
    meta = metadata_bytes("GLBX.MDP3", "trades", start, start + NS_PER_DAY, "raw_symbol", mappings)
    write_dbn(tmp_path / "whole" / "day.dbn", meta, [whole.tobytes()])
    replaced = cli("ingest", "--from-file", str(tmp_path / "whole"), "--db", timescale_url)
    assert replaced.exit_code == 0, replaced.output
    with psycopg.connect(timescale_url) as conn:
        rows, distinct, owners = conn.execute(
            "SELECT count(*), count(DISTINCT (instrument_id, ts_recv, sequence, price, size)),"
            " count(DISTINCT chunk_id) FROM trades"
        ).fetchone()  # type: ignore[misc]
    assert rows == distinct == 1_250_000
    assert owners == 2  # the whole day's two parts, nothing of the inputs it replaced
