"""The PostgreSQL store against the real server: exactness, idempotency, faults, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest

import marketpipe
from marketpipe.config import IngestRequest, load_settings
from marketpipe.model import SCHEMAS
from marketpipe.pipeline import ingest
from marketpipe.samples import write_trade_days
from marketpipe.stores import migrations, open_store

from conftest import SAMPLES
from dbn_reference import MODEL, canonical, distinct_data, expected_rows, exported_rows
from pg import TIMESCALE_ADMIN_URL, admin_url, fingerprint, fresh_database
from tcp_proxy import TcpProxy


def _ingest_command(db: str, directory: Path) -> tuple[list[str], dict[str, str]]:
    """The CLI ingest of ``directory`` as its own process, in small batches, and its environment."""
    env = {**os.environ, "MARKETPIPE_DB": db, "MARKETPIPE_BATCH_SIZE": "50000"}
    return [sys.executable, "-m", "marketpipe", "ingest", "--from-file", str(directory)], env


def _ingest_in_background(db: str, directory: Path) -> subprocess.Popen[bytes]:
    """That ingest started, for a test to kill mid-run."""
    command, env = _ingest_command(db, directory)
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _statuses(url: str) -> dict[str, int]:
    """Chunks by status; empty before the store's first migration has created the table."""
    with psycopg.connect(url) as conn:
        try:
            rows = conn.execute("SELECT status, count(*) FROM marketpipe_chunks GROUP BY status").fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return dict(rows)


@pytest.mark.slow
def test_every_schema_round_trips_exactly(server_url: str, samples: Path, cli, tmp_path: Path) -> None:
    pg_url = server_url
    result = cli("ingest", "--from-file", str(samples), "--db", pg_url)
    assert result.exit_code == 0, result.output
    files = distinct_data(sorted(SAMPLES.glob("*.dbn*")))
    for schema in SCHEMAS:
        expected = [row for p in files for s, rows in [expected_rows(p)] if s == schema for row in rows]
        out = tmp_path / f"{schema}.parquet"
        exported = cli("export", "--schema", schema, "--out", str(out), "--db", pg_url)
        assert exported.exit_code == (0 if expected else 3), exported.output
        if not expected:
            continue
        arrow_schema, rows = exported_rows(out)
        assert arrow_schema.remove_metadata() == MODEL.families[_table(schema)].arrow_schema
        assert canonical(rows) == canonical(expected), schema


def _table(schema: str) -> str:
    return next(name for name, f in MODEL.families.items() if schema in f.schemas)


def test_rerun_and_force_leave_tables_identical(server_url: str, tmp_path: Path) -> None:
    pg_url = server_url
    write_trade_days(tmp_path / "d", 2, 20_000)
    cfg = load_settings(db=pg_url)
    request = IngestRequest(from_file=str(tmp_path / "d"))
    ingest(request, cfg)
    first = fingerprint(pg_url, "trades")
    assert first[0] == 40_000
    again = ingest(request, cfg)
    assert [r.status for r in again.results] == ["skipped", "skipped"]
    ingest(request, cfg, force=True)
    assert fingerprint(pg_url, "trades") == first


@pytest.mark.slow
def test_kill_9_mid_load_then_rerun_equals_clean_run(server_url: str, tmp_path: Path) -> None:
    pg_url = server_url
    write_trade_days(tmp_path / "d", 6, 250_000)
    victim = _ingest_in_background(pg_url, tmp_path / "d")
    command, env = _ingest_command(pg_url, tmp_path / "d")  # the rerun, and the clean run
    deadline = time.monotonic() + 60
    killed_while = None
    while time.monotonic() < deadline and victim.poll() is None:
        statuses = _statuses(pg_url)
        if statuses.get("done", 0) >= 1 and statuses.get("running", 0) >= 1:  # one per writer lane
            victim.send_signal(signal.SIGKILL)
            killed_while = statuses
            break
        time.sleep(0.02)
    victim.wait(30)
    assert killed_while is not None, "the load finished before it could be killed"
    assert fingerprint(pg_url, "trades")[0] < 6 * 250_000

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _statuses(pg_url) == {"done": 6}

    with fresh_database(admin_url(pg_url)) as clean_url:
        clean = subprocess.run(
            command, env={**env, "MARKETPIPE_DB": clean_url}, capture_output=True, timeout=300
        )
        assert clean.returncode == 0
        assert fingerprint(pg_url, "trades") == fingerprint(clean_url, "trades")


@pytest.mark.slow
def test_terminated_backend_is_retried_and_nothing_is_lost(pg_url: str, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write_trade_days(tmp_path / "d", 1, 1_000_000)
    cfg = load_settings(db=pg_url, batch_size=20_000, db_retry_wait=0.05)
    outcome: dict[str, object] = {}

    def load() -> None:
        outcome["summary"] = ingest(IngestRequest(from_file=str(tmp_path / "d")), cfg)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    terminated = 0
    with psycopg.connect(pg_url, autocommit=True) as admin:
        while worker.is_alive() and not terminated:
            terminated = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'marketpipe' AND query LIKE 'COPY%%' AND state = 'active'"
            ).fetchone()[0]  # type: ignore[index]
            time.sleep(0.005)
    worker.join()
    assert terminated == 1, "no COPY was caught running"
    summary = outcome["summary"]
    assert [(r.status, r.attempts) for r in summary.results] == [("done", 2)]  # type: ignore[attr-defined]
    assert fingerprint(pg_url, "trades")[0] == 1_000_000
    # The ledger keeps the re-run: `runs ID` shows it.
    run = json.loads(cli("runs", summary.run_id, "--db", pg_url, "--json").stdout)  # type: ignore[attr-defined]
    assert [(c["status"], c["attempts"]) for c in run["chunks"]] == [("done", 2)]


@pytest.mark.slow
def test_database_gone_mid_run_stops_cleanly_and_resumes(pg_url: str, tmp_path: Path) -> None:
    write_trade_days(tmp_path / "d", 5, 100_000)
    port = psycopg.conninfo.conninfo_to_dict(pg_url).get("port") or 5432
    proxy = TcpProxy(int(port))
    via_proxy = pg_url.replace(f":{port}/", f":{proxy.port}/")
    cfg = load_settings(db=via_proxy, batch_size=10_000, db_retries=3, db_retry_wait=0.05)
    request = IngestRequest(from_file=str(tmp_path / "d"))
    outcome: dict[str, object] = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("summary", ingest(request, cfg)), daemon=True)
    worker.start()
    while worker.is_alive() and _statuses(pg_url).get("done", 0) < 1:
        time.sleep(0.01)
    proxy.cut()
    worker.join(120)
    summary = outcome["summary"]
    assert summary.stopped and summary.exit_code == 1  # type: ignore[attr-defined]
    assert "PostgreSQL" in summary.stopped or "connect" in summary.stopped  # type: ignore[attr-defined]
    statuses = _statuses(pg_url)
    assert statuses.get("done", 0) < 5

    proxy = TcpProxy(int(port), listen_port=proxy.port)
    resumed = ingest(request, cfg)
    assert resumed.exit_code == 0
    assert _statuses(pg_url) == {"done": 5}
    assert fingerprint(pg_url, "trades")[0] == 500_000
    proxy.cut()


def test_unreachable_database_is_one_clear_line(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETPIPE_DB_RETRIES", "2")
    monkeypatch.setenv("MARKETPIPE_DB_RETRY_WAIT", "0.01")
    paths = write_trade_days(tmp_path / "d", 1, 10)
    result = cli(
        "ingest", "--from-file", str(paths[0]), "--db", "postgresql://postgres:s3cret@127.0.0.1:9/market"
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    # The one retry is shown as it happens; the failure itself is one line.
    retries = [line for line in lines if " db.retry " in line]
    assert len(retries) == 1 and "attempt=1" in retries[0]
    lines = [line for line in lines if line not in retries]
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to PostgreSQL at"), result.output
    assert "Connection refused" in lines[0] and "s3cret" not in result.output


def test_missing_database_fails_fast(cli, tmp_path: Path, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    paths = write_trade_days(tmp_path / "d", 1, 10)
    started = time.monotonic()
    missing = pg_url.rpartition("/")[0] + "/no_such_db_x"  # on the server the tests use
    result = cli("ingest", "--from-file", str(paths[0]), "--db", missing)
    assert result.exit_code == 2
    assert 'database "no_such_db_x" does not exist' in result.output
    assert time.monotonic() - started < 5


def test_concurrent_starts_migrate_once(pg_url: str) -> None:
    cfg = load_settings(db=pg_url)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_store(cfg.store, MODEL).close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(pg_url) as conn:
        # Each step of a fresh plain-PostgreSQL store recorded once, by one of the four starts.
        versions = conn.execute("SELECT version FROM marketpipe_migrations ORDER BY version").fetchall()
        steps = (
            migrations.MODEL,
            migrations.CHUNK_RANGES,
            migrations.INSTRUMENTS,
            migrations.BRIN_INDEX,
            migrations.COVERAGE,
            migrations.ATTEMPTS,
        )
        assert versions == [(v,) for v in steps]
        assert conn.execute("SELECT marketpipe_ns(marketpipe_ts(1709510400123456789))").fetchone() == (
            1709510400123456000,
        )


def test_plain_postgresql_mode_is_detected_and_said(pg_url: str) -> None:
    store = open_store(load_settings(db=pg_url).store, MODEL)
    try:
        assert store.mode == "postgresql"  # no TimescaleDB on this server
    finally:
        store.close()


def test_errors_that_retrying_cannot_fix_fail_at_once(cli, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """TLS required of a server without it, an unknown role: one line at once, no retries (#23:
    about 9 s of retries before the same line)."""
    with psycopg.connect(pg_url) as conn:
        ssl = conn.execute("SHOW ssl").fetchone()
    if ssl == ("on",):
        pytest.skip("the test server offers TLS: sslmode=require would connect")
    host = pg_url.rpartition("@")[2]
    for url, message in (
        (f"postgresql://postgres@{host}?sslmode=require", "does not support SSL, but SSL was required"),
        (f"postgresql://no_such_role_x@{host}", 'role "no_such_role_x" does not exist'),
    ):
        started = time.monotonic()
        result = cli("status", "--db", url)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "db.retry" not in result.output and time.monotonic() - started < 3


def _run_row(url: str) -> tuple[object, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT status, records_read, stored, extract(epoch FROM finished_at - started_at)"
            " FROM marketpipe_runs"
        ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.slow
def test_no_session_of_a_run_idles_in_a_transaction(pg_url: str, tmp_path: Path) -> None:
    """Managed servers end sessions idle in a transaction (idle_in_transaction_session_timeout):
    a run's own bookkeeping and its writers' chunks never are, so none is ended or retried."""
    write_trade_days(tmp_path / "d", 4, 250_000)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        name = admin.info.dbname
        admin.execute(f'ALTER DATABASE "{name}" SET idle_in_transaction_session_timeout = 300')
    command, env = _ingest_command(pg_url, tmp_path / "d")
    log = tmp_path / "run.jsonl"
    result = subprocess.run(command, env={**env, "MARKETPIPE_LOG_FILE": str(log)}, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert _statuses(pg_url) == {"done": 4}
    assert fingerprint(pg_url, "trades")[0] == 1_000_000
    assert '"db.retry"' not in log.read_text() and '"chunk.retry"' not in log.read_text()
    status, read, stored, seconds = _run_row(pg_url)
    assert (status, read, stored) == ("done", 1_000_000, 1_000_000)
    assert float(seconds) > 0.3  # the wall clock of the run, not one transaction's now()  # type: ignore[arg-type]


@pytest.mark.slow
def test_every_session_of_a_run_terminated_mid_run_is_reconnected(pg_url: str, tmp_path: Path) -> None:
    """A DBA or a failover ends the run's backends, its own bookkeeping session included: the
    run reconnects each, takes its run lock again, and ends done with every record once."""
    write_trade_days(tmp_path / "d", 4, 250_000)
    cfg = load_settings(db=pg_url, batch_size=50_000, db_retry_wait=0.05)
    outcome: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: outcome.setdefault(
            "summary", ingest(IngestRequest(from_file=str(tmp_path / "d")), cfg)
        ),
        daemon=True,
    )
    worker.start()
    while worker.is_alive() and _statuses(pg_url).get("done", 0) < 1:
        time.sleep(0.01)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'marketpipe' AND datname = current_database()"
        ).fetchone()[0]  # type: ignore[index]
    worker.join(120)
    assert ended >= 2, "the run's own session and a writer's were to be ended"
    summary = outcome["summary"]
    assert summary.exit_code == 0, summary.failed  # type: ignore[attr-defined]
    assert _statuses(pg_url) == {"done": 4}
    assert fingerprint(pg_url, "trades")[0] == 1_000_000
    assert _run_row(pg_url)[:3] == ("done", 1_000_000, 1_000_000)


@pytest.mark.slow
@pytest.mark.timescale
def test_a_server_restarted_mid_run_is_waited_for(tmp_path: Path) -> None:
    """A real restart of a throw-away TimescaleDB cluster (connections dropped, the server away
    for a moment): the run waits for it, resumes its chunks and ends done and true."""
    if not TIMESCALE_ADMIN_URL:  # scripts/test.sh sets it where it could build and start one
        reason = "no TimescaleDB cluster here: MARKETPIPE_TEST_TIMESCALE is unset"
        if os.environ.get("MARKETPIPE_REQUIRE_TIMESCALE"):
            pytest.fail(reason)
        pytest.skip(reason)
    script = Path(__file__).resolve().parents[1] / "scripts" / "timescale_cluster.sh"
    home = Path(tempfile.mkdtemp(prefix="marketpipe-restart-"))  # the server's user reaches it
    home.chmod(0o755)
    cluster = home / "cluster"
    started = subprocess.run(["bash", str(script), "start", str(cluster)], capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip().rpartition("/")[0] + "/postgres"
    try:
        write_trade_days(tmp_path / "d", 4, 250_000)
        command, env = _ingest_command(url, tmp_path / "d")
        run = subprocess.Popen(
            command,
            env={**env, "MARKETPIPE_DB_RETRIES": "10"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while run.poll() is None and _statuses(url).get("done", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run.poll() is None, "the run ended before the restart"
        subprocess.run(["bash", str(script), "restart", str(cluster)], check=True)
        _, err = run.communicate(timeout=180)
        assert run.returncode == 0, err
        assert _statuses(url) == {"done": 4}
        assert fingerprint(url, "trades")[0] == 1_000_000
        status, read, stored, seconds = _run_row(url)
        assert (status, read, stored) == ("done", 1_000_000, 1_000_000) and seconds is not None
    finally:
        subprocess.run(["bash", str(script), "stop", str(cluster)], check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_a_lake_with_a_postgresql_ledger_never_idles_in_a_transaction(pg_url: str, tmp_path: Path) -> None:
    """The lake's files are written before the ledger's transaction begins: it lists them and
    marks the chunk done at once, so the ledger's session is never idle inside it."""
    write_trade_days(tmp_path / "d", 2, 500_000)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{admin.info.dbname}" SET idle_in_transaction_session_timeout = 300')
    lake = f"lake:{tmp_path / 'lake'}"
    command, env = _ingest_command(lake, tmp_path / "d")
    log = tmp_path / "run.jsonl"
    env = {**env, "MARKETPIPE_LEDGER": pg_url, "MARKETPIPE_LOG_FILE": str(log)}
    result = subprocess.run(command, env=env, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert '"db.retry"' not in log.read_text() and '"chunk.retry"' not in log.read_text()
    assert _statuses(pg_url) == {"done": 2}
    with marketpipe.open(lake, ledger=pg_url) as reader:
        assert reader.read("trades", columns=["ts_recv"]).num_rows == 1_000_000
