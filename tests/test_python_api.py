"""marketpipe from Python, as a notebook or a scheduler task calls it: ``marketpipe.ingest``
returns a typed summary and raises marketpipe's own errors; ``marketpipe.open`` reads back;
neither prints anything unless the application configured logging."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import marketpipe
from marketpipe.samples import make_sample


def test_ingest_files_returns_per_schema_counts_and_resumes(tmp_path: Path) -> None:
    make_sample(tmp_path / "s")
    db = tmp_path / "api.duckdb"
    summary = marketpipe.ingest(tmp_path / "s", db=db)
    assert isinstance(summary, marketpipe.RunSummary) and summary.exit_code == 0
    schemas = summary.schemas()
    assert set(schemas) == {"ohlcv-1d", "trades"}
    with marketpipe.open(str(db)) as reader:
        for schema, counts in schemas.items():
            stored = reader.read(schema, symbols=None).num_rows
            assert counts.read == counts.stored + counts.quarantined and counts.stored == stored > 0
            assert counts.skipped == counts.failed == 0
    assert summary.run_id and summary.seconds > 0 and str(db) in summary.store
    assert summary.request is not None and summary.request.from_file == str(tmp_path / "s")

    again = marketpipe.ingest(str(tmp_path / "s"), db=str(db))
    assert all(c.stored == 0 and c.skipped >= 1 for c in again.schemas().values())
    forced = marketpipe.ingest(tmp_path / "s", db=db, force=True)
    assert {s: c.stored for s, c in forced.schemas().items()} == {s: c.stored for s, c in schemas.items()}


def test_bad_arguments_raise_usage_errors_before_any_store_exists(tmp_path: Path) -> None:
    db = tmp_path / "never.duckdb"
    cases = [
        ({"dataset": "GLBX.MDP3", "schemas": "tradez"}, "unknown schema 'tradez'"),
        ({"dataset": "GLBX.MDP3", "schemas": ["trades"], "start_date": "2024-13-01"}, "not a date"),
        ({"job": "nope"}, "unknown job 'nope'"),
        ({}, "nothing to ingest"),
        ({"from_file": tmp_path / "missing.dbn"}, "no such file or directory"),
        ({"from_file": tmp_path, "dataset": "GLBX.MDP3"}, "selects API downloads"),
        ({"from_file": tmp_path, "batch_size": 0}, "batch_size"),
    ]
    for arguments, message in cases:
        with pytest.raises(marketpipe.UsageError, match=message):
            marketpipe.ingest(db=db, **arguments)  # type: ignore[arg-type]
    assert not db.exists()


def test_a_failed_input_raises_with_the_summary_and_the_rest_is_stored(tmp_path: Path) -> None:
    [_, trades] = make_sample(tmp_path / "s")
    (tmp_path / "s" / "junk.dbn").write_bytes(b"not DBN data at all")
    db = tmp_path / "partial.duckdb"
    with pytest.raises(marketpipe.IngestFailed, match="junk.dbn") as raised:
        marketpipe.ingest(tmp_path / "s", db=db)
    summary = raised.value.summary
    assert summary.exit_code == 1
    assert [label for label, _ in summary.failed] == [str(tmp_path / "s" / "junk.dbn")]
    assert summary.schemas()["trades"].stored == 2560
    quiet = marketpipe.ingest(tmp_path / "s", db=db, raise_on_failure=False)
    assert quiet.exit_code == 1 and quiet.schemas()["trades"].skipped == 1
    with marketpipe.open(str(db)) as reader:
        assert reader.read("trades").num_rows == 2560


def test_an_api_request_and_its_dry_run(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "api.duckdb"
    request = {"dataset": "GLBX.MDP3", "schemas": "trades", "symbols": ["CL.FUT"], "stype_in": "parent"}
    days = {"start_date": "2024-01-02", "end_date": "2024-01-03"}
    quote = marketpipe.ingest(**request, **days, db=db, dry_run=True)  # type: ignore[arg-type]
    assert quote.estimate is not None and quote.estimate.quotes[0].records > 0 and not db.exists()
    summary = marketpipe.ingest(**request, **days, db=db)  # type: ignore[arg-type]
    trades = summary.schemas()["trades"]
    assert trades.stored == quote.estimate.quotes[0].records and trades.failed == 0
    with marketpipe.open(str(db)) as reader:
        assert reader.read("trades", symbols="CL.FUT").num_rows == trades.stored


def test_used_as_a_library_marketpipe_prints_nothing_until_logging_is_configured(tmp_path: Path) -> None:
    [_, trades] = make_sample(tmp_path / "s")
    db = tmp_path / "lib.duckdb"
    code = textwrap.dedent(
        f"""
        import logging, sys
        import marketpipe
        marketpipe.ingest({str(trades)!r}, db={str(db)!r})
        with marketpipe.open({str(db)!r}) as reader:
            assert reader.read("trades").num_rows == 2560
        if sys.argv[1] == "configured":
            logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s", stream=sys.stdout)
            marketpipe.ingest({str(trades)!r}, db={str(db)!r}, force=True)
        """
    )
    silent = subprocess.run(
        [sys.executable, "-c", code, "silent"], capture_output=True, text=True, cwd=tmp_path
    )
    assert silent.returncode == 0, silent.stderr
    assert silent.stdout == "" and silent.stderr == ""
    configured = subprocess.run(
        [sys.executable, "-c", code, "configured"], capture_output=True, text=True, cwd=tmp_path
    )
    assert configured.returncode == 0, configured.stderr
    lines = configured.stdout.splitlines()
    assert any(line.startswith("marketpipe.pipeline event=stage.start") for line in lines), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.duckdb", "s"]  # no logs/ left behind
