"""Coverage against the exchange calendar, and --fill-gaps fetching exactly the gaps.

CME Globex (GLBX.MDP3 -> CMES in configs/calendars.yaml) trades on 2024-01-02..05 (Tue-Fri)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from marketpipe.config import IngestRequest, load_calendars, load_settings
from marketpipe.coverage import coverage, sessions
from marketpipe.pipeline import ingest
from marketpipe.samples import Interval, metadata_bytes, synthetic_trades, write_dbn
from marketpipe.stores import open_store
from marketpipe.symbology import day_ns

from databento_server import DatabentoServer
from dbn_reference import MODEL
from pg import POSTGRES

DAYS = [dt.date(2024, 1, 2) + dt.timedelta(days=i) for i in range(4)]
LEFT_OUT, FAILED = DAYS[1], DAYS[2]


def test_the_cme_calendar_has_no_session_on_new_years_day_or_the_weekend() -> None:
    week = sessions("CMES", dt.date(2024, 1, 1), dt.date(2024, 1, 7))
    assert week == DAYS
    assert sessions(None, dt.date(2024, 1, 1), dt.date(2024, 1, 7)) == [
        dt.date(2024, 1, d) for d in range(1, 6)
    ]


def _day_file(directory: Path, day: dt.date, broken: bool = False) -> Path:
    """One day of the two ES.FUT contracts' trades as Databento would send it for that UTC day
    (the instrument ids the local API server gives them)."""
    records = synthetic_trades(200, day, instruments=2, seed=day.day)
    records["instrument_id"] += 2000
    if broken:
        records["size"] = 0  # every record breaks trade_size_positive: the chunk fails whole
    mappings = {
        "ESH4": [Interval(day, day + dt.timedelta(days=1), "2001")],
        "ESM4": [Interval(day, day + dt.timedelta(days=1), "2002")],
    }
    meta = metadata_bytes(
        "GLBX.MDP3", "trades", day_ns(day), day_ns(day + dt.timedelta(days=1)), "raw_symbol", mappings
    )
    return write_dbn(directory / f"{day}.trades.dbn", meta, [records.tobytes()])


@pytest.fixture(params=["duckdb", POSTGRES])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return str(tmp_path / "store.duckdb")
    return str(request.getfixturevalue("pg_url"))


def test_coverage_reports_the_session_left_out_and_the_one_that_failed_and_fill_gaps_fetches_them(
    cli,  # type: ignore[no-untyped-def]
    db: str,
    tmp_path: Path,
    api: DatabentoServer,
) -> None:
    for day in DAYS:
        if day != LEFT_OUT:
            _day_file(tmp_path / "files", day, broken=day == FAILED)
    result = cli("ingest", "--from-file", str(tmp_path / "files"), "--db", db)
    assert result.exit_code == 1  # the broken day failed, the others are stored
    week = ("--start-date", "2024-01-01", "--end-date", "2024-01-07")
    report = cli("coverage", "--schema", "trades", "--db", db, *week, "--json")
    assert report.exit_code == 0, report.output
    document = json.loads(report.stdout)
    assert document["calendar"] == "CMES" and document["sessions"] == 4
    assert document["gaps"] == [str(LEFT_OUT), str(FAILED)]
    assert document["states"] == {
        str(DAYS[0]): "done",
        str(LEFT_OUT): "never",
        str(FAILED): "failed",
        str(DAYS[3]): "done",
    }
    for symbol in ("ESH4", "ESM4"):
        rows = document["symbols"][symbol]["rows_by_session"]
        assert rows[str(LEFT_OUT)] == rows[str(FAILED)] == 0
        assert rows[str(DAYS[0])] > 0 and rows[str(DAYS[3])] > 0
    assert sum(document["symbols"][s]["rows"] for s in ("ESH4", "ESM4")) == 400
    text = cli("coverage", "--schema", "trades", "--db", db)
    assert (
        "1 session failed: 2024-01-04" in text.stdout
        and "1 session never requested: 2024-01-03" in text.stdout
    )
    # --fill-gaps against the local Historical API server: exactly those two sessions.
    filled = cli(
        "ingest", "--dataset", "GLBX.MDP3", "--schema", "trades", "--symbols", "ES.FUT",
        "--stype-in", "parent", *week, "--fill-gaps", "--db", db,
    )  # fmt: skip
    assert filled.exit_code == 0, filled.output
    assert _fetched(api) == [str(LEFT_OUT), str(FAILED)]
    after = json.loads(cli("coverage", "--schema", "trades", "--db", db, *week, "--json").stdout)
    assert after["gaps"] == [] and set(after["states"].values()) == {"done"}
    assert after["symbols"]["ES.FUT"]["sessions_with_rows"] == 2  # the two fetched sessions


def _job(start: str, end: str, fill: bool = False) -> IngestRequest:
    return IngestRequest(
        dataset="GLBX.MDP3", schemas=["trades"], symbols=["ES.FUT"], stype_in="parent",
        start_date=start, end_date=end, fill_gaps=fill,
    )  # fmt: skip


def _fetched(api: DatabentoServer, endpoint: str = "timeseries.get_range") -> list[str]:
    return [params["start"][:10] for name, params in api.calls if name == endpoint]


def test_fill_gaps_fetches_only_the_gaps_then_coverage_is_complete(
    api: DatabentoServer, tmp_path: Path
) -> None:
    settings = load_settings(db=str(tmp_path / "store.duckdb"))
    assert ingest(_job("2024-01-02", "2024-01-02"), settings, model=MODEL).exit_code == 0
    api.inject("timeseries.get_range", None, "422")  # 2024-01-05 is refused
    assert ingest(_job("2024-01-04", "2024-01-05"), settings, model=MODEL).exit_code == 1
    api.calls.clear()
    # The weekend and New Year's Day are not sessions: only the two gaps are fetched.
    filled = ingest(_job("2024-01-01", "2024-01-07", fill=True), settings, model=MODEL)
    assert filled.exit_code == 0 and _fetched(api) == ["2024-01-03", "2024-01-05"]
    store = open_store(settings.store, MODEL, read_only=True)
    try:
        report = coverage(store, load_calendars(None), "trades")
    finally:
        store.close()
    assert report.sessions == DAYS and report.gaps() == []
    assert all(report.rows["ES.FUT"][day] > 0 for day in DAYS)


def test_fill_gaps_dry_run_quotes_only_the_gaps(api: DatabentoServer, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "store.duckdb")
    assert ingest(_job("2024-01-02", "2024-01-02"), load_settings(db=db), model=MODEL).exit_code == 0
    api.calls.clear()
    result = cli(
        "ingest", "--dataset", "GLBX.MDP3", "--schema", "trades", "--symbols", "ES.FUT",
        "--stype-in", "parent", "--start-date", "2024-01-01", "--end-date", "2024-01-03",
        "--fill-gaps", "--dry-run", "--db", db,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(set(_fetched(api, "metadata.get_record_count"))) == ["2024-01-03"]
    assert _fetched(api) == []


def test_fill_gaps_is_refused_with_files(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("ingest", "--from-file", str(tmp_path), "--fill-gaps", "--db", str(tmp_path / "s.duckdb"))
    assert result.exit_code == 2 and "--fill-gaps (fill_gaps) selects API downloads" in result.output


def test_calendars_file_maps_datasets_to_known_calendars() -> None:
    import exchange_calendars

    calendars = load_calendars(None)
    assert calendars["GLBX.MDP3"] == "CMES"
    assert set(calendars.values()) <= set(exchange_calendars.get_calendar_names())
    assert np.all([isinstance(k, str) for k in calendars])


def test_coverage_is_true_about_unknown_symbols_off_session_days_and_one_day(  # type: ignore[no-untyped-def]
    cli, db: str, tmp_path: Path
) -> None:
    """The README's sample: ES and CL trades on every weekday of 2024 Q1, 2024-03-29 (Good
    Friday) included, which is not a CMES session in exchange_calendars. Its 20 rows per
    symbol are counted, so coverage's totals equal the store's; a typo is never complete."""
    from marketpipe.samples import make_sample

    make_sample(tmp_path / "sample")
    assert cli("ingest", "--from-file", str(tmp_path / "sample"), "--db", db).exit_code == 0
    stored = json.loads(
        cli("query", "SELECT count(*) AS n FROM trades", "--db", db, "--format", "json").stdout
    )
    report = json.loads(cli("coverage", "--schema", "trades", "--db", db, "--json").stdout)
    assert sum(s["rows"] for s in report["symbols"].values()) == stored[0]["n"] == 2560
    assert report["symbols"]["ES.FUT"]["rows_off_session"] == {"2024-03-29": 20}
    text = cli("coverage", "--schema", "trades", "--symbols", "ES.FUT", "--db", db)
    assert "│ ES.FUT │" in text.stdout and "1,280" in text.stdout
    assert "rows on 1 day that are not CMES sessions (counted above): 2024-03-29" in text.stdout

    typo = cli("coverage", "--schema", "trades", "--symbols", "NOPE", "--db", db)
    assert typo.exit_code == 0 and "NOPE: never stored" in typo.stdout
    assert "complete:" not in typo.stdout and typo.stdout.rstrip().endswith("not complete")
    strict = cli("coverage", "--schema", "trades", "--symbols", "ES.FUT,NOPE", "--db", db, "--strict")
    assert strict.exit_code == 1
    document = json.loads(
        cli("coverage", "--schema", "trades", "--symbols", "NOPE", "--db", db, "--json").stdout
    )
    assert document["complete"] is False and document["unknown_symbols"] == ["NOPE"]
    assert cli("coverage", "--schema", "trades", "--symbols", "ES.FUT", "--db", db, "--strict").exit_code == 0

    one = ("--start-date", "2024-01-02", "--end-date", "2024-01-02")
    day = json.loads(cli("coverage", "--schema", "trades", "--db", db, *one, "--json").stdout)
    assert day["sessions"] == 1 and day["complete"] is True
    assert {s: v["rows"] for s, v in day["symbols"].items()} == {"CL.FUT": 20, "ES.FUT": 20}
    friday = ("--start-date", "2024-03-29", "--end-date", "2024-03-29")
    holiday = json.loads(cli("coverage", "--schema", "trades", "--db", db, *friday, "--json").stdout)
    assert holiday["sessions"] == 0 and holiday["symbols"]["ES.FUT"]["rows"] == 20


def test_a_bare_coverage_of_a_store_holding_one_day(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _day_file(tmp_path / "files", DAYS[0])
    db = str(tmp_path / "one.duckdb")
    assert cli("ingest", "--from-file", str(tmp_path / "files"), "--db", db).exit_code == 0
    result = cli("coverage", "--schema", "trades", "--db", db, "--strict")
    assert result.exit_code == 0, result.output
    assert f"{DAYS[0]}..{DAYS[0]}: 1 session" in result.stdout
