"""Relative days for daily jobs: today, yesterday, -Nd and ``last``, resolved against a fixed
clock (``ingest(today=...)``), downloading from the local Historical API server."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from marketpipe.config import (
    IngestRequest,
    load_settings,
)
from marketpipe.errors import UsageError
from marketpipe.parsing import parse_day, resolve_day
from marketpipe.pipeline import ingest
from marketpipe.samples import make_sample

from databento_server import DatabentoServer
from dbn_reference import MODEL

TODAY = dt.date(2024, 1, 5)  # a Friday: yesterday is 2024-01-04


def _job(start: str, end: str = "yesterday", first: str | None = None) -> IngestRequest:
    return IngestRequest(
        name="es_daily",
        first_start_date=first,
        dataset="GLBX.MDP3",
        schemas=["trades"],
        symbols=["ES.FUT"],
        stype_in="parent",
        start_date=start,
        end_date=end,
    )


def _fetched_days(api: DatabentoServer) -> list[str]:
    return [params["start"][:10] for name, params in api.calls if name == "timeseries.get_range"]


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("today", TODAY),
        ("yesterday", dt.date(2024, 1, 4)),
        ("-3d", dt.date(2024, 1, 2)),
        ("2024-01-01", dt.date(2024, 1, 1)),
    ],
)
def test_days_resolve_against_the_clock(text: str, day: dt.date) -> None:
    assert resolve_day(parse_day(text), TODAY) == day


@pytest.mark.parametrize("text", ["tomorrow", "-d", "+3d", "2024-02-30", "3d"])
def test_a_bad_day_names_the_forms(text: str) -> None:
    with pytest.raises(
        ValueError, match=r"is not a date \(expected YYYY-MM-DD, today, yesterday, -Nd or last\)"
    ):
        parse_day(text)


@pytest.mark.parametrize("field", ["end", "first"])
def test_last_is_only_a_start(field: str) -> None:
    with pytest.raises(ValueError, match="last names a start"):
        _job("2024-01-02", **{field: "last"})


def test_a_daily_job_fetches_only_the_days_after_the_last_stored(
    api: DatabentoServer, tmp_path: Path
) -> None:
    settings = load_settings(db=str(tmp_path / "store.duckdb"))
    # The first run: nothing stored, so from the job's first_start_date.
    first = ingest(_job("last", end="2024-01-03", first="-3d"), settings, model=MODEL, today=TODAY)
    assert first.exit_code == 0 and _fetched_days(api) == ["2024-01-02", "2024-01-03"]
    api.calls.clear()
    # The cron line's run: from the day after the last stored day up to yesterday.
    second = ingest(_job("last"), settings, model=MODEL, today=TODAY)
    assert second.exit_code == 0 and _fetched_days(api) == ["2024-01-04"]
    api.calls.clear()
    # Run again the same day: current, nothing fetched, exit 0 with a note.
    again = ingest(_job("last"), settings, model=MODEL, today=TODAY)
    assert again.exit_code == 0 and _fetched_days(api) == []
    assert again.notes == ["job es_daily is stored through 2024-01-04: nothing to ingest up to 2024-01-04"]


def test_last_runs_a_failed_last_day_again(api: DatabentoServer, tmp_path: Path) -> None:
    """Yesterday's download failed: it is not stored, so the next daily run starts there."""
    settings = load_settings(db=str(tmp_path / "store.duckdb"))
    api.inject("timeseries.get_range", None, None, "422")  # the third day's download is refused
    first = ingest(_job("2024-01-02"), settings, model=MODEL, today=TODAY)
    failed = [r.chunk.label for r in first.results if r.error]
    assert first.exit_code == 1 and failed == ["GLBX.MDP3 trades 2024-01-04"]
    api.calls.clear()
    second = ingest(_job("last"), settings, model=MODEL, today=TODAY)
    assert second.exit_code == 0 and _fetched_days(api) == ["2024-01-04"]


def test_last_without_history_is_one_line_and_creates_nothing(api: DatabentoServer, tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    with pytest.raises(UsageError, match="nothing has been ingested there"):
        ingest(_job("last"), load_settings(db=str(store)), model=MODEL, today=TODAY)
    assert not store.exists() and api.calls == []


def test_cli_refuses_a_bad_relative_day(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "ingest", "--dataset", "GLBX.MDP3", "--schema", "trades", "--symbols", "ES.FUT",
        "--start-date", "tomorrow", "--end-date", "yesterday", "--db", str(tmp_path / "s.duckdb"),
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --start-date: 'tomorrow' is not a date (expected YYYY-MM-DD, today, yesterday, -Nd or last)"
    )


def test_relative_days_that_end_before_they_start_are_refused(api: DatabentoServer, tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    with pytest.raises(UsageError, match="end date 2024-01-02 is before start date 2024-01-05"):
        ingest(_job("today", end="-3d"), load_settings(db=str(store)), model=MODEL, today=TODAY)
    assert not store.exists() and api.calls == []


def test_export_and_coverage_take_relative_days_but_not_last(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_sample(tmp_path / "sample")
    db = str(tmp_path / "store.duckdb")
    assert cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", db).exit_code == 0
    out = tmp_path / "recent.parquet"
    recent = cli("export", "--schema", "trades", "--out", str(out), "--start-date", "-7d", "--db", db)
    # The sample is 2024: nothing matches, which is said (exit 3), and no file is written.
    assert recent.exit_code == 3 and "error: no trades records from " in recent.output
    assert not out.exists()
    for command in (["export", "--out", str(tmp_path / "x.parquet")], ["coverage"]):
        result = cli(*command, "--schema", "trades", "--end-date", "last", "--db", db)
        assert result.exit_code == 2
        assert "--end-date: last names where a job's next ingest starts" in result.output
