"""Concurrent runs against one store: every record stored exactly once."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pytest

from marketpipe.config import IngestRequest, load_settings
from marketpipe.logs import configure
from marketpipe.pipeline import ingest
from marketpipe.samples import synthetic_trades, write_trade_days, write_trades_file
from marketpipe.sources.dbn_reader import DbnFile
from marketpipe.stores import open_store
from marketpipe.stores.base import Store
from marketpipe.symbology import NS_PER_DAY
from marketpipe.transform import to_table
from marketpipe.types import Chunk, ChunkCounts
from test_postgres import _statuses

from dbn_reference import MODEL
from pg import admin_url, fingerprint, fresh_database

TRADES = MODEL.family_of("trades")


def _ingest(spec: str, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "marketpipe", "ingest", "--from-file", spec]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_concurrent_runs_of_the_same_and_overlapping_inputs_store_each_record_once(
    server_url: str, tmp_path: Path
) -> None:
    files = write_trade_days(tmp_path / "d", 4, 150_000)
    env = {**os.environ, "MARKETPIPE_DB": server_url, "MARKETPIPE_BATCH_SIZE": "25000"}
    overlapping = str(tmp_path / "d" / "trades-2024-03-0[56].dbn")
    runs = [_ingest(str(tmp_path / "d"), env), _ingest(str(tmp_path / "d"), env), _ingest(overlapping, env)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert fingerprint(server_url, "trades")[0] == len(files) * 150_000
    assert _statuses(server_url) == {"done": len(files)}
    with psycopg.connect(server_url) as conn:
        (duplicates,) = conn.execute(
            "SELECT count(*) FROM (SELECT chunk_id, sequence, ts_recv FROM trades"
            " GROUP BY 1, 2, 3 HAVING count(*) > 1) d"
        ).fetchone()  # type: ignore[misc]
        (per_run,) = conn.execute("SELECT sum(stored) FROM marketpipe_runs").fetchone()  # type: ignore[misc]
    assert duplicates == 0
    assert per_run == len(files) * 150_000  # each chunk counted by the one run that stored it


def test_second_writer_on_a_duckdb_file_gets_one_line_naming_the_other(tmp_path: Path) -> None:
    write_trade_days(tmp_path / "d", 1, 10)
    db = tmp_path / "busy.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('ok', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        env = {**os.environ, "MARKETPIPE_DB": str(db)}
        run = _ingest(str(tmp_path / "d"), env)
        out, err = run.communicate(timeout=60)
        assert run.returncode == 2
        lines = [line for line in (out + err).splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {db} is busy: another process is writing it")
        assert f"PID {holder.pid}" in lines[0]
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM information_schema.tables").fetchone() == (0,)


def _lanes(log: Path) -> dict[str, int]:
    """The lane each chunk was written through, from the run's log."""
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return {e["chunk"]: e["lane"] for e in events if e.get("event") == "chunk.start"}


def test_writers_load_chunks_in_parallel_and_store_what_one_writer_stores(
    server_url: str, tmp_path: Path
) -> None:
    """``writers`` chunks at once, each through its own connection and transaction: the same
    rows, the same ledger and the same run counts as one writer."""
    write_trade_days(tmp_path / "d", 5, 20_000)
    request = IngestRequest(from_file=str(tmp_path / "d"))
    configure(tmp_path / "two.jsonl", "INFO")
    two = ingest(request, load_settings(db=server_url, writers=2))
    assert two.exit_code == 0 and [r.status for r in two.results] == ["done"] * 5
    assert sorted(set(_lanes(tmp_path / "two.jsonl").values())) == [1, 2]
    with fresh_database(admin_url(server_url)) as one_url:
        configure(tmp_path / "one.jsonl", "INFO")
        one = ingest(request, load_settings(db=one_url, writers=1))
        assert set(_lanes(tmp_path / "one.jsonl").values()) == {0}  # inline, the run's own store
        assert fingerprint(server_url, "trades") == fingerprint(one_url, "trades")
        assert _statuses(server_url) == _statuses(one_url) == {"done": 5}
    counts = [(s.totals().read, s.totals().stored, s.totals().quarantined) for s in (two, one)]
    assert counts == [(100_000, 100_000, 0)] * 2


def test_a_chunk_failing_in_one_lane_fails_alone(pg_url: str, tmp_path: Path) -> None:
    """Every trade of one file has size 0 (above the quarantine limit): that chunk fails and
    stores nothing; the chunks of the other lane and those after it are stored."""
    paths = write_trade_days(tmp_path / "d", 4, 20_000)
    array = synthetic_trades(20_000, dt.date(2024, 3, 5), seed=1)
    array["size"] = 0
    write_trades_file(paths[1], array)
    summary = ingest(IngestRequest(from_file=str(tmp_path / "d")), load_settings(db=pg_url, writers=2))
    assert [r.status for r in summary.results] == ["done", "failed", "done", "done"]
    assert "size" in (summary.results[1].error or "") and summary.exit_code == 1
    assert fingerprint(pg_url, "trades")[0] == 3 * 20_000
    assert _statuses(pg_url) == {"done": 3, "failed": 1}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["SIGINT", "SIGTERM"],
)
def test_interrupted_writers_roll_back_their_chunks(
    pg_url: str, tmp_path: Path, stop: signal.Signals, code: int, word: str
) -> None:
    """Ctrl-C, or SIGTERM (a scheduler stopping the run), while two lanes load: each lane's chunk
    rolls back at its next batch, so every row in the table belongs to a chunk the ledger calls
    done, the run says so in one line, and a re-run completes."""
    write_trade_days(tmp_path / "d", 6, 250_000)
    command = [sys.executable, "-m", "marketpipe", "ingest", "--from-file", str(tmp_path / "d")]
    env = {**os.environ, "MARKETPIPE_DB": pg_url, "MARKETPIPE_BATCH_SIZE": "25000", "MARKETPIPE_WRITERS": "2"}
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _statuses(pg_url).get("running", 0) < 2:
        time.sleep(0.01)
    assert _statuses(pg_url).get("running", 0) == 2, "two lanes were never loading at once"
    run.send_signal(stop)
    out, err = run.communicate(timeout=60)
    assert run.returncode == code, (out, err)
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == f"{word}: finished chunks are kept; run again to resume", err
    with psycopg.connect(pg_url) as conn:
        (done_rows,) = conn.execute(
            "SELECT coalesce(sum(stored), 0) FROM marketpipe_chunks WHERE status = 'done'"
        ).fetchone()  # type: ignore[misc]
    assert fingerprint(pg_url, "trades")[0] == done_rows < 6 * 250_000
    with psycopg.connect(pg_url) as conn:
        run_row = conn.execute("SELECT status, stored FROM marketpipe_runs").fetchall()
    assert run_row == [("interrupted", done_rows)]  # what its finished chunks stored (#23)
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert fingerprint(pg_url, "trades")[0] == 6 * 250_000


def _day_of_trades(tmp_path: Path, count: int, seed: int) -> pa.Table:
    path = write_trades_file(
        tmp_path / f"trades-{seed}.dbn", synthetic_trades(count, dt.date(2024, 3, 4), seed=seed)
    )
    return pa.concat_tables(to_table(TRADES, "trades", raw) for raw in DbnFile(path).batches("trades", count))


def _store_part(store: Store, chunk: Chunk, table: pa.Table) -> None:
    with store.write_chunk(chunk, "run2", "test") as writer:
        writer.write(table)
        writer.commit(ChunkCounts(table.num_rows, table.num_rows, 0, 0.1))


def test_two_writers_of_one_timescaledb_day_copy_at_once(timescale_url: str, tmp_path: Path) -> None:
    """A transaction that creates a TimescaleDB chunk holds it locked until it ends; the day's
    chunk, made ahead on a connection of its own, lets a second writer store its part of the day
    while the first writer's transaction is still open (not after it)."""
    first_rows, second_rows = _day_of_trades(tmp_path, 4_000, 1), _day_of_trades(tmp_path, 3_000, 2)
    first, second = Chunk("test:first", "trades", "first"), Chunk("test:second", "trades", "second")
    store = open_store(load_settings(db=timescale_url).store, MODEL)
    other = store.another()
    try:
        store.ledger.plan_chunks([first, second], "test")
        # The pool last: a failure rolls the first writer back before the pool waits for the second.
        with ThreadPoolExecutor(1) as pool, store.write_chunk(first, "run1", "test") as writer:
            writer.write(first_rows.slice(0, 2_000))
            writer.write(first_rows.slice(2_000))  # the first half's COPY has run: the chunk is in use
            pool.submit(_store_part, other, second, second_rows).result(timeout=20)
            assert other.ledger.is_done(second) and not other.ledger.is_done(first)
            writer.commit(ChunkCounts(4_000, 4_000, 0, 0.1))
        assert fingerprint(timescale_url, "trades")[0] == 7_000
        with psycopg.connect(timescale_url) as conn:
            (chunks,) = conn.execute("SELECT count(*) FROM show_chunks('trades')").fetchone()  # type: ignore[misc]
        assert chunks == 1
    finally:
        other.close()
        store.close()


def test_a_timescaledb_chunk_that_cannot_be_made_ahead_is_made_by_the_copy(
    timescale_url: str, tmp_path: Path
) -> None:
    """Chunks laid out otherwise (here one made by hand across the day's boundary) make the
    chunk made ahead collide: the COPY then places the rows itself, and nothing is lost."""
    rows = _day_of_trades(tmp_path, 5_000, 3)
    store = open_store(load_settings(db=timescale_url).store, MODEL)
    try:
        day = int(rows["ts_recv"].cast(pa.int64())[0].as_py()) // NS_PER_DAY * NS_PER_DAY
        with psycopg.connect(timescale_url, autocommit=True) as conn:
            conn.execute(
                "SELECT FROM _timescaledb_functions.create_chunk('trades', %s::jsonb)",
                (json.dumps({"ts_recv": [day + NS_PER_DAY // 2, day + 3 * NS_PER_DAY // 2]}),),
            )
        configure(tmp_path / "log.jsonl", "INFO")
        chunk = Chunk("test:collides", "trades", "collides")
        store.ledger.plan_chunks([chunk], "test")
        _store_part(store, chunk, rows)
        assert fingerprint(timescale_url, "trades")[0] == 5_000
        events = [json.loads(line)["event"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
        assert "timescale.chunks_ahead_off" in events
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_at_a_random_moment_leaves_every_store_true(  # type: ignore[no-untyped-def]
    cli, store_location: str, stop: signal.Signals, code: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A stop at a moment drawn at random (seeded by the test's id, so a failure replays):
    the table holds exactly what the run's row says it stored, `verify` finds every done chunk
    whole, and a re-run stores the rest, each record once."""
    db = store_location
    write_trade_days(tmp_path / "d", 6, 250_000)
    command = [sys.executable, "-m", "marketpipe", "ingest", "--from-file", str(tmp_path / "d")]
    env = {**os.environ, "MARKETPIPE_DB": db, "MARKETPIPE_BATCH_SIZE": "25000"}
    moment = random.Random(request.node.nodeid).uniform(0.8, 2.5)
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(moment)
    run.send_signal(stop)
    out, err = run.communicate(timeout=120)
    # 0: it ended before the signal came; -signal (a shell's 128+N): the signal came as the
    # interpreter started or shut down, outside marketpipe's handling.
    assert run.returncode in (code, 0, -stop), (moment, out, err)
    assert "Traceback" not in out + err
    report = cli("status", "--db", db, "--json")
    if report.exit_code == 0 and json.loads(report.stdout)["runs"]:
        status = json.loads(report.stdout)
        [run_row] = status["runs"]
        [trades] = [t for t in status["tables"] if t["table"] == "trades"]
        # A signal after the run's end was recorded (as its summary prints) leaves it done.
        expected = ("interrupted", "done") if run.returncode == code else ("done",)
        assert run_row["status"] in expected, (moment, run_row)
        assert trades["rows"] == run_row["stored"], (moment, trades, run_row)
        assert cli("verify", "--db", db).exit_code == 0
    else:  # stopped while starting, before its run began: nothing of it was stored
        assert run.returncode in (code, -stop), (moment, out, err)
        tables = json.loads(report.stdout)["tables"] if report.exit_code == 0 else []  # 2: no store yet
        assert all(t["rows"] == 0 for t in tables), (moment, tables)
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert cli("verify", "--db", db).exit_code == 0
    status = json.loads(cli("status", "--db", db, "--json").stdout)
    assert [t["rows"] for t in status["tables"] if t["table"] == "trades"] == [6 * 250_000]


def test_ctrl_c_while_the_cli_loads_is_an_interrupt_not_a_traceback(tmp_path: Path) -> None:
    """A real SIGINT delivered while ``marketpipe.cli`` is being imported (the process sends it
    to itself as the import of typer begins, so the moment is certain, not raced): exit 130 and
    one line, as the console script runs it. Seen as a flaky signal test before: a Ctrl-C in the
    first second of a run printed Python's traceback and exited 1."""
    code = """
import importlib.abc, os, signal, sys

class KillOnTyper(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "typer":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, KillOnTyper())
sys.argv = ["marketpipe", "status"]
from marketpipe.__main__ import main
main()
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip() == "interrupted: nothing was started"


def test_an_error_raised_while_an_interrupt_unwinds_is_the_interrupt() -> None:
    """A rollback that fails because the signal left DuckDB's connection with a pending result
    (seen in CI: a chunk recorded failed, exit 1, after a SIGTERM) is the stop, not a fault;
    an error of its own is not."""
    from marketpipe.errors import interrupted_query

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError(
                "Attempting to execute an unsuccessful or closed pending query result"
            ) from None
    except RuntimeError as exc:
        assert interrupted_query(exc)
    assert not interrupted_query(RuntimeError("Attempting to execute an unsuccessful pending query result"))
