"""What real Databento data carries and small samples lack, built with databento-dbn.

- Every sentinel Databento documents, per schema, stored as NULL (never quarantined) and
  exported equal to ``DBNStore.to_df(price_type="decimal", pretty_ts=False)``, into DuckDB,
  plain PostgreSQL and TimescaleDB. The passages, from Databento's schema pages ("Fields"):
  BBO/CBBO ``ts_event`` "Will be UNDEF_TIMESTAMP in cases where there was no last trade in the
  session", ``price`` "Will be UNDEF_PRICE if there was no last trade", ``size`` "Will be 0";
  book levels without orders carry UNDEF_PRICE (empty book sides); statistics ``quantity``
  "Will be INT64_MAX when unused" (UNDEF_STAT_QUANTITY) and "Null, invalid or inapplicable
  values are represented by the maximum value of the field's type" (``ts_ref``, ``price``);
  definitions leave inapplicable prices, timestamps and integers at UNDEF/the type's maximum.
- Recordings of the Live API: no single schema, symbol mappings in the stream, ts_out,
  system and error messages.
- The same records as DBN v1, v2 and v3 files are one chunk.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import databento as db
import databento_dbn as dbn
import duckdb
import numpy as np
import pytest
import zstandard
from databento.common.constants import SCHEMA_STRUCT_MAP

from marketpipe.model import SCHEMAS, Kind
from marketpipe.samples import Interval, Mapping, metadata_bytes, synthetic_trades, write_dbn

from dbn_reference import MODEL, exported_rows
from pg import POSTGRES, TIMESCALE

T0 = 1_709_510_400_000_000_000  # 2024-03-04
PX = 5_000 * 10**9
UNDEF_TS = dbn.UNDEF_TIMESTAMP
UNDEF_PRICE = dbn.UNDEF_PRICE
MAPPINGS = {"ESM4": [Interval(dt.date(2024, 3, 4), dt.date(2024, 3, 5), "7")]}
# Fields Databento does not document as possibly undefined, which the shipped rules require.
REQUIRED = {"trades": {"price"}, "ohlcv": {"open", "high", "low", "close"}}
# Schemas whose ts_event Databento documents as undefined when there was no trade.
UNDEFINED_TS_EVENT = {"bbo-1s", "bbo-1m", "cbbo-1s", "cbbo-1m"}


def _base(schema: str, count: int) -> np.ndarray:
    family = MODEL.family_of(schema)
    records = np.zeros(count, dtype=family.record_dtype)
    records["length"] = family.record_dtype.itemsize // 4
    records["rtype"] = int(dbn.RType.from_schema(dbn.Schema(schema)).value)
    records["instrument_id"] = 7
    records["ts_event"] = T0 + np.arange(count) * 1_000
    if "ts_recv" in records.dtype.names:
        records["ts_recv"] = T0 + 5_000 + np.arange(count) * 1_000
    valid: dict[str, Any] = {
        "trades": {"price": PX, "size": 2, "action": b"T", "side": b"A"},
        "ohlcv": {"open": PX, "high": PX, "low": PX, "close": PX, "volume": 3},
        "definitions": {"raw_symbol": b"ESM4", "instrument_class": b"F", "security_update_action": b"A"},
        "statistics": {"stat_type": int(dbn.StatType.SETTLEMENT_PRICE.value), "update_action": 1},
    }.get(family.table, {})
    # Databento's enumerated characters: Side (A, B, N) and Action (A, C, M, R, T, F, N).
    for name, value in (("side", b"N"), ("action", b"A")):
        if name in records.dtype.names and records.dtype[name].kind == "S" and name not in valid:
            records[name] = value
    for name, value in valid.items():
        records[name] = value
    return records


def sentinel_records(schema: str) -> np.ndarray:
    """Two records: an ordinary one, and one with every documented sentinel of the schema."""
    family = MODEL.family_of(schema)
    records = _base(schema, 2)
    struct = SCHEMA_STRUCT_MAP[dbn.Schema(schema)]
    required = REQUIRED.get(family.table, set())
    undefined = records[1:]
    for name in struct._price_fields:  # type: ignore[attr-defined]
        if name not in required:
            undefined[name] = UNDEF_PRICE
    for name in struct._timestamp_fields:  # type: ignore[attr-defined]
        if name not in ("ts_event", family.time_field):
            undefined[name] = UNDEF_TS
    if schema in UNDEFINED_TS_EVENT:
        undefined["ts_event"] = UNDEF_TS
        undefined["size"] = 0
    for column in family.columns:
        if column.kind is Kind.INTEGER and column.sentinel is not None:
            undefined[column.source] = column.sentinel
    if schema == "statistics":
        assert int(undefined["quantity"][0]) == dbn.UNDEF_STAT_QUANTITY
    return records


def _write(path: Path, schema: str, records: np.ndarray) -> Path:
    """Encoded by databento-dbn's own record types (decoded, then re-encoded)."""
    metadata = metadata_bytes("GLBX.MDP3", schema, T0, T0 + 86_400 * 10**9, "raw_symbol", MAPPINGS)
    decoder = dbn.DBNDecoder()
    decoder.write(metadata + records.tobytes())
    decoded = decoder.decode()[1:]
    assert len(decoded) == len(records)
    return write_dbn(path, metadata, (bytes(r) for r in decoded))


def _expected(path: Path, schema: str) -> list[dict[str, Any]]:
    """What databento's own client reads, with its sentinels as NULL."""
    frame = db.DBNStore.from_file(path).to_df(price_type="decimal", pretty_ts=False).reset_index()
    family = MODEL.family_of(schema)
    rows = []
    for raw in frame.to_dict("records"):
        row: dict[str, Any] = {}
        for column in family.columns:
            if column.source is None:
                continue
            value = raw[column.source]
            not_a_number = isinstance(value, (Decimal, float)) and math.isnan(value)
            if not_a_number or (column.sentinel is not None and int(value) == column.sentinel):
                value = None
            row[column.name] = int(value) if isinstance(value, np.integer) else value
        row["symbol"] = raw["symbol"]
        rows.append(row)
    return sorted(rows, key=repr)


@pytest.fixture(params=["duckdb", POSTGRES, TIMESCALE])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return str(tmp_path / "sentinels.duckdb")
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "timescale_url"))


def test_documented_sentinels_are_stored_as_null_in_every_store(store: str, cli, tmp_path: Path) -> None:
    paths = [_write(tmp_path / "in" / f"{s}.dbn", s, sentinel_records(s)) for s in SCHEMAS]
    result = cli("ingest", "--from-file", str(tmp_path / "in"), "--db", store)
    assert result.exit_code == 0, result.output
    assert "quarantined by" not in result.output  # every record Databento may send is stored
    for schema, path in zip(SCHEMAS, paths, strict=True):
        out = tmp_path / f"{schema}.parquet"
        assert cli("export", "--schema", schema, "--out", str(out), "--db", store).exit_code == 0
        _, rows = exported_rows(out)
        compared = [{k: v for k, v in r.items() if k not in ("schema", "ts_out")} for r in rows]
        assert sorted(compared, key=repr) == _expected(path, schema), schema
        assert all(r["ts_out"] is None for r in rows)
        if MODEL.family_of(schema).table not in ("trades", "ohlcv", "status"):  # these have no sentinels
            # the sentinel record really holds NULLs
            assert any(v is None for r in compared for k, v in r.items() if k != "symbol"), schema


def test_bbo_interval_without_a_trade_is_stored_and_indexed_by_ts_recv(cli, tmp_path: Path) -> None:
    records = sentinel_records("bbo-1s")
    _write(tmp_path / "bbo.dbn", "bbo-1s", records)
    assert cli("ingest", "--from-file", str(tmp_path / "bbo.dbn")).exit_code == 0
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT epoch_ns(ts_recv), ts_event, price, size, bid_px_00 FROM bbo ORDER BY ts_recv"
        ).fetchall()
    assert rows[1] == (int(records["ts_recv"][1]), None, None, 0, None)
    out = tmp_path / "day.csv"
    # The export's dates select by the index timestamp: the record without ts_event is in.
    day = ["--start-date", "2024-03-04", "--end-date", "2024-03-04"]
    assert cli("export", "--schema", "bbo-1s", "--out", str(out), "--format", "csv", *day).exit_code == 0
    assert len(out.read_text().splitlines()) == 3


def _live_file(path: Path, ts_out: bool) -> dict[str, Any]:
    """A recording of a Live session: metadata without a schema, then mappings, trades,
    mbp-1, a definition, a system and an error message, in stream order."""
    extra = {"ts_out": T0 + 9_000_000} if ts_out else {}
    mapping = {
        "publisher_id": 1, "stype_in": dbn.SType.PARENT, "stype_out": dbn.SType.INSTRUMENT_ID,
        "start_ts": T0, "end_ts": T0 + 86_400 * 10**9, **extra,
    }  # fmt: skip

    def mapped(instrument_id: int, parent: str, raw: str) -> bytes:
        return bytes(dbn.SymbolMappingMsg(
            instrument_id=instrument_id, ts_event=T0 + 1, stype_in_symbol=parent,
            stype_out_symbol=raw, **mapping,
        ))  # fmt: skip

    def trade(instrument_id: int, i: int) -> bytes:
        return bytes(dbn.TradeMsg(
            publisher_id=1, instrument_id=instrument_id, ts_event=T0 + 100 + i, price=PX + i,
            size=1 + i, action=dbn.Action.TRADE, side=dbn.Side.BID, depth=0, ts_recv=T0 + 200 + i,
            **extra,
        ))  # fmt: skip

    def quote(instrument_id: int, i: int) -> bytes:
        level = dbn.BidAskPair(bid_px=PX - 1, ask_px=UNDEF_PRICE, bid_sz=2, ask_sz=0, bid_ct=1, ask_ct=0)
        return bytes(dbn.MBP1Msg(
            publisher_id=1, instrument_id=instrument_id, ts_event=T0 + 300 + i, price=PX,
            size=1, action=dbn.Action.ADD, side=dbn.Side.BID, depth=0, ts_recv=T0 + 400 + i,
            levels=level, **extra,
        ))  # fmt: skip

    definition = bytes(dbn.InstrumentDefMsg(
        publisher_id=1, instrument_id=11, ts_event=T0 + 5, ts_recv=T0 + 6, min_price_increment=PX,
        display_factor=10**9, raw_symbol="ESM4", group="ES", exchange="XCME", asset="ES", security_type="FUT",
        instrument_class=dbn.InstrumentClass.FUTURE, security_update_action=dbn.SecurityUpdateAction.ADD,
        **extra,
    ))  # fmt: skip
    # A replayed session: the second mapping of 11 is stamped earlier than the trades it
    # precedes; stream order decides, not timestamps.
    stream = [
        mapped(11, "ES.FUT", "ESM4"),
        mapped(12, "ES.FUT", "ESU4"),
        definition,
        trade(11, 0),
        quote(12, 0),
        bytes(
            dbn.SystemMsg(ts_event=T0 + 7, msg="Subscription request 1 for trades data succeeded", **extra)
        ),
        trade(12, 1),
        mapped(11, "ES.FUT", "ESM4-ESU4"),
        trade(11, 2),
        quote(11, 1),
        bytes(dbn.ErrorMsg(ts_event=T0 + 8, err="Gateway lagging", **extra)),
    ]
    meta = dbn.Metadata(
        dataset="GLBX.MDP3", start=T0, stype_in=dbn.SType.PARENT, stype_out=dbn.SType.INSTRUMENT_ID,
        schema=None, symbols=["ES.FUT"], ts_out=ts_out,
    )  # fmt: skip
    write_dbn(path, bytes(meta), stream, compress=True)
    return extra


@pytest.mark.parametrize("ts_out", [True, False], ids=["ts_out", "no_ts_out"])
def test_live_recording_goes_to_each_schemas_table_with_stream_symbols(
    ts_out: bool, cli, tmp_path: Path
) -> None:
    extra = _live_file(tmp_path / "live.dbn.zst", ts_out)
    result = cli("ingest", "--from-file", str(tmp_path / "live.dbn.zst"))
    assert result.exit_code == 0, result.output + result.stderr
    assert "1 system and 1 error messages from the live gateway" in result.stderr
    assert "error: Gateway lagging" in result.stderr
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        trades = con.execute(
            "SELECT instrument_id, symbol, size, epoch_ns(ts_out) FROM trades ORDER BY ts_recv"
        ).fetchall()
        quotes = con.execute(
            "SELECT instrument_id, symbol, bid_px_00, ask_px_00, schema, epoch_ns(ts_out) FROM mbp1"
            " ORDER BY ts_recv"
        ).fetchall()
        definitions = con.execute("SELECT raw_symbol, symbol FROM definitions").fetchall()
    sent = extra.get("ts_out")
    assert trades == [(11, "ESM4", 1, sent), (12, "ESU4", 2, sent), (11, "ESM4-ESU4", 3, sent)]
    assert quotes == [
        (12, "ESU4", Decimal(PX - 1) / 10**9, None, "mbp-1", sent),
        (11, "ESM4-ESU4", Decimal(PX - 1) / 10**9, None, "mbp-1", sent),
    ]
    assert definitions == [("ESM4", "ESM4")]
    # The same recording again is the same data: nothing stored twice.
    again = cli("ingest", "--from-file", str(tmp_path / "live.dbn.zst"))
    assert again.exit_code == 0
    assert "skipped 3 chunks already stored" in again.output


def test_live_recording_cut_inside_a_record_is_rejected(cli, tmp_path: Path) -> None:
    _live_file(tmp_path / "live.dbn.zst", ts_out=True)
    whole = tmp_path / "live.dbn"
    compressed = (tmp_path / "live.dbn.zst").read_bytes()
    whole.write_bytes(zstandard.ZstdDecompressor().stream_reader(compressed).read()[:-13])
    (tmp_path / "live.dbn.zst").unlink()
    result = cli("ingest", "--from-file", str(whole))
    assert result.exit_code == 1
    assert "truncated" in result.output
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM trades").fetchone() == (0,)


def _trades_in_version(path: Path, version: int, records: np.ndarray) -> Path:
    mappings = [Mapping("ESM4", MAPPINGS["ESM4"])]
    meta = dbn.Metadata(
        "GLBX.MDP3", T0, dbn.SType.RAW_SYMBOL, dbn.SType.INSTRUMENT_ID, dbn.Schema.TRADES,
        symbols=["ESM4"], partial=[], not_found=[], mappings=mappings, end=T0 + 86_400 * 10**9,
        version=version,
    )  # fmt: skip
    return write_dbn(path, bytes(meta), [records.tobytes()], compress=path.suffix == ".zst")


def test_same_records_in_dbn_v1_v2_v3_are_stored_once(cli, tmp_path: Path) -> None:
    records = synthetic_trades(2, dt.date(2024, 3, 4), seed=1)
    records["instrument_id"] = 7
    files = [
        _trades_in_version(tmp_path / "in" / "a.v1.dbn", 1, records),
        _trades_in_version(tmp_path / "in" / "b.v2.dbn.zst", 2, records),
        _trades_in_version(tmp_path / "in" / "c.v3.dbn", 3, records),
    ]
    assert len({f.read_bytes() for f in files}) == 3
    one_run = cli("ingest", "--from-file", str(tmp_path / "in"))
    assert one_run.exit_code == 0, one_run.output
    assert one_run.output.count("the same records as") == 2
    for file in files:  # and one run each
        result = cli("ingest", "--from-file", str(file))
        assert result.exit_code == 0
        assert "skipped 1 chunk already stored" in result.output
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT symbol) FROM trades").fetchone() == (2, 1)


@pytest.mark.slow
def test_damaged_live_recordings_fail_cleanly_or_store_a_closed_count(cli, tmp_path: Path) -> None:
    """Fixed-seed byte flips in the records of a live recording: each run either stores with
    read = stored + quarantined, or rejects the file in one line; never a crash."""
    _live_file(tmp_path / "live.dbn.zst", ts_out=True)
    data = zstandard.ZstdDecompressor().stream_reader((tmp_path / "live.dbn.zst").read_bytes()).read()
    metadata_end = 8 + int.from_bytes(data[4:8], "little")
    rng = np.random.default_rng(20261126)
    outcomes = {"stored": 0, "rejected": 0}
    for i in range(60):
        mutant = bytearray(data)
        for position in rng.integers(metadata_end, len(data), size=int(rng.integers(1, 4))):
            mutant[position] = int(rng.integers(0, 256))
        path = tmp_path / "mutants" / f"{i}.dbn"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(bytes(mutant))
        result = cli("ingest", "--from-file", str(path), "--db", str(tmp_path / f"m{i}.duckdb"))
        assert "internal error" not in result.output and "Traceback" not in result.output, result.output
        assert result.exit_code in (0, 1), result.output
        failures = [line for line in result.output.splitlines() if line.startswith("failed:")]
        outcomes["rejected" if failures else "stored"] += 1
    assert outcomes["rejected"] > 0 and outcomes["stored"] > 0, outcomes
