"""The Databento Historical API adapter, with the official client, against a local HTTPS API server."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any

import certifi
import databento as db
import duckdb
import numpy as np
import psycopg
import pytest

from marketpipe.config import IngestRequest, load_settings
from marketpipe.sources.databento_api import DatabentoApiSource

from conftest import KEY
from databento_server import COST_PER_RECORD, DatabentoServer

START, END = "2024-01-02", "2024-01-04"  # inclusive: three days
DAYS = [dt.date(2024, 1, 2) + dt.timedelta(days=i) for i in range(3)]


def _ingest(cli, *extra: str, schema: str = "trades,ohlcv-1d", symbols: str = "CL.FUT,ES.FUT"):  # type: ignore[no-untyped-def]
    return cli(
        "ingest", "--api", "databento", "--dataset", "GLBX.MDP3", "--schema", schema,
        "--symbols", symbols, "--stype-in", "parent", "--start-date", START, "--end-date", END, *extra,
    )  # fmt: skip


def _served(api: DatabentoServer, schema: str, symbols: str = "CL.FUT,ES.FUT") -> np.ndarray:
    """Every record the server holds for the request, day by day (what a clean run gets)."""
    blocks = []
    for day in DAYS:
        params = {
            "dataset": "GLBX.MDP3",
            "schema": schema,
            "symbols": symbols,
            "stype_in": "parent",
            "start": str(day),
            "end": str(day + dt.timedelta(days=1)),
        }
        blocks.append(api.data(params)[1])
    return np.concatenate(blocks)


def _rows(db_path: Path, table: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
        exact = ", ".join(f"{c}::VARCHAR" for c in columns)
        return con.execute(f"SELECT {exact} FROM {table} ORDER BY ALL").fetchall()


def _expected_trades(records: np.ndarray) -> list[tuple[int, int, str, int, int]]:
    return sorted(
        (
            int(r["instrument_id"]),
            int(r["ts_event"]),
            f"{int(r['price']) // 10**9}.{int(r['price']) % 10**9:09d}",
            int(r["size"]),
            int(r["sequence"]),
        )
        for r in records
    )


def _stored_trades(db_path: Path) -> list[tuple[int, int, str, int, int]]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        rows = con.execute(
            "SELECT instrument_id, epoch_ns(ts_event), price::VARCHAR, size, sequence FROM trades"
        ).fetchall()
    return sorted(rows)


def _log(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "logs" / "marketpipe.jsonl").read_text().splitlines()]


def test_multi_day_multi_schema_ingest_stores_exactly_what_was_served(api, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = _ingest(cli)
    assert result.exit_code == 0, result.output + result.stderr
    assert api.count("timeseries.get_range") == 6  # 3 days x 2 schemas, one request each
    # Every chunk after the first was downloaded ahead, while the one before it was stored.
    threads = [e["thread"] for e in _log(tmp_path) if e.get("event") == "chunk.downloaded"]
    assert threads[0] == "MainThread" and len(threads) == 6
    assert all(t.startswith("marketpipe-download") for t in threads[1:])
    trades = _served(api, "trades")
    assert _stored_trades(tmp_path / "store.duckdb") == _expected_trades(trades)
    bars = _served(api, "ohlcv-1d")
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        stored = con.execute(
            "SELECT instrument_id, epoch_ns(ts_event), high::VARCHAR, volume, symbol, schema"
            " FROM ohlcv ORDER BY ALL"
        ).fetchall()
        symbols = {r[0] for r in con.execute("SELECT DISTINCT symbol FROM trades").fetchall()}
    high = [f"{int(h) // 10**9}.{int(h) % 10**9:09d}" for h in bars["high"]]
    parent = ["CL.FUT" if i < 2000 else "ES.FUT" for i in bars["instrument_id"]]
    assert stored == sorted(
        (int(r["instrument_id"]), int(r["ts_event"]), h, int(r["volume"]), p, "ohlcv-1d")
        for r, h, p in zip(bars, high, parent, strict=True)
    )
    assert symbols == {"CL.FUT", "ES.FUT"}
    # Re-running fetches nothing: every chunk is done.
    assert _ingest(cli).exit_code == 0
    assert api.count("timeseries.get_range") == 6
    assert _stored_trades(tmp_path / "store.duckdb") == _expected_trades(trades)


@pytest.mark.slow
def test_transient_faults_are_retried_and_the_data_equals_a_clean_run(
    api, cli, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # Per chunk (day x schema) at most three faults before it is served; the first record
    # count fails once too, which retries that chunk's download.
    api.inject(
        "timeseries.get_range",
        "429", "reset", None, None,
        "503", "truncate", None,
        "500", "502", None,
        "504", "408", None,
        "slow:3", None,
    )  # fmt: skip
    api.inject("metadata.get_record_count", "503")
    api.inject("symbology.resolve", "reset", "500")
    result = _ingest(cli)
    assert result.exit_code == 0, result.output + result.stderr
    faulty = {t: _rows(tmp_path / "store.duckdb", t) for t in ("trades", "ohlcv")}
    retries = [e for e in _log(tmp_path) if e.get("event") == "api.retry"]
    reasons = " | ".join(e["reason"] for e in retries)
    for needle in ("HTTP 429", "HTTP 503", "HTTP 500", "HTTP 502", "HTTP 504", "HTTP 408",
                   "Error streaming response", "truncated stream", "ReadTimeout"):  # fmt: skip
        assert needle in reasons, needle
    assert any(e["wait"] >= 1.0 for e in retries if "HTTP 429" in e["reason"])  # Retry-After: 1

    api.reset()
    monkeypatch.setenv("MARKETPIPE_DB", str(tmp_path / "clean.duckdb"))
    assert _ingest(cli).exit_code == 0
    clean = {t: _rows(tmp_path / "clean.duckdb", t) for t in ("trades", "ohlcv")}
    assert faulty == clean
    assert len(faulty["trades"]) == len(_served(api, "trades"))


def test_every_other_request_failing_on_every_endpoint_still_completes(api, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A retry of one call must not depend on another call succeeding in the same attempt."""
    for endpoint in ("metadata.get_dataset_range", "symbology.resolve", "timeseries.get_range",
                     "metadata.get_record_count"):  # fmt: skip
        api.inject(endpoint, *["503", None] * 10)
    result = _ingest(cli, schema="trades")
    assert result.exit_code == 0, result.stderr
    assert api.count("timeseries.get_range") == 6  # each day: one failure, one success
    assert _stored_trades(tmp_path / "store.duckdb") == _expected_trades(_served(api, "trades"))


def test_exhausted_retries_fail_the_chunk_the_run_goes_on_and_a_rerun_fetches_only_it(  # type: ignore[no-untyped-def]
    api, cli, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MARKETPIPE_API_RETRIES", "2")
    # The second day fails: it is the one downloaded ahead, while the first day is stored.
    api.inject("timeseries.get_range", None, "503", "503")
    result = _ingest(cli, schema="trades")
    assert result.exit_code == 1
    assert "GLBX.MDP3 trades 2024-01-03" in result.stderr
    assert "still failing after 2 attempts" in result.stderr
    assert api.count("timeseries.get_range") == 4  # 2 attempts for the failed day, 1 for each other
    api.reset()
    assert _ingest(cli, schema="trades").exit_code == 0
    assert api.count("timeseries.get_range") == 1
    assert _stored_trades(tmp_path / "store.duckdb") == _expected_trades(_served(api, "trades"))


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("400", "request rejected (400): injected fault 400"),
        ("401", "request rejected (401)"),
        ("402", "payment required (402)"),
        ("403", "access denied (403)"),
        ("404", "not found (404)"),
        ("422", "request rejected (422): injected fault 422"),
    ],
)
def test_permanent_download_errors_are_not_retried(api, cli, status: str, message: str) -> None:  # type: ignore[no-untyped-def]
    api.inject("timeseries.get_range", status)
    result = _ingest(cli, schema="trades")
    assert result.exit_code == 1  # the chunk failed; the other days were stored
    assert api.count("timeseries.get_range") == 3  # no second attempt for the rejected one
    if status != "401":
        assert message in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_bad_key_fails_in_one_line_and_never_shows_the_key(api, cli, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wrong = "db-WRONGKEY456789abcdefghijklmnop"
    monkeypatch.setenv("DATABENTO_API_KEY", wrong)
    monkeypatch.setenv("MARKETPIPE_LOG_LEVEL", "DEBUG")
    result = _ingest(cli)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: dataset range of GLBX.MDP3: authentication failed: check DATABENTO_API_KEY"
    )
    assert "Traceback" not in result.output + result.stderr
    assert api.count("timeseries.get_range") == 0
    log_text = (tmp_path / "logs" / "marketpipe.jsonl").read_text()
    assert wrong not in result.output + result.stderr + log_text


def test_key_never_appears_in_logs_or_output(api, cli, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MARKETPIPE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("MARKETPIPE_API_RETRIES", "2")
    api.inject("timeseries.get_range", "429", "reset", "401")
    result = _ingest(cli)
    log_text = (tmp_path / "logs" / "marketpipe.jsonl").read_text()
    assert "api.retry" in log_text
    assert KEY not in result.output + result.stderr + log_text


def test_unknown_dataset_fails_before_anything_is_billed(api, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("ingest", "--dataset", "XNAS.NOPE", "--schema", "trades", "--symbols", "AAPL",
                 "--start-date", START, "--end-date", END)  # fmt: skip
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "error: dataset range of XNAS.NOPE: request rejected (422): Unknown dataset 'XNAS.NOPE'."
    )
    assert api.count("timeseries.get_range") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"symbols": "CL.FUT,CLX.FUT"},
            "symbols not found in GLBX.MDP3 (parent) from 2024-01-02 to 2024-01-04: CLX.FUT",
        ),
        ({"schema": "mbo"}, "schema mbo is not available in GLBX.MDP3; available: trades, ohlcv-1d, mbp-1"),
        ({"start": "2023-12-30"}, "GLBX.MDP3 trades is available from 2024-01-01T00:00:00.000000000Z to"),
        ({"end": "2024-03-01"}, "(end exclusive); requested 2024-01-02 to 2024-03-01"),
    ],
)
def test_bad_request_fails_before_downloading(api, cli, args: dict[str, str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("ingest", "--dataset", "GLBX.MDP3", "--schema", args.get("schema", "trades"),
                 "--symbols", args.get("symbols", "CL.FUT"), "--stype-in", "parent",
                 "--start-date", args.get("start", START), "--end-date", args.get("end", END))  # fmt: skip
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert api.count("timeseries.get_range") == 0


def test_schemas_come_from_list_schemas_when_the_range_has_none_per_schema(api, cli) -> None:  # type: ignore[no-untyped-def]
    api.range_style = "dataset"
    result = _ingest(cli, schema="mbo")
    assert result.exit_code == 2
    assert "schema mbo is not available in GLBX.MDP3; available: trades, ohlcv-1d, mbp-1" in result.stderr
    assert api.count("metadata.list_schemas") == 1
    assert _ingest(cli, schema="trades").exit_code == 0


def test_legacy_dataset_range_names_are_understood(api, cli) -> None:  # type: ignore[no-untyped-def]
    api.range_style = "legacy"
    result = cli("ingest", "--dataset", "GLBX.MDP3", "--schema", "trades", "--symbols", "CL.FUT",
                 "--stype-in", "parent", "--start-date", "2023-12-31", "--end-date", END)  # fmt: skip
    assert result.exit_code == 2
    assert "GLBX.MDP3 trades is available from 2024-01-01 to 2024-03-01 (end exclusive)" in result.stderr
    assert _ingest(cli, schema="trades").exit_code == 0


def test_partly_found_symbols_are_reported(api, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "ingest", "--dataset", "GLBX.MDP3", "--schema", "trades", "--symbols", "NG.FUT,CL.FUT",
        "--stype-in", "parent", "--start-date", "2024-01-08", "--end-date", "2024-01-11",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "warning: symbols found for only part of the range: NG.FUT" in result.stderr


def test_key_and_gateway_from_a_dotenv_file(api, cli, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("DATABENTO_API_KEY")
    monkeypatch.delenv("DATABENTO_GATEWAY")
    (tmp_path / ".env").write_text(f"DATABENTO_API_KEY={KEY}\nDATABENTO_GATEWAY={api.url}\n")
    result = _ingest(cli, schema="ohlcv-1d")
    assert result.exit_code == 0, result.stderr
    assert api.count("timeseries.get_range") == 3


def test_missing_key_and_missing_arguments_fail_in_one_line(api, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("DATABENTO_API_KEY")
    result = _ingest(cli)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: no Databento API key: set DATABENTO_API_KEY (environment or .env)"
    result = cli("ingest", "--dataset", "GLBX.MDP3", "--schema", "trades")
    assert result.exit_code == 2
    assert "an API download needs --symbols, --start-date, --end-date" in result.stderr


def test_dry_run_quotes_without_downloading(api, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = _ingest(cli, "--dry-run")
    assert result.exit_code == 0, result.stderr
    trades = len(_served(api, "trades"))
    bars = len(_served(api, "ohlcv-1d"))
    out = " ".join(result.stdout.split())
    assert f"trades │ {trades:,} │" in out and f"ohlcv-1d │ {bars:,} │" in out
    assert f"{(trades + bars) * COST_PER_RECORD:,.2f}" in out
    assert "nothing was downloaded" in out
    assert api.count("timeseries.get_range") == 0
    assert not (tmp_path / "store.duckdb").exists()


def test_max_cost_refuses_a_plan_quoted_above_it(api, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    quoted = (len(_served(api, "trades")) + len(_served(api, "ohlcv-1d"))) * COST_PER_RECORD
    result = _ingest(cli, "--max-cost", f"{quoted / 2:.4f}")
    assert result.exit_code == 2
    assert f"the plan is quoted at ${quoted:,.2f}, above --max-cost" in result.stderr
    assert api.count("timeseries.get_range") == 0
    assert _ingest(cli, "--max-cost", f"{quoted * 2:.4f}").exit_code == 0
    assert api.count("timeseries.get_range") == 6


def test_keep_raw_keeps_each_chunk_as_a_readable_dbn_file(api, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = tmp_path / "raw"
    assert _ingest(cli, "--keep-raw", str(archive), schema="trades").exit_code == 0
    files = sorted(archive.iterdir())
    assert [f.name[:17] for f in files] == [f"trades_{d}" for d in DAYS]
    assert sum(len(db.DBNStore.from_file(f).to_ndarray()) for f in files) == len(_served(api, "trades"))


def test_gateway_given_as_host_and_port_is_reached_over_https(api, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = _ingest(cli, "--gateway", api.url.removeprefix("https://"), schema="ohlcv-1d")
    assert result.exit_code == 0, result.stderr
    assert api.count("timeseries.get_range") == 3


def test_an_untrusted_certificate_fails_at_once_in_one_line(api, cli, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # public CAs only: not the test CA
    result = _ingest(cli)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: dataset range of GLBX.MDP3: TLS to {api.url} failed: the server's certificate is not"
        " trusted (REQUESTS_CA_BUNDLE names the CA file requests trusts)"
    )
    assert not [e for e in _log(tmp_path) if e.get("event") == "api.retry"]


def test_an_unreachable_gateway_fails_after_its_retries_in_one_short_line(api, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MARKETPIPE_API_RETRIES", "2")
    result = _ingest(cli, "--gateway", f"https://127.0.0.1:{port}")
    assert result.exit_code == 1
    # Each retry is shown as it happens; the failure itself is one line.
    lines = result.stderr.strip().splitlines()
    retries = [line for line in lines if " api.retry " in line]
    assert (
        len(retries) == 1 and "attempt=1" in retries[0] and "call='dataset range of GLBX.MDP3'" in retries[0]
    )
    assert [line for line in lines if line not in retries] == [
        "error: dataset range of GLBX.MDP3: Databento API still failing after 2 attempts:"
        " ConnectionError: Failed to establish a new connection: [Errno 111] Connection refused"
    ]


def test_unusable_keep_raw_directory_fails_in_one_line(api, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a_file").write_text("")
    result = _ingest(cli, "--keep-raw", str(tmp_path / "a_file" / "raw"))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot keep downloads in {tmp_path / 'a_file' / 'raw'}: ")
    assert api.count("timeseries.get_range") == 0


def test_plan_splits_by_days_and_by_2000_symbols(api) -> None:  # type: ignore[no-untyped-def]
    symbols = [f"S{i:04d}" for i in range(2500)]
    request = IngestRequest(
        dataset="GLBX.MDP3", schemas=["trades", "mbp-1"], symbols=symbols,
        start_date=dt.date(2024, 1, 1), end_date=dt.date(2024, 1, 3), chunk_days=2,
    )  # fmt: skip
    source = DatabentoApiSource(request, load_settings().api)
    try:
        parts = source.downloads()
    finally:
        source.close()
    assert [(p.schema, str(p.start), str(p.end), len(p.symbols)) for p in parts] == [
        (schema, start, end, size)
        for schema in ("trades", "mbp-1")
        for start, end in (("2024-01-01", "2024-01-03"), ("2024-01-03", "2024-01-04"))
        for size in (2000, 500)
    ]
    assert [s for p in parts[:2] for s in p.symbols] == symbols


def test_api_ingest_into_postgresql_with_faults_stores_each_record_once(  # type: ignore[no-untyped-def]
    api, cli, monkeypatch, pg_url: str
) -> None:
    monkeypatch.setenv("MARKETPIPE_DB", pg_url)
    api.inject("timeseries.get_range", "reset", None, "429", None, "truncate")
    assert _ingest(cli, schema="trades").exit_code == 0
    assert _ingest(cli, "--force", schema="trades").exit_code == 0  # re-stored, not duplicated
    with psycopg.connect(pg_url) as conn:
        query = "SELECT instrument_id, ts_event, price::text, size, sequence FROM trades"
        rows = conn.execute(query).fetchall()
    assert sorted(rows) == _expected_trades(_served(api, "trades"))


def test_a_download_too_large_for_one_transaction_is_stored_in_parts_and_resumes_by_part(  # type: ignore[no-untyped-def]
    api, cli, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(DatabentoApiSource, "PART_RECORDS", 4)
    # First run: a rule that rejects every record of sequence 1002 fails the parts holding one
    # (1 of at most 4 records is above the 5% quarantine limit); the other parts are stored.
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - {name: not_1002, stage: initial, severity: error, tables: [trades],"
        " check: 'sequence <> 1002', message: m}\n"
    )
    monkeypatch.setenv("MARKETPIPE_VALIDATION_FILE", str(rules))
    assert _ingest(cli, schema="trades").exit_code == 1
    assert api.count("timeseries.get_range") == 3
    first = _stored_trades(tmp_path / "store.duckdb")
    expected = _expected_trades(_served(api, "trades"))
    assert 0 < len(first) < len(expected)
    # Second run with the shipped rules: each day downloads again, only the failed parts run.
    monkeypatch.delenv("MARKETPIPE_VALIDATION_FILE")
    api.reset()
    assert _ingest(cli, schema="trades").exit_code == 0
    assert api.count("timeseries.get_range") == 3
    skipped = [e for e in _log(tmp_path) if e.get("event") == "chunk.skipped" and "[records" in e["chunk"]]
    assert skipped
    assert _stored_trades(tmp_path / "store.duckdb") == expected
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        states = dict(con.execute("SELECT chunk_key, status FROM marketpipe_chunks").fetchall())
    assert sum(":0+4" in k for k in states) == 3 and set(states.values()) == {"done"}
    # Nothing left to do; --force stores every part again without duplicating a row.
    assert _ingest(cli, schema="trades").exit_code == 0
    assert api.count("timeseries.get_range") == 3
    assert _ingest(cli, "--force", schema="trades").exit_code == 0
    assert _stored_trades(tmp_path / "store.duckdb") == expected


def test_parts_of_downloads_load_in_parallel_lanes_into_postgresql(  # type: ignore[no-untyped-def]
    api, cli, tmp_path: Path, monkeypatch, pg_url: str
) -> None:
    """Two writers take the parts of each day's download at once. Each day is downloaded once
    (a download removed before its last part was read would be fetched again), every part and
    every day is done, and the rows are what was served."""
    monkeypatch.setattr(DatabentoApiSource, "PART_RECORDS", 4)
    monkeypatch.setenv("MARKETPIPE_DB", pg_url)
    monkeypatch.setenv("MARKETPIPE_WRITERS", "2")
    assert _ingest(cli, schema="trades").exit_code == 0
    assert api.count("timeseries.get_range") == 3
    assert {e["lane"] for e in _log(tmp_path) if e.get("event") == "chunk.start"} == {1, 2}
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT instrument_id, ts_event, price::text, size, sequence FROM trades"
        ).fetchall()
        states = dict(conn.execute("SELECT chunk_key, status FROM marketpipe_chunks").fetchall())
    assert sorted(rows) == _expected_trades(_served(api, "trades"))
    assert set(states.values()) == {"done"} and sum("+4" not in k for k in states) == 3  # the days
