"""Concurrent runs against one store: every record stored exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psycopg

from test_postgres import _statuses, _trades_files

from pg import fingerprint

ROOT = Path(__file__).resolve().parents[1]


def _ingest(spec: str, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, str(ROOT / "main.py"), "ingest", "--from-file", spec]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_runs_of_the_same_and_overlapping_inputs_store_each_record_once(
    server_url: str, tmp_path: Path
) -> None:
    files = _trades_files(tmp_path / "d", 4, 150_000)
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
    _trades_files(tmp_path / "d", 1, 10)
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
        assert len(lines) == 1 and lines[0].startswith(f"error: cannot open DuckDB database {db}")
        assert f"PID {holder.pid}" in lines[0]
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM information_schema.tables").fetchone() == (0,)
