"""status tells the truth: live, interrupted and failed runs, real counts, JSON for monitoring."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from pathlib import Path

import pytest

from marketpipe.samples import metadata_bytes, synthetic_trades, write_dbn, write_trade_days
from test_postgres import _ingest_in_background, _statuses


def _status(cli, db: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    result = cli("status", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_killed_run_shows_as_interrupted_and_a_live_one_as_running(
    pg_url: str, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    write_trade_days(tmp_path / "d", 4, 250_000)
    victim = _ingest_in_background(pg_url, tmp_path / "d")
    deadline = time.monotonic() + 60
    seen_running = False
    while time.monotonic() < deadline and victim.poll() is None:
        try:
            runs = _status(cli, pg_url)["runs"]
        except AssertionError:  # the run has not created the tables yet
            runs = []
        if runs and runs[0]["status"] == "running":
            seen_running = True
            break
        time.sleep(0.05)
    assert seen_running, "the run was never seen running"
    # Killed once a chunk is being written (the run row comes first: killed between the two,
    # no chunk would be left to show interrupted).
    while time.monotonic() < deadline and victim.poll() is None and not _statuses(pg_url).get("running"):
        time.sleep(0.01)
    assert victim.poll() is None, "the run ended before a chunk was seen running"
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    # The server ends the dead client's session (and its lock) once it sees the socket close.
    deadline = time.monotonic() + 15
    while _status(cli, pg_url)["runs"][0]["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    report = _status(cli, pg_url)
    [run] = report["runs"]
    assert run["status"] == "interrupted"
    states = {c["status"] for c in report["chunks"]}
    assert "running" not in states and "interrupted" in states, report["chunks"]


def test_a_killed_duckdb_run_shows_as_interrupted(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_trade_days(tmp_path / "d", 3, 300_000)
    db = str(tmp_path / "k.duckdb")
    victim = _ingest_in_background(db, tmp_path / "d")
    log = tmp_path / "logs" / "marketpipe.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and victim.poll() is None:
        if log.exists() and '"chunk.start"' in log.read_text():
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    report = _status(cli, db)
    [run] = report["runs"]
    assert run["status"] == "interrupted"
    # Killed at its first chunk's start: that chunk, if marked running yet, shows interrupted.
    assert "running" not in {c["status"] for c in report["chunks"]}, report["chunks"]


def test_a_run_that_failed_its_only_chunk_shows_what_it_read(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    records = synthetic_trades(10_000, dt.date(2024, 3, 4))
    records["size"] = 0  # every record breaks trade_size_positive: the chunk fails as a whole
    start = int(records["ts_event"].min())
    meta = metadata_bytes("XNAS.ITCH", "trades", start, start + 86_400 * 10**9, "raw_symbol", {})
    write_dbn(tmp_path / "zero.dbn", meta, [records.tobytes()])
    result = cli("ingest", "--from-file", str(tmp_path / "zero.dbn"), "--json")
    assert result.exit_code == 1
    summary = json.loads(result.output)
    assert summary["totals"] == {"read": 10_000, "stored": 0, "quarantined": 0}
    assert summary["schemas"]["trades"]["failed"] == 1 and summary["exit_code"] == 1
    assert "above the 5% limit" in summary["failed"][0]["error"]
    [run] = _status(cli, str(tmp_path / "store.duckdb"))["runs"]
    assert (run["status"], run["read"], run["stored"], run["quarantined"], run["failed"]) == (
        "partial",
        10_000,
        0,
        0,
        1,
    )


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_records_what_its_finished_chunks_stored(tmp_path: Path) -> None:
    """SIGTERM into a DuckDB run once a chunk has committed: exit 143, one line, and the run's
    row says interrupted with the rows its finished chunks stored, those a lane committed as
    the run stopped included (#23: it said 0)."""
    import os
    import subprocess
    import sys

    import duckdb

    write_trade_days(tmp_path / "d", 8, 500_000)
    db, log = tmp_path / "s.duckdb", tmp_path / "run.jsonl"
    command = [sys.executable, "-m", "marketpipe", "ingest", "--from-file", str(tmp_path / "d")]
    command += ["--db", str(db)]
    env = {**os.environ, "MARKETPIPE_LOG_FILE": str(log), "MARKETPIPE_BATCH_SIZE": "25000"}
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and '"chunk.end"' not in (log.read_text() if log.exists() else ""):
        time.sleep(0.01)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 143, (out, err)
    assert err.strip().splitlines()[-1] == "terminated: finished chunks are kept; run again to resume"
    with duckdb.connect(str(db), read_only=True) as con:
        [(status, stored)] = con.execute("SELECT status, stored FROM marketpipe_runs").fetchall()
        done_rows = "SELECT sum(stored) FROM marketpipe_chunks WHERE status = 'done'"
        (done,) = con.execute(done_rows).fetchone()  # type: ignore[misc]
        (rows,) = con.execute("SELECT count(*) FROM trades").fetchone()  # type: ignore[misc]
    assert status == "interrupted" and stored == done == rows and 0 < rows < 8 * 500_000


@pytest.mark.parametrize(
    ("kind", "step"),
    [
        ("duckdb", "ATTEMPTS"),
        pytest.param("postgresql", "ATTEMPTS", marks=pytest.mark.postgres),
        ("lake", "LAKE_FILES"),  # the lake's own step, run by the same runner in its ledger
    ],
)
def test_a_reader_reports_pending_migrations_and_applies_none(  # type: ignore[no-untyped-def]
    kind: str, step: str, cli, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A store whose ledger lacks one of this release's migrations (as a store of the release
    before it does): status names it and changes nothing; the next write applies it."""
    import duckdb
    import psycopg

    from marketpipe.samples import make_sample
    from marketpipe.stores import migrations

    version = getattr(migrations, step)
    ledger = str(tmp_path / "lake" / "_marketpipe" / "ledger.duckdb")
    db = {"duckdb": str(tmp_path / "store.duckdb"), "lake": f"lake:{tmp_path / 'lake'}"}.get(kind)
    db = db or str(request.getfixturevalue("pg_url"))
    make_sample(tmp_path / "sample")
    assert cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", db).exit_code == 0
    forget = f"DELETE FROM marketpipe_migrations WHERE version = {version}"
    count = f"SELECT count(*) FROM marketpipe_migrations WHERE version = {version}"
    embedded = {"duckdb": db, "lake": ledger}.get(kind)

    def applied() -> int:
        if embedded:
            with duckdb.connect(embedded) as con:
                return int(con.execute(count).fetchone()[0])  # type: ignore[index]
        with psycopg.connect(db) as conn:
            return int(conn.execute(count).fetchone()[0])  # type: ignore[index]

    if embedded:
        with duckdb.connect(embedded) as con:
            con.execute(forget)
    else:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(forget)
    named = f"{version} ({migrations.VERSIONS[version]})"
    assert _status(cli, db)["pending_migrations"] == [named]
    text = cli("status", "--db", db)
    assert f"pending migrations (the next write applies them): {named}" in " ".join(text.output.split())
    assert applied() == 0  # a reader applies nothing
    assert cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", db).exit_code == 0
    assert applied() == 1 and _status(cli, db)["pending_migrations"] == []
