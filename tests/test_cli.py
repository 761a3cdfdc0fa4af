"""Bad arguments: one clear line, exit code 2, no traceback, nothing stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from marketpipe import __version__


def _one_error_line(result, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["ingest", "--dataset", "GLBX.MDP3", "--schema", "trade", "--start-date", "2024-01-01"],
            "unknown schema 'trade'",
        ),
        (
            [
                "ingest",
                "--dataset",
                "GLBX.MDP3",
                "--schema",
                "trades",
                "--start-date",
                "2024-02-01",
                "--end-date",
                "2024-01-01",
            ],
            "end date 2024-01-01 is before start date 2024-02-01",
        ),
        (
            ["ingest", "--dataset", "GLBX.MDP3", "--schema", "trades", "--start-date", "2024-13-01"],
            "--start-date: '2024-13-01' is not a date",
        ),
        (["ingest", "--job", "nope"], "unknown job 'nope'"),
        (["ingest", "--from-file", "missing/file.dbn"], "no such file or directory: missing/file.dbn"),
        (["ingest", "--from-file", "nothing-*.dbn"], "no files match nothing-*.dbn"),
        (["ingest", "--api", "bloomberg", "--from-file", "x.dbn"], "unknown api type 'bloomberg'"),
        (["ingest"], "nothing to ingest"),
        (
            ["ingest", "--dataset", "GLBX.MDP3", "--schema", "trades", "--stype-in", "ticker"],
            "unknown stype_in 'ticker'",
        ),
        (["export", "--schema", "quotes", "--out", "x.parquet"], "unknown schema 'quotes'"),
        (
            ["export", "--schema", "trades", "--out", "x.parquet", "--start-date", "nope"],
            "--start-date: 'nope' is not a date (expected YYYY-MM-DD, today, yesterday or -Nd)",
        ),
        (["export", "--schema", "trades", "--out", "x.parquet", "--format", "xlsx"], "unknown format 'xlsx'"),
        (
            [
                "export",
                "--schema",
                "trades",
                "--out",
                "x.csv",
                "--start-date",
                "2024-01-05",
                "--end-date",
                "2024-01-01",
            ],
            "is before start date",
        ),
    ],
)
def test_bad_arguments(cli, args: list[str], fragment: str, tmp_path: Path) -> None:
    _one_error_line(cli(*args), fragment)
    assert not (tmp_path / "store.duckdb").exists()


def test_unwritable_db_path(cli, samples: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = cli(
        "ingest", "--from-file", str(samples / "test_data.trades.dbn"), "--db", str(blocker / "x.duckdb")
    )
    _one_error_line(result, "cannot open DuckDB database")


def test_malformed_yaml_names_file_and_field(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = tmp_path / "jobs.yaml"
    monkeypatch.setenv("MARKETPIPE_JOBS_FILE", str(jobs))
    jobs.write_text("jobs:\n  daily:\n    dataset: GLBX.MDP3\n    schemas: [ohlcv-1x]\n")
    _one_error_line(cli("ingest", "--job", "daily"), f"{jobs}: jobs.daily.schemas: unknown schema 'ohlcv-1x'")
    jobs.write_text("jobs:\n  daily:\n    dataset: GLBX.MDP3\n    start_date: 2024-02-30\n")
    _one_error_line(cli("list-jobs"), f"{jobs}: jobs.daily.start_date")
    jobs.write_text("jobs:\n  daily:\n    datasett: GLBX.MDP3\n")
    _one_error_line(cli("list-jobs"), f"{jobs}: jobs.daily.datasett: Extra inputs are not permitted")
    jobs.write_text("jobs: [\n")
    _one_error_line(cli("list-jobs"), f"{jobs}: invalid YAML (line 2")


def test_list_jobs_shows_shipped_jobs(cli) -> None:
    result = cli("list-jobs")
    assert result.exit_code == 0
    assert "sample" in result.output and "cl_es_daily_2024" in result.output


def test_version(cli) -> None:
    result = cli("version")
    assert result.exit_code == 0 and __version__ in result.output


def test_python_m_marketpipe_runs_the_cli(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPIPE_")}
    env["MARKETPIPE_LOG_FILE"] = str(tmp_path / "log.jsonl")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "marketpipe",
            "ingest",
            "--schema",
            "trades",
            "--dataset",
            "X",
            "--end-date",
            "2024-99-01",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --end-date: '2024-99-01' is not a date (expected YYYY-MM-DD, today, yesterday, -Nd or last)"
    )


@pytest.mark.parametrize(
    ("extra", "flag"),
    [(["--from-file", "data/sample"], "--from-file"), (["--schema", "trades"], "--schema"),
     (["--start-date", "2024-01-01"], "--start-date")],
)  # fmt: skip
def test_job_with_what_to_ingest_flags_is_refused(cli, extra: list[str], flag: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("ingest", "--job", "cl_es_daily_2024", *extra)
    _one_error_line(result, "--job cl_es_daily_2024 takes what to ingest from ")
    assert result.output.rstrip().endswith(f"; drop {flag}")


def test_make_sample_into_an_unusable_directory_fails_in_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a_file").write_text("")
    _one_error_line(
        cli("make-sample", "--out", str(tmp_path / "a_file" / "sample")), "cannot write the sample to"
    )


@pytest.fixture
def stored(cli, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A DuckDB store holding the sample's trades; its path."""
    assert cli("make-sample", "--out", str(tmp_path / "sample")).exit_code == 0
    assert cli("ingest", "--from-file", str(tmp_path / "sample")).exit_code == 0
    return tmp_path / "store.duckdb"


def test_export_refuses_an_existing_file_unless_overwrite(cli, stored: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "trades.csv"
    out.write_text("keep me")
    _one_error_line(cli("export", "--schema", "trades", "--out", str(out)), "exists: give --overwrite")
    assert out.read_text() == "keep me"
    result = cli("export", "--schema", "trades", "--out", str(out), "--format", "csv", "--overwrite")
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith('"ts_recv",')


@pytest.mark.parametrize("target", ["store", "store_link", "directory", "device", "empty", "too_long"])
def test_export_never_destroys_what_is_not_its_output(  # type: ignore[no-untyped-def]
    cli, stored: Path, tmp_path: Path, target: str
) -> None:
    out = {
        "store": str(stored),
        "store_link": str(stored),  # replaced below by a link to it
        "directory": str(tmp_path),
        "device": "/dev/null",
        "empty": "",
        "too_long": str(tmp_path / ("x" * 300)),
    }[target]
    if target == "store_link":
        (tmp_path / "link.duckdb").symlink_to(stored)
        out = str(tmp_path / "link.duckdb")
    before = stored.read_bytes()
    result = cli("export", "--schema", "trades", "--out", out, "--overwrite")
    fragment = {
        "store": "is the store's own file",
        "store_link": "is the store's own file",
        "directory": "is not a regular file",
        "device": "is not a regular file",
        "empty": "names no file",
        "too_long": "longer than 255 bytes",
    }[target]
    _one_error_line(result, fragment)
    assert stored.read_bytes() == before
    assert Path("/dev/null").is_char_device()
    assert cli("status").exit_code == 0


@pytest.mark.parametrize(
    ("db", "fragment"),
    [
        (":memory:", "':memory:' keeps nothing"),
        ("postgresql+psycopg://postgres:s3cret@127.0.0.1/market", "unknown scheme 'postgresql+psycopg'"),
        ("mysql://root@127.0.0.1/market", "unknown scheme 'mysql'"),
    ],
)
def test_store_location_that_keeps_nothing_or_is_not_ours_is_refused(
    cli, db: str, fragment: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    assert cli("make-sample", "--out", str(tmp_path / "sample")).exit_code == 0
    for command in (["ingest", "--from-file", str(tmp_path / "sample")], ["status"]):
        result = cli(*command, "--db", db)
        _one_error_line(result, fragment)
        assert "s3cret" not in result.output


def test_relative_store_path_is_shown_absolute(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("make-sample", "--out", str(tmp_path / "sample")).exit_code == 0
    result = cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", "rel/store.duckdb")
    assert result.exit_code == 0
    assert f"store: {tmp_path / 'rel' / 'store.duckdb'} (duckdb)" in result.output
    assert (tmp_path / "rel" / "store.duckdb").is_file()


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--schema", "ohlcv-1d"], "--schema"),
        (["--symbols", "NOPE"], "--symbols"),
        (["--start-date", "2030-01-01"], "--start-date"),
        (["--end-date", "2030-01-01"], "--end-date"),
        (["--dataset", "GLBX.MDP3"], "--dataset"),
        (["--max-cost", "5"], "--max-cost"),
        (["--chunk-days", "2"], "--chunk-days"),
        (["--keep-raw", "raw"], "--keep-raw"),
        (["--stype-in", "parent"], "--stype-in"),
    ],
)
def test_flags_that_select_api_downloads_are_refused_with_files(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, flags: list[str], flag: str
) -> None:
    assert cli("make-sample", "--out", str(tmp_path / "sample")).exit_code == 0
    result = cli("ingest", "--from-file", str(tmp_path / "sample"), *flags)
    _one_error_line(result, f"{flag} (")
    assert not (tmp_path / "store.duckdb").exists()


def test_job_with_files_and_api_selection_names_the_job(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("jobs:\n  mixed:\n    from_file: data\n    symbols: [ESM4]\n")
    monkeypatch.setenv("MARKETPIPE_JOBS_FILE", str(jobs))
    _one_error_line(cli("ingest", "--job", "mixed"), f"{jobs}: jobs.mixed.")


def test_quickstart_sample_job_ingests(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What scripts/quickstart.sh runs: make-sample, then the sample job (files), then status."""
    assert cli("make-sample", "--out", str(tmp_path / "data" / "sample")).exit_code == 0
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("jobs:\n  sample:\n    api: databento\n    from_file: data/sample\n")
    monkeypatch.setenv("MARKETPIPE_JOBS_FILE", str(jobs))
    result = cli("ingest", "--job", "sample")
    assert result.exit_code == 0, result.output
    assert cli("ingest", "--job", "sample", "--keep-raw", "raw").exit_code == 2  # files take no --keep-raw
    assert "trades" in cli("status").output
