"""The commands people read every day print whole values at any terminal width (#24).

At 80 columns (a default terminal) Rich used to cut cells: ``5,000,…`` in the ingest summary,
run ids as ``0410b…`` (the id ``quarantine --run`` needs), times as ``2023-11-14T22:1…``, rule
names folded mid-word. Here every table is printed at 80 and at 200 columns: no cell holds
``…``, no line is wider than the terminal, and the values that matter (run ids, counts, rule
names) appear whole; what is left out at 80 is named, and ``--wide`` shows it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from rich.cells import cell_len

from marketpipe.samples import Interval, make_sample, metadata_bytes, synthetic_trades, write_dbn
from marketpipe.symbology import day_ns
from test_quarantine import _mixed_file

WIDTHS = (80, 200)


def _whole(output: str, width: int) -> None:
    assert "…" not in output, output
    # A table's lines fit; a sentence naming a long path is left to the terminal to wrap.
    tables = [line for line in output.splitlines() if line[:1] in "┏┃┡│└"]
    too_wide = [line for line in tables if cell_len(line) > width]
    assert not too_wide, too_wide


def _at(cli, width: int, monkeypatch: pytest.MonkeyPatch, *args: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", str(width))
    result = cli(*args)
    _whole(result.output, width)
    return result


@pytest.mark.parametrize("width", WIDTHS)
def test_every_table_of_the_sample_is_whole(  # type: ignore[no-untyped-def]
    cli, width: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "store.duckdb")
    make_sample(tmp_path / "sample")
    _mixed_file(tmp_path / "mixed" / "mixed.dbn", good=300, bad_each=3)
    ingest = _at(cli, width, monkeypatch, "ingest", "--from-file", str(tmp_path / "sample"), "--db", db)
    assert ingest.exit_code == 0 and "quarantined" in ingest.output and "rejected" not in ingest.output
    assert re.search(r"│ trades\s+│\s+2,560 │\s+2,560 │\s+0 │", ingest.output), ingest.output
    mixed = _at(cli, width, monkeypatch, "ingest", "--from-file", str(tmp_path / "mixed"), "--db", db)
    assert mixed.exit_code == 0
    runs = json.loads(cli("runs", "--db", db, "--json").stdout)["runs"]
    assert len(runs) == 2
    for args in (
        ("status", "--db", db),
        ("runs", "--db", db),
        ("runs", runs[0]["run_id"], "--db", db),
        ("quarantine", "--db", db),
        ("coverage", "--schema", "trades", "--db", db),
        ("list-jobs",),
    ):
        result = _at(cli, width, monkeypatch, *args)
        assert result.exit_code == 0, (args, result.output)
        if args[0] in ("status", "runs"):
            assert all(r["run_id"] in result.output for r in runs[: 1 if len(args) > 3 else 2]), result.output
    listing = _at(cli, width, monkeypatch, "quarantine", "--db", db)
    for rule in ("rtype_matches_schema", "ts_event_defined", "trade_size_positive", "trade_price_defined"):
        assert rule in listing.output  # never folded mid-word
    assert "(12 of 12 shown)" in listing.output
    status = _at(cli, width, monkeypatch, "status", "--db", db)
    first = "2024-01-02T14:00:00" in status.output
    assert first
    if width == 80:
        assert "not shown at 80 columns: " in status.output
        wide = cli("status", "--db", db, "--wide")
        assert "…" not in wide.output and "time column" in wide.output and "ts_recv" in wide.output
    else:
        assert "not shown" not in status.output and ".000" in status.output  # nanoseconds whole


def _big_file(path: Path, records: int) -> Path:
    day = dt.date(2024, 1, 2)
    mappings = {f"ES{i}": [Interval(day, day + dt.timedelta(days=1), str(i))] for i in range(1, 5)}
    meta = metadata_bytes(
        "GLBX.MDP3", "trades", day_ns(day), day_ns(day + dt.timedelta(days=1)), "raw_symbol", mappings
    )
    trades = synthetic_trades(records, day, instruments=4)
    trades["sequence"] = range(records)
    return write_dbn(path, meta, [trades.tobytes()])


@pytest.mark.slow
def test_five_million_records_whole_at_80_columns_and_queried_with_defaults(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's own case: a 5M-record ingest summary at 80 columns, and a
    ``count(distinct ...)`` that ran out of ingest's 128MB cap."""
    db = str(tmp_path / "store.duckdb")
    records = 5_000_000
    _big_file(tmp_path / "big" / "day.trades.dbn", records)
    ingest = _at(cli, 80, monkeypatch, "ingest", "--from-file", str(tmp_path / "big"), "--db", db)
    assert ingest.exit_code == 0, ingest.output
    assert re.search(r"│ trades\s+│ 5,000,000 │ 5,000,000 │\s+0 │", ingest.output), ingest.output
    for width in WIDTHS:
        for args in (("status", "--db", db), ("runs", "--db", db)):
            result = _at(cli, width, monkeypatch, *args)
            assert result.exit_code == 0 and "5,000,000" in result.output, (args, result.output)
        result = _at(cli, width, monkeypatch, "coverage", "--schema", "trades", "--db", db)
        assert result.exit_code == 0 and "1,25" in result.output
    coverage = json.loads(cli("coverage", "--schema", "trades", "--db", db, "--json").stdout)
    assert sum(s["rows"] for s in coverage["symbols"].values()) == records
    distinct = cli(
        "query", "SELECT count(DISTINCT sequence) AS n, count(DISTINCT ts_recv) AS t FROM trades",
        "--db", db, "--format", "json",
    )  # fmt: skip
    assert distinct.exit_code == 0, distinct.output
    assert json.loads(distinct.stdout)[0]["n"] == records
    # A limit too small for it names the setting that gives more.
    monkeypatch.setenv("MARKETPIPE_QUERY_MEMORY_LIMIT", "20MB")
    starved = cli("query", "SELECT count(DISTINCT sequence) FROM trades", "--db", db)
    assert starved.exit_code == 2 and "MARKETPIPE_QUERY_MEMORY_LIMIT" in starved.output, starved.output
