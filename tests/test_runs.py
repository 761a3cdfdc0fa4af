"""A run can be looked at: ``marketpipe runs [ID]`` from the ledger, progress while it runs
(records/s and time left on a terminal, a line per chunk without one), and a DuckDB store
another process holds is named as busy (#24 item 5)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from marketpipe.samples import make_sample
from test_quarantine import _mixed_file


def test_runs_lists_runs_and_one_runs_chunks(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "store.duckdb")
    make_sample(tmp_path / "sample")
    assert cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", db).exit_code == 0
    # A file whose share of quarantined records is above the limit: its chunk fails.
    _mixed_file(tmp_path / "bad" / "mixed.dbn", good=20, bad_each=5)
    assert cli("ingest", "--from-file", str(tmp_path / "bad"), "--db", db).exit_code == 1

    listing = json.loads(cli("runs", "--db", db, "--json").stdout)["runs"]
    assert [r["status"] for r in listing] == ["partial", "done"]
    assert listing[1]["read"] == listing[1]["stored"] == 2688
    assert listing[1]["seconds"] > 0 and listing[1]["started_at"].endswith("+00:00")

    first = json.loads(cli("runs", listing[1]["run_id"], "--db", db, "--json").stdout)
    assert first["run"]["run_id"] == listing[1]["run_id"]
    chunks = {Path(c["label"]).name: c for c in first["chunks"]}
    assert set(chunks) == {"glbx-mdp3-2024q1.trades.dbn.zst", "glbx-mdp3-2024q1.ohlcv-1d.dbn.zst"}
    trades = chunks["glbx-mdp3-2024q1.trades.dbn.zst"]
    assert (trades["status"], trades["records_read"], trades["stored"]) == ("done", 2560, 2560)
    assert trades["seconds"] > 0 and trades["error"] is None

    second = cli("runs", listing[0]["run_id"], "--db", db)
    assert second.exit_code == 0
    assert "failed" in second.output and "above the 5% limit" in second.output
    missing = cli("runs", "nope", "--db", db)
    assert missing.exit_code == 2 and "no run nope" in missing.output


def test_progress_without_a_terminal_prints_a_line_per_chunk(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_sample(tmp_path / "sample")
    result = cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", str(tmp_path / "s.duckdb"))
    assert result.exit_code == 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(lines) == 2, result.stderr
    [trades] = [line for line in lines if "trades" in line]
    assert re.match(r"\[\d/2\] done .*trades\.dbn\.zst: read 2,560, stored 2,560, quarantined 0 in ", trades)
    assert all(line.endswith(" records/s") for line in lines)


def test_progress_on_a_terminal_shows_rate_and_time_left(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # Rich treats standard error as a terminal
    make_sample(tmp_path / "sample")
    result = cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", str(tmp_path / "s.duckdb"))
    assert result.exit_code == 0
    assert "records/s" in result.stderr and "chunks" in result.stderr
    assert not re.search(r"^\[\d/2\] done", result.stderr, re.MULTILINE)  # the bar, not lines


def test_a_duckdb_store_another_process_writes_is_named_busy(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "store.duckdb"
    make_sample(tmp_path / "sample")
    assert cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", str(db)).exit_code == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]);"
         " print('open', flush=True); time.sleep(60)", str(db)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        for command in (
            ["status"],
            ["query", "SELECT 1"],
            ["ingest", "--from-file", str(tmp_path / "sample")],
        ):
            result = cli(*command, "--db", str(db))
            assert result.exit_code == 2, result.output
            assert f"{db} is busy: another process is writing it (PID {holder.pid}: " in result.output
            assert "Conflicting lock" not in result.output
    finally:
        holder.kill()
        holder.wait()


def test_a_runs_ledger_counts_equal_its_summary(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``run_counts`` (what an interrupted run records: the ledger's rows of the run) adds up to
    what the run itself counted, for downloads and for files."""
    from marketpipe import ingest as ingest_files
    from marketpipe.config import load_settings
    from marketpipe.stores import open_store
    from test_identity import run

    from dbn_reference import MODEL

    db = str(tmp_path / "store.duckdb")
    make_sample(tmp_path / "sample")
    summaries = [run(db, ["CL.FUT", "ES.FUT"], chunk_days=2), ingest_files(str(tmp_path / "sample"), db=db)]
    store = open_store(load_settings(db=db).store, MODEL)
    try:
        for summary in summaries:
            counted = store.ledger.run_counts(summary.run_id)
            totals = summary.totals()
            assert (counted.read, counted.stored, counted.quarantined) == (
                totals.read, totals.stored, totals.quarantined,
            )  # fmt: skip
            assert counted.stored > 0
    finally:
        store.close()
