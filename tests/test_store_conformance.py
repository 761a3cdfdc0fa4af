"""The Store contract, written once and run against every store: DuckDB, plain PostgreSQL,
TimescaleDB, the Parquet lake (ledger in DuckDB, ledger in PostgreSQL), and an in-memory Arrow
data side with the SQL ledger in a DuckDB file (the shape of
a new store). A new store passes these before anything else uses it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

from marketpipe.config import load_settings
from marketpipe.errors import ChunkAlreadyStored
from marketpipe.samples import Interval, metadata_bytes, synthetic_trades, write_dbn
from marketpipe.sources.dbn_reader import DbnFile
from marketpipe.stores import open_store
from marketpipe.stores.base import ExportQuery, QuarantineQuery, Store
from marketpipe.transform import to_table
from marketpipe.types import Chunk, ChunkCounts, Rejection, RunStatus

from dbn_reference import MODEL
from pg import POSTGRES, SERVER, TIMESCALE

DAY = dt.date(2024, 3, 4)
FAMILY = MODEL.family_of("trades")


@pytest.fixture(
    params=["duckdb", POSTGRES, TIMESCALE, "arrow", "lake", pytest.param("lake-postgresql", marks=SERVER)]
)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Opens the store under test; called again, a second store on the same location."""
    ledger = None
    if request.param == "arrow":  # a kind registered by the tests' plugin (tests/plugins)
        url = f"arrow:{tmp_path / 'arrow'}"
    elif request.param == "duckdb":
        url = str(tmp_path / "conformance.duckdb")
    elif request.param.startswith("lake"):
        url = f"lake:{tmp_path / 'lake'}"
        ledger = request.getfixturevalue("pg_url") if request.param == "lake-postgresql" else None
    else:
        url = str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "timescale_url"))
    return lambda: open_store(load_settings(db=url, ledger=ledger).store, MODEL)


@pytest.fixture
def store(opener: Callable[[], Store]) -> Iterator[Store]:
    opened = opener()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def trades(tmp_path: Path) -> pa.Table:
    """400 standardized trades, symbols ESM4 and CLM4 by instrument."""
    records = synthetic_trades(400, DAY, seed=9)
    start = int(records["ts_event"].min())
    mappings = {
        "ESM4": [Interval(DAY, DAY + dt.timedelta(days=1), str(int(records["instrument_id"].min())))],
        "CLM4": [Interval(DAY, DAY + dt.timedelta(days=1), str(int(records["instrument_id"].max())))],
    }
    meta = metadata_bytes("GLBX.MDP3", "trades", start, start + 86_400 * 10**9, "raw_symbol", mappings)
    path = write_dbn(tmp_path / "t.dbn", meta, [records.tobytes()])
    return pa.concat_tables(to_table(FAMILY, "trades", raw) for raw in DbnFile(path).batches("trades", 150))


def _chunk(key: str = "conformance:1") -> Chunk:
    return Chunk(key, "trades", f"chunk {key}")


def _write(store: Store, chunk: Chunk, table: pa.Table, run_id: str = "run1", force: bool = False) -> None:
    store.ledger.plan_chunks([chunk], "conformance")
    with store.write_chunk(chunk, run_id, "conformance", force) as writer:
        for batch in table.to_batches(max_chunksize=128):
            writer.write(pa.Table.from_batches([batch]))
        writer.quarantine([Rejection("post", "rule_x", "a message", '{"size": 0}')])
        writer.commit(ChunkCounts(table.num_rows + 1, table.num_rows, 1, 0.1))


def _exported(store: Store, **filters: object) -> pa.Table:
    query = ExportQuery(FAMILY, "trades", **filters)  # type: ignore[arg-type]
    return pa.Table.from_batches(list(store.export(query, 100)), schema=FAMILY.arrow_schema)


def test_a_committed_chunk_reads_back_exactly_and_is_done(store: Store, trades: pa.Table) -> None:
    chunk = _chunk()
    assert not store.ledger.is_done(chunk)
    _write(store, chunk, trades)
    assert store.ledger.is_done(chunk)
    exported = _exported(store)
    assert exported.sort_by("sequence").equals(trades.sort_by("sequence"))
    [record] = store.ledger.quarantined(QuarantineQuery())
    assert (record.rule, record.message, record.chunk_key) == ("rule_x", "a message", chunk.key)


def test_writing_a_chunk_again_replaces_it(store: Store, trades: pa.Table) -> None:
    chunk = _chunk()
    _write(store, chunk, trades)
    _write(store, chunk, trades.slice(0, 100), run_id="run2", force=True)
    assert _exported(store).num_rows == 100
    assert len(store.ledger.quarantined(QuarantineQuery())) == 1


def test_a_chunk_done_by_another_run_is_not_written_twice(store: Store, trades: pa.Table) -> None:
    chunk = _chunk()
    _write(store, chunk, trades)
    with pytest.raises(ChunkAlreadyStored):
        _write(store, chunk, trades, run_id="run2")
    assert _exported(store).num_rows == trades.num_rows


def test_an_uncommitted_chunk_leaves_nothing(store: Store, trades: pa.Table) -> None:
    chunk = _chunk()
    store.ledger.plan_chunks([chunk], "conformance")
    with pytest.raises(RuntimeError), store.write_chunk(chunk, "run1", "conformance") as writer:
        writer.write(trades)
        raise RuntimeError("the pipeline failed mid-chunk")
    assert not store.ledger.is_done(chunk)
    assert _exported(store).num_rows == 0


def test_a_stop_between_rows_and_done_mark_keeps_no_second_copy(store: Store, trades: pa.Table) -> None:
    """What a store declares: atomic chunks roll their rows back with the ledger; the others
    keep the published rows until the chunk is written again, which replaces them."""
    chunk = _chunk()
    store.ledger.plan_chunks([chunk], "conformance")
    with store.ledger.chunk_transaction(chunk, "run1", "conformance", False) as tx:
        sink = store.data.open_chunk(FAMILY, tx.id, tx.earlier)
        sink.write(trades)
        sink.commit()
        sink.close()  # the process stops here, before the ledger's done mark
    assert not store.ledger.is_done(chunk)
    assert _exported(store).num_rows == (0 if store.data.capabilities.atomic_chunks else trades.num_rows)
    _write(store, chunk, trades, run_id="run2")
    assert store.ledger.is_done(chunk)
    assert _exported(store).sort_by("sequence").equals(trades.sort_by("sequence"))


def test_export_filters_by_symbol_and_index_time(store: Store, trades: pa.Table) -> None:
    _write(store, _chunk(), trades)
    es = _exported(store, symbols=["ESM4"])
    assert es.num_rows == sum(s == "ESM4" for s in trades["symbol"].to_pylist()) > 0
    times = sorted(trades[FAMILY.time_column].cast(pa.int64()).to_pylist())
    middle = times[len(times) // 2]
    later = _exported(store, start_ns=middle)
    assert later.num_rows == sum(t >= middle for t in times)
    assert later[FAMILY.time_column].cast(pa.int64()).to_pylist() == sorted(t for t in times if t >= middle)


def test_ledger_failures_runs_and_status(store: Store, trades: pa.Table) -> None:
    done, failed = _chunk("conformance:done"), _chunk("conformance:failed")
    store.ledger.start_run("run1", "conformance")
    _write(store, done, trades)
    store.ledger.plan_chunks([failed], "conformance")
    store.ledger.mark_failed(failed, "run1", "conformance", "bad input")
    store.ledger.finish_run("run1", RunStatus.PARTIAL, ChunkCounts(500, trades.num_rows, 1, 0.2), 1)
    status = store.status()
    assert {t.table: t.rows for t in status.tables}["trades"] == trades.num_rows
    assert sorted(status.chunks) == [("conformance", "done", 1), ("conformance", "failed", 1)]
    assert status.failed == [("conformance", "chunk conformance:failed", "bad input")]
    [run] = status.runs
    assert (run["status"], run["read"], run["stored"], run["failed"]) == ("partial", 500, trades.num_rows, 1)
    assert store.ledger.forget_failures([failed.key, "no such chunk"]) == 1
    assert [c for c in store.status().chunks if c[1] == "failed"] == []


def _two_at_once(store: Store, other: Store, trades: pa.Table) -> None:
    """A second writer starts its own chunk while the first holds one open (it may wait on the
    database, e.g. for a TimescaleDB chunk the first is creating, but not on the first chunk's
    end); both are stored, each once."""
    first, second = _chunk("conformance:first"), _chunk("conformance:second")
    with ThreadPoolExecutor(1) as pool:
        store.ledger.plan_chunks([first], "conformance")
        with store.write_chunk(first, "run1", "conformance") as writer:
            writer.write(trades)
            started = pool.submit(_write, other, second, trades.slice(0, 100), "run2")
            writer.commit(ChunkCounts(trades.num_rows, trades.num_rows, 0, 0.1))
        started.result(timeout=60)
    assert other.ledger.is_done(first) and store.ledger.is_done(second)
    assert _exported(other).num_rows == trades.num_rows + 100


def test_a_store_for_concurrent_writers_takes_two_at_once(
    store: Store, opener: Callable[[], Store], trades: pa.Table
) -> None:
    """What ``concurrent_writers`` promises: a second writer opened on the same location."""
    if not store.data.capabilities.concurrent_writers:
        pytest.skip(f"{store.mode} declares one writer at a time")
    other = opener()
    try:
        _two_at_once(store, other, trades)
    finally:
        other.close()


def test_a_store_for_writer_threads_takes_two_at_once(store: Store, trades: pa.Table) -> None:
    """What ``threaded_writers`` promises: a second writer through ``another()``, as the writer
    threads of one run use it (DuckDB: a second connection to the file this process has open)."""
    if not store.data.capabilities.threaded_writers:
        pytest.skip(f"{store.mode} declares no writer threads")
    other = store.another()
    try:
        _two_at_once(store, other, trades)
    finally:
        other.close()
