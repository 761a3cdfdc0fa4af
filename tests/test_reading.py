"""The Python read API (``marketpipe.open``): exact values back from every store, in batches."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import polars
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import marketpipe
from marketpipe.config import IngestRequest, load_settings
from marketpipe.errors import StoreRejected, UsageError
from marketpipe.pipeline import ingest
from marketpipe.reading import Reader
from marketpipe.samples import Interval, metadata_bytes, synthetic_trades, write_dbn

from conftest import SAMPLES, samples_dir
from dbn_reference import MODEL
from pg import POSTGRES

DAY = dt.date(2024, 3, 4)


@pytest.fixture(params=["duckdb", POSTGRES])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return str(tmp_path / "store.duckdb")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def records(tmp_path: Path, db: str) -> np.ndarray:
    """500 trades of two instruments (ESM4, CLM4), ingested into ``db``."""
    trades = synthetic_trades(500, DAY, seed=4)
    start = int(trades["ts_event"].min())
    ids = sorted({int(i) for i in trades["instrument_id"]})
    mappings = {
        "ESM4": [Interval(DAY, DAY + dt.timedelta(days=1), str(ids[0]))],
        "CLM4": [Interval(DAY, DAY + dt.timedelta(days=1), str(ids[-1]))],
    }
    meta = metadata_bytes("GLBX.MDP3", "trades", start, start + 86_400 * 10**9, "raw_symbol", mappings)
    path = write_dbn(tmp_path / "t.dbn", meta, [trades.tobytes()])
    summary = ingest(IngestRequest(from_file=str(path)), load_settings(db=db), model=MODEL)
    assert summary.totals().stored == len(trades)
    return trades


@pytest.fixture
def reader(db: str, records: np.ndarray) -> Iterator[Reader]:
    with marketpipe.open(db) as opened:
        yield opened


def _by_sequence(table: pa.Table) -> pa.Table:
    return table.sort_by("sequence")


def test_read_gives_exact_nanoseconds_and_prices(reader: Reader, records: np.ndarray) -> None:
    table = _by_sequence(reader.read("trades"))
    order = np.argsort(records["sequence"], kind="stable")
    assert table.schema.field("ts_recv").type == pa.timestamp("ns", tz="UTC")
    assert table.schema.field("price").type == pa.decimal128(19, 9)
    assert table["ts_recv"].cast(pa.int64()).to_pylist() == [int(t) for t in records["ts_recv"][order]]
    # Exact: the decimal's unscaled integer is DBN's fixed-point price, digit for digit.
    prices = [int(p.scaleb(9)) for p in table["price"].to_pylist()]
    assert prices == [int(p) for p in records["price"][order]]


def test_price_types_mirror_the_databento_client(reader: Reader, records: np.ndarray) -> None:
    order = np.argsort(records["sequence"], kind="stable")
    fixed = _by_sequence(reader.read("trades", price_type="fixed"))
    assert fixed.schema.field("price").type == pa.int64()
    assert fixed["price"].to_pylist() == [int(p) for p in records["price"][order]]
    floats = _by_sequence(reader.read("trades", price_type="float"))
    assert floats["price"].to_pylist() == [int(p) / 1e9 for p in records["price"][order]]
    with pytest.raises(UsageError, match="price_type 'cents'"):
        reader.read("trades", price_type="cents")


def test_filters_by_symbol_time_and_columns(reader: Reader, records: np.ndarray) -> None:
    times = np.sort(records["ts_recv"].astype(np.int64))
    middle, later = int(times[100]), int(times[300])
    # start inclusive, end exclusive, as Databento's API; every form of a bound gives the same rows.
    seconds, nanos = divmod(middle, 10**9)
    iso = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"
    for start in (middle, iso, pd.Timestamp(middle, tz="UTC")):
        window = reader.read("trades", start=start, end=later, columns=["ts_recv", "symbol", "size"])
        assert window.column_names == ["ts_recv", "symbol", "size"]
        got = window["ts_recv"].cast(pa.int64()).to_pylist()
        assert got == [int(t) for t in times if middle <= t < later]
    es = reader.read("trades", symbols="ESM4")
    assert set(es["symbol"].to_pylist()) == {"ESM4"}
    assert es.num_rows == int(np.count_nonzero(records["instrument_id"] == records["instrument_id"].min()))
    assert reader.read("trades", start=DAY + dt.timedelta(days=1)).num_rows == 0
    assert reader.read("trades", end=DAY).schema == reader.schema("trades")


def test_batches_stay_bounded(reader: Reader, records: np.ndarray) -> None:
    sizes = [b.num_rows for b in reader.batches("trades", batch_size=64)]
    assert max(sizes) <= 64 and sum(sizes) == len(records)


def test_pandas_and_polars(reader: Reader, records: np.ndarray) -> None:
    frame = reader.to_pandas("trades", columns=["ts_recv", "price"], price_type="float")
    assert str(frame["ts_recv"].dtype) == "datetime64[ns, UTC]" and len(frame) == len(records)
    assert frame["price"].dtype == np.float64
    exact = reader.to_pandas("trades", columns=["price"])
    # Exact decimals as an Arrow-backed column, not an object column of Python Decimals.
    assert exact["price"].dtype == pd.ArrowDtype(pa.decimal128(19, 9))
    assert exact["price"].sum() == sum(Decimal(int(p)) / 10**9 for p in records["price"])
    lazy = reader.to_polars("trades", columns=["ts_recv", "price"])
    assert lazy.schema["ts_recv"] == polars.Datetime("ns", "UTC")
    assert lazy.schema["price"] == polars.Decimal(19, 9)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"columns": ["prize"]}, "trades has no column 'prize'"),
        (
            {"start": "2024-03-04T09:30:00-05:00"},
            "start: '2024-03-04T09:30:00-05:00' is not a date or UTC time",
        ),
        ({"end": "yesterday"}, "end: 'yesterday' is not a date or UTC time"),
        ({"end": 1.5}, "end: 1.5 is not a date, datetime, ISO string or ns integer"),
    ],
)
def test_bad_arguments_fail_in_one_line(reader: Reader, arguments: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("+", r"\+")):
        reader.read("trades", **arguments)
    with pytest.raises(UsageError, match="unknown schema"):
        reader.read("tradez")


def test_opening_nothing_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "none.duckdb"
    with pytest.raises(StoreRejected, match="nothing has been ingested there"):
        marketpipe.open(str(missing))
    assert not missing.exists()


@pytest.fixture
def samples_store(samples: Path, db: str, cli) -> str:  # type: ignore[no-untyped-def]
    """Every real Databento sample (every schema, DBN v1-v3) ingested into ``db``."""
    result = cli("ingest", "--from-file", str(samples), "--db", db)
    assert result.exit_code == 0, result.output
    return db


def test_read_is_what_export_writes_for_every_schema(samples_store: str, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same rows, types and values: export reads through the same code, and says so."""
    checked = 0
    with marketpipe.open(samples_store) as reader:
        for schema in sorted({p.name.split(".")[1] for p in SAMPLES.glob("test_data.*.dbn*")}):
            out = tmp_path / f"{schema}.parquet"
            result = cli("export", "--schema", schema, "--out", str(out), "--db", samples_store)
            read = reader.read(schema)
            if not read.num_rows:  # the ohlcv-1d sample holds no record: said, no file written
                assert result.exit_code == 3 and not out.exists(), result.output
                continue
            assert result.exit_code == 0, result.output
            exported = pq.read_table(out)
            assert read.num_rows == exported.num_rows
            assert read.schema == exported.schema.remove_metadata()
            assert read.equals(exported.replace_schema_metadata(None)), schema
            checked += read.num_rows > 0
    assert checked == 16  # the 17 schemas of the samples, but ohlcv-1d whose sample holds no record


def test_a_large_ranged_read_stays_in_bounded_memory(tmp_path: Path) -> None:
    """2,000,000 trades read in 50,000-row batches: Arrow never holds much more than a batch."""
    trades = synthetic_trades(2_000_000, DAY, seed=11)
    start = int(trades["ts_event"].min())
    meta = metadata_bytes("GLBX.MDP3", "trades", start, start + 86_400 * 10**9, "raw_symbol", {})
    path = write_dbn(tmp_path / "big.dbn", meta, [trades.tobytes()])
    db = str(tmp_path / "big.duckdb")
    assert ingest(IngestRequest(from_file=str(path)), load_settings(db=db), model=MODEL).exit_code == 0
    times = np.sort(trades["ts_recv"].astype(np.int64))
    start_ns, end_ns = int(times[100_000]), int(times[1_900_000])
    with marketpipe.open(db) as reader:
        baseline = pa.total_allocated_bytes()
        peak, rows = 0, 0
        for batch in reader.batches("trades", start=start_ns, end=end_ns, batch_size=50_000):
            rows += batch.num_rows
            peak = max(peak, pa.total_allocated_bytes() - baseline)
            del batch
    assert rows == 1_800_000
    # One batch of trades is ~7 MB in Arrow; the whole range would be ~250 MB.
    assert peak < 64 * 2**20, f"peak Arrow allocation {peak:,} bytes"


@pytest.mark.parametrize("store", ["duckdb", POSTGRES, "lake"])
def test_reads_interleave_on_one_open_store(
    tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    """A second read while the first one's batches are still open (a notebook, a generator
    pipeline): each read has its own cursor, and both return every row (#23)."""
    trades = synthetic_trades(3_000, DAY, seed=6)
    start = int(trades["ts_event"].min())
    meta = metadata_bytes("GLBX.MDP3", "trades", start, start + 86_400 * 10**9, "raw_symbol", {})
    path = write_dbn(tmp_path / "t.dbn", meta, [trades.tobytes()])
    db = {
        "duckdb": str(tmp_path / "s.duckdb"),
        "lake": f"lake:{tmp_path / 'lake'}",
        "postgresql": request.getfixturevalue("pg_url") if store == "postgresql" else "",
    }[store]
    summary = ingest(IngestRequest(from_file=str(path)), load_settings(db=db), model=MODEL)
    assert summary.totals().stored == 3_000
    with marketpipe.open(db) as reader:
        first = reader.batches("trades", batch_size=500)
        head = next(first)
        whole = reader.read("trades")  # while ``first`` is open
        second = reader.batches("trades", batch_size=700)
        interleaved = [b.num_rows for pair in zip(first, second, strict=False) for b in pair]
        rest = [b.num_rows for b in [*first, *second]]
    assert whole.num_rows == 3_000
    assert head.num_rows + sum(interleaved) + sum(rest) == 6_000


@pytest.mark.parametrize(
    "name", ["test_data.trades.dbn", "test_data.mbp-1.dbn", "test_data.ohlcv-1d.v3.dbn.zst"]
)
def test_to_pandas_like_dbn_store_mirrors_the_clients_to_df(name: str, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Databento's DBNStore.to_df: "The DataFrame index will be set to ts_recv if it exists in
    the schema, otherwise it will be set to ts_event" (api-historical/helpers/dbn-store-to-df),
    the record's fields follow in order, then symbol. With price_type="float" (the client's
    default) the frames are equal value for value; marketpipe's own columns come last."""
    import databento as db

    path = samples_dir() / name
    store = str(tmp_path / "store.duckdb")
    assert cli("ingest", "--from-file", str(path), "--db", store).exit_code == 0
    expected = db.DBNStore.from_file(path).to_df()
    schema = db.DBNStore.from_file(path).schema.value
    with marketpipe.open(store) as reader:
        got = reader.to_pandas(schema, price_type="float", like_dbn_store=True)
    assert got.index.name == expected.index.name
    assert list(got.columns[: len(expected.columns)]) == list(expected.columns)
    got = got.sort_values([*expected.columns[:1]], kind="stable")
    expected = expected.sort_values([*expected.columns[:1]], kind="stable")
    for column in expected.columns:
        mine, theirs = got[column].to_numpy(), expected[column].to_numpy()
        if column in ("action", "side"):
            theirs = np.array([str(v) for v in theirs])
            mine = np.array([str(v) for v in mine])
        assert (mine == theirs).all() or np.allclose(
            mine.astype(float), theirs.astype(float), equal_nan=True
        ), column
    assert (got.index == expected.index).all()
