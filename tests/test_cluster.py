"""Chunks as tasks on a local Dask cluster of worker processes, into real PostgreSQL and into a
Parquet lake with a PostgreSQL ledger: the same rows as one process, exactly once when a worker
dies mid-chunk, a failing chunk fails alone, and what a cluster run cannot take is refused in
one line."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

import marketpipe
from marketpipe.config import IngestRequest, load_settings
from marketpipe.pipeline import ingest
from marketpipe.samples import synthetic_trades, write_trade_days, write_trades_file
from marketpipe.sources.databento_api import DatabentoApiSource
from test_databento_api import _expected_trades, _served
from test_databento_api import _ingest as _api_ingest
from test_postgres import _statuses

from conftest import KEY
from pg import admin_url, fingerprint, fresh_database

pytest.importorskip("distributed", reason="the cluster extra (dask[distributed]) is not installed")


def _command(directory: Path | str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "marketpipe", "ingest", "--from-file", str(directory), *extra]


def _env(db: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MARKETPIPE_DB": db,
        "MARKETPIPE_BATCH_SIZE": "25000",
        "MARKETPIPE_LOG_FILE": str(tmp_path / "logs" / "marketpipe.jsonl"),
    }


def _chunk_starts(tmp_path: Path) -> list[dict[str, object]]:
    lines = (tmp_path / "logs" / "marketpipe.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == "chunk.start"]


@pytest.mark.slow
def test_a_local_cluster_stores_what_one_process_stores(pg_url: str, tmp_path: Path) -> None:
    write_trade_days(tmp_path / "d", 4, 50_000)
    run = subprocess.run(
        _command(tmp_path / "d", "--workers", "2"), env=_env(pg_url, tmp_path), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "200,000" in run.stdout
    workers = {e["worker"] for e in _chunk_starts(tmp_path)}
    assert len(workers) == 2 and all(str(w).startswith("tcp://") for w in workers)
    with fresh_database(admin_url(pg_url)) as one_url:
        one = subprocess.run(
            _command(tmp_path / "d"), env=_env(one_url, tmp_path / "one"), capture_output=True
        )
        assert one.returncode == 0
        assert fingerprint(pg_url, "trades") == fingerprint(one_url, "trades")
        assert _statuses(pg_url) == _statuses(one_url) == {"done": 4}


def _lake_env(lake: Path, ledger: str | None, tmp_path: Path) -> dict[str, str]:
    env = _env(f"lake:{lake}", tmp_path)
    return env if ledger is None else {**env, "MARKETPIPE_LEDGER": ledger}


def _exported(tmp_path: Path, env: dict[str, str], name: str) -> bytes:
    out = tmp_path / f"{name}.parquet"
    command = [sys.executable, "-m", "marketpipe", "export", "--schema", "trades", "--out", str(out)]
    subprocess.run(command, env=env, check=True, capture_output=True)
    return out.read_bytes()


def _tidy(lake: Path, ledger: str) -> bool:
    """The lake's files are the ones its ledger lists: nothing left by a killed writer."""
    on_disk = sorted(str(p.relative_to(lake)) for p in (lake / "trades").rglob("*") if p.is_file())
    with psycopg.connect(ledger) as conn:
        listed = [p for (p,) in conn.execute("SELECT path FROM marketpipe_lake_files ORDER BY path")]
    return on_disk == listed


@pytest.mark.slow
def test_a_local_cluster_fills_a_lake_as_one_process_does(pg_url: str, tmp_path: Path) -> None:
    """Two workers read the files at an fsspec URL and write the lake's files side by side,
    their chunks ordered by a PostgreSQL ledger; the export equals one process's (local path,
    DuckDB ledger), byte for byte."""
    write_trade_days(tmp_path / "d", 4, 50_000)
    env = _lake_env(tmp_path / "lake", pg_url, tmp_path)
    url = f"file://{tmp_path / 'd'}"
    run = subprocess.run(_command(url, "--workers", "2"), env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert len({e["worker"] for e in _chunk_starts(tmp_path)}) == 2
    one_env = _lake_env(tmp_path / "one", None, tmp_path / "one")
    assert subprocess.run(_command(tmp_path / "d"), env=one_env, capture_output=True).returncode == 0
    assert _exported(tmp_path, env, "cluster") == _exported(tmp_path, one_env, "one")
    assert _statuses(pg_url) == {"done": 4} and _tidy(tmp_path / "lake", pg_url)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["postgresql", "lake"])
def test_a_worker_killed_mid_chunk_leaves_exactly_once_results(
    pg_url: str, tmp_path: Path, target: str
) -> None:
    """kill -9 of the worker process writing a chunk: its transaction dies with it, the
    scheduler runs the task again on a worker the nanny restarts, and the rows equal a clean
    run (in a lake, the files the killed worker wrote are never listed, and go when the chunk
    is written again)."""
    write_trade_days(tmp_path / "d", 4, 250_000)
    env = _env(pg_url, tmp_path) if target == "postgresql" else _lake_env(tmp_path / "lake", pg_url, tmp_path)
    run = subprocess.Popen(
        _command(tmp_path / "d", "--workers", "2"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, killed = time.monotonic() + 120, None
    while time.monotonic() < deadline and run.poll() is None and killed is None:
        if _statuses(pg_url).get("running", 0) >= 1 and (tmp_path / "logs" / "marketpipe.jsonl").exists():
            starts = [e for e in _chunk_starts(tmp_path) if "pid" in e]
            if starts:
                killed = int(starts[-1]["pid"])  # type: ignore[call-overload]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    out, err = run.communicate(timeout=300)
    assert killed is not None, "no worker was caught writing a chunk"
    assert run.returncode == 0, (out, err)
    assert _statuses(pg_url) == {"done": 4}
    if target == "lake":
        clean_env = _lake_env(tmp_path / "clean", None, tmp_path / "c")
        assert subprocess.run(_command(tmp_path / "d"), env=clean_env, capture_output=True).returncode == 0
        assert _exported(tmp_path, env, "killed") == _exported(tmp_path, clean_env, "clean")
        assert _tidy(tmp_path / "lake", pg_url)
        return
    assert fingerprint(pg_url, "trades")[0] == 4 * 250_000
    with fresh_database(admin_url(pg_url)) as clean_url:
        clean = subprocess.run(
            _command(tmp_path / "d"), env=_env(clean_url, tmp_path / "c"), capture_output=True
        )
        assert clean.returncode == 0
        assert fingerprint(pg_url, "trades") == fingerprint(clean_url, "trades")


@pytest.mark.slow
def test_a_chunk_failing_on_a_worker_fails_alone(pg_url: str, tmp_path: Path) -> None:
    paths = write_trade_days(tmp_path / "d", 3, 20_000)
    array = synthetic_trades(20_000, dt.date(2024, 3, 5), seed=1)
    array["size"] = 0  # every trade breaks a rule: above the quarantine limit
    write_trades_file(paths[1], array)
    run = subprocess.run(
        _command(tmp_path / "d", "--workers", "2", "--json"), env=_env(pg_url, tmp_path), capture_output=True
    )
    assert run.returncode == 1
    document = json.loads(run.stdout)
    assert [f["input"] for f in document["failed"]] == [str(paths[1])]
    assert "size" in document["failed"][0]["error"]
    assert fingerprint(pg_url, "trades")[0] == 2 * 20_000
    assert _statuses(pg_url) == {"done": 2, "failed": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "db", "message"),
    [
        (["--workers", "2"], None, "error: --workers/--cluster: a DuckDB file takes one writer process"),
        (["--workers", "2"], "lake", "error: --workers/--cluster: a lake's DuckDB ledger takes one writer"),
        (
            ["--workers", "2", "--cluster", "tcp://127.0.0.1:1"],
            "pg",
            "error: --workers starts a local cluster",
        ),
        (["--cluster", "tcp://127.0.0.1:{port}"], "pg", "error: --cluster: no Dask scheduler at"),
        (["--workers", "0"], "pg", "error: --workers 0: a local cluster needs at least 1"),
        (["--workers", "2", "--max-concurrent-downloads", "500"], "pg", "error: bad setting: max_concurrent"),
    ],
)
def test_what_a_cluster_run_cannot_take_is_one_line(
    cli,
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    db: str | None,
    message: str,
) -> None:
    write_trade_days(tmp_path / "d", 1, 10)
    if db:
        monkeypatch.setenv("MARKETPIPE_DB", pg_url if db == "pg" else f"lake:{tmp_path / 'lake'}")
    extra = [e.format(port=_free_port()) for e in extra]
    result = cli("ingest", "--from-file", str(tmp_path / "d"), *extra)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "store.duckdb").exists() and not (tmp_path / "lake").exists()


class _Progress:
    """What the client's progress bar is told."""

    def __init__(self) -> None:
        self.planned = self.records = self.finished = 0

    def plan(self, chunks: list[object]) -> None:
        self.planned = len(chunks)

    def chunk_started(self, chunk: object) -> None:
        """Chunks start on the workers, out of the client's sight."""

    def advance(self, records: int) -> None:
        self.records += records

    def chunk_finished(self, result: object) -> None:
        self.finished += 1


def test_the_clients_progress_counts_what_the_workers_read(pg_url: str, tmp_path: Path) -> None:
    from marketpipe import cluster

    write_trade_days(tmp_path / "d", 3, 10_000)
    progress = _Progress()
    settings = load_settings(db=pg_url)
    with cluster.connect(2, None) as client:
        summary = ingest(
            IngestRequest(from_file=str(tmp_path / "d")),
            settings,
            progress,
            lanes=cluster.lanes(client, settings),
        )
    assert summary.exit_code == 0
    assert (progress.planned, progress.finished, progress.records) == (3, 3, 30_000)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["postgresql", "lake"])
def test_api_days_are_downloaded_by_the_workers_once_each(  # type: ignore[no-untyped-def]
    api, cli, pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, target: str
) -> None:
    """Each worker downloads the chunks it runs (with its own key, from its environment), into
    PostgreSQL or into a lake with a PostgreSQL ledger."""
    if target == "postgresql":
        monkeypatch.setenv("MARKETPIPE_DB", pg_url)
    else:
        monkeypatch.setenv("MARKETPIPE_DB", f"lake:{tmp_path / 'lake'}")
        monkeypatch.setenv("MARKETPIPE_LEDGER", pg_url)
    api.stream_delay = 0.3  # long enough that both workers take a day
    result = _api_ingest(cli, "--workers", "2", schema="trades")
    assert result.exit_code == 0, result.output
    assert api.count("timeseries.get_range") == 3
    assert len({e["worker"] for e in _chunk_starts(tmp_path)}) == 2
    columns = ["instrument_id", "ts_event", "price", "size", "sequence"]
    with marketpipe.open() as reader:
        table = reader.read("trades", columns=columns)
    stored = table.set_column(1, "ts_event", table["ts_event"].cast(pa.int64())).to_pydict()
    rows = [(i, t, str(p), s, q) for i, t, p, s, q in zip(*(stored[c] for c in columns), strict=True)]
    assert sorted(rows) == _expected_trades(_served(api, "trades"))
    assert _statuses(pg_url) == {"done": 3}


@pytest.mark.slow
@pytest.mark.parametrize("limit", [1, 2])
def test_downloads_across_all_workers_stay_within_the_limit(  # type: ignore[no-untyped-def]
    api, cli, pg_url: str, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """One cluster-wide semaphore: at most ``--max-concurrent-downloads`` at once, whichever
    workers make them (with 2, the two workers do download at the same time)."""
    monkeypatch.setenv("MARKETPIPE_DB", pg_url)
    api.stream_delay = 0.5
    result = _api_ingest(cli, "--workers", "2", "--max-concurrent-downloads", str(limit), schema="trades")
    assert result.exit_code == 0, result.output
    assert api.most_streaming == limit


def test_the_planned_api_source_travels_without_the_key(api) -> None:  # type: ignore[no-untyped-def]
    """What a worker receives names the downloads but not the key; the worker side takes the
    key from its own environment."""
    import cloudpickle

    request = IngestRequest(
        dataset="GLBX.MDP3", schemas=["trades"], symbols=["CL.FUT"], stype_in="parent",
        start_date=dt.date(2024, 1, 2), end_date=dt.date(2024, 1, 3),
    )  # fmt: skip
    source = DatabentoApiSource(request, load_settings().api)
    try:
        chunks = source.plan().chunks
        payload = cloudpickle.dumps(source)
    finally:
        source.close()
    assert KEY.encode() not in payload and len(chunks) == 2
    worker_side = cloudpickle.loads(payload)
    try:
        assert worker_side.config.key == KEY
        assert [b.records.size for c in chunks for b in worker_side.read(c, 1000)]  # it downloads
    finally:
        worker_side.close()


@pytest.mark.slow
def test_a_chunk_whose_workers_all_die_fails_alone_and_a_rerun_completes_it(
    pg_url: str, tmp_path: Path
) -> None:
    """With the scheduler allowed no failure, the first worker death ends that chunk's task
    (Dask's KilledWorker): the chunk fails in the summary, nothing of it is stored, the other
    chunks are, and the next run stores it."""
    import threading

    import dask

    from marketpipe import cluster

    write_trade_days(tmp_path / "d", 4, 250_000)
    request = IngestRequest(from_file=str(tmp_path / "d"))
    settings = load_settings(db=pg_url, batch_size=25_000)
    outcome: dict[str, object] = {}
    log = tmp_path / "logs" / "marketpipe.jsonl"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), cluster.connect(2, None) as client:
        run = threading.Thread(
            target=lambda: outcome.setdefault(
                "summary", ingest(request, settings, lanes=cluster.lanes(client, settings))
            )
        )
        run.start()
        deadline, killed = time.monotonic() + 120, None
        while time.monotonic() < deadline and run.is_alive() and killed is None:
            if _statuses(pg_url).get("running", 0) >= 1 and log.exists():
                starts = [e for e in _chunk_starts(tmp_path) if "pid" in e]
                if starts:
                    killed = int(starts[-1]["pid"])  # type: ignore[call-overload]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        run.join(300)
    assert killed is not None, "no worker was caught writing a chunk"
    summary = outcome["summary"]
    statuses = [r.status for r in summary.results]  # type: ignore[attr-defined]
    assert sorted(statuses) == ["done", "done", "done", "failed"]
    failed = next(r for r in summary.results if r.status == "failed")  # type: ignore[attr-defined]
    assert "the workers running it died" in (failed.error or "") and summary.exit_code == 1  # type: ignore[attr-defined]
    assert fingerprint(pg_url, "trades")[0] == 3 * 250_000
    rerun = ingest(request, settings)
    assert [r.status for r in rerun.results].count("done") == 1 and rerun.exit_code == 0
    assert fingerprint(pg_url, "trades")[0] == 4 * 250_000


def test_settings_never_pickle_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are the key's one holder: pickled (as Dask sends them) they carry everything
    but it, and the object pickled keeps it."""
    import pickle

    import cloudpickle

    monkeypatch.setenv("DATABENTO_API_KEY", KEY)
    settings = load_settings(batch_size=1234)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        payload = dumps(settings)
        assert KEY.encode() not in payload
        travelled = pickle.loads(payload)
        assert travelled.databento_api_key is None and travelled.batch_size == 1234
    assert settings.databento_api_key is not None and settings.databento_api_key.get_secret_value() == KEY


def test_the_api_config_pickles_without_the_key_and_takes_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ApiConfig`` is the only holder of the key: not in its pickle nor its repr; unpickled,
    it holds the key of the process that unpickles it (a worker's own environment)."""
    import pickle

    monkeypatch.setenv("DATABENTO_API_KEY", "db-KEYOFTHECLIENTMACHINE0123456789")
    config = load_settings().api
    payload = pickle.dumps(config)
    assert b"KEYOFTHECLIENTMACHINE" not in payload and "KEYOFTHE" not in repr(config)
    monkeypatch.setenv("DATABENTO_API_KEY", "db-KEYOFTHEWORKER0123456789abcdefgh")
    assert pickle.loads(payload).key == "db-KEYOFTHEWORKER0123456789abcdefgh"
