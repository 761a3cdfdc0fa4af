"""The SQL ledger (bookkeeping tables, statements and chunk transactions) and the data side
of a store whose tables live in the ledger's database.

Statements are written once in the dialect PostgreSQL and DuckDB share, with ``%s``
placeholders and ``%%`` for a percent sign (psycopg's); DuckDB's store swaps them back.
Identifiers only ever come from the model, never from user input.

A chunk's rows, its quarantined records and its ``done`` mark are written in one
transaction, so rows of a chunk exist exactly when its progress row says ``done`` (or a
later attempt failed and rolled back, leaving the earlier rows and their range intact).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

import marketpipe.stores.catalog as catalog
import marketpipe.stores.migrations as migrations
from marketpipe.errors import ChunkAlreadyStored, StoreRejected, UsageError
from marketpipe.model import Column, Family, Kind, Model
from marketpipe.stores.base import (
    CHUNKS_TABLE,
    COVERAGE_TABLE,
    INSTRUMENTS_TABLE,
    QUARANTINE_TABLE,
    RUN_FIELDS,
    RUNS_TABLE,
    SYMBOLOGY_TABLE,
    Capabilities,
    ChunkSink,
    Deletion,
    ExportQuery,
    LedgerDatabase,
    QuarantinedRecord,
    QuarantineQuery,
    ReplacingTransaction,
    StoreStatus,
    TableStatus,
    TimeRange,
    chunk_id,
)
from marketpipe.symbology import NS_PER_DAY, days_touched
from marketpipe.types import (
    Chunk,
    ChunkCounts,
    ChunkStatus,
    Rejection,
    RunStatus,
    Span,
    SymbolInterval,
)


def identifier(name: str) -> str:
    """A SQL identifier, quoted (names come from the model, never from user input)."""
    return '"' + name.replace('"', '""') + '"'


SIGNED_INTEGERS = {8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}


def column_types(
    price: str, timestamp: str, text: str, integer: Callable[[pa.DataType], str]
) -> Callable[[Column], str]:
    """A store's column type function from its types for each kind of column."""

    def type_of(column: Column) -> str:
        if column.kind is Kind.PRICE:
            return price
        if column.is_timestamp:
            return timestamp
        if column.kind is Kind.INTEGER:
            return integer(column.arrow_type)
        return text

    return type_of


def readable_view(family: Family, as_time: Callable[[str], str], kind: str = "VIEW") -> str:
    """``<table>_v``: every column, plus ``<column>_time`` as ``as_time`` reads each timestamp
    column, so a query reads times the same way in every SQL store."""
    readable = ", ".join(
        f"{as_time(identifier(c.name))} AS {identifier(c.name + '_time')}"
        for c in family.columns
        if c.is_timestamp
    )
    view, table = identifier(family.table + "_v"), identifier(family.table)
    return f"CREATE OR REPLACE {kind} {view} AS SELECT *, {readable} FROM {table}"


def create_family_table(family: Family, type_of: Callable[[Column], str]) -> str:
    columns = []
    for c in family.columns:
        null = " NOT NULL" if c.name == family.time_column else ""
        columns.append(f"{identifier(c.name)} {type_of(c)}{null}")
    columns.append("chunk_id BIGINT NOT NULL")
    return f"CREATE TABLE IF NOT EXISTS {identifier(family.table)} (\n  " + ",\n  ".join(columns) + "\n)"


CHUNK_RANGES_DDL = tuple(
    f"ALTER TABLE {CHUNKS_TABLE} ADD COLUMN IF NOT EXISTS {column}"
    for column in ("dataset TEXT", "start_ns BIGINT", "end_ns BIGINT")
)
INSTRUMENTS_DDL = f"""CREATE TABLE IF NOT EXISTS {INSTRUMENTS_TABLE} (
  dataset TEXT NOT NULL,
  instrument_id BIGINT NOT NULL,
  raw_symbol TEXT NOT NULL,
  start_ns BIGINT NOT NULL,
  end_ns BIGINT NOT NULL,
  PRIMARY KEY (dataset, instrument_id, raw_symbol, start_ns)
)"""
# Identity by coverage: each input's coverage, each chunk's input, one symbology table (the
# instruments table's raw symbols move into it). A store of the previous release keeps each
# stored input as covering its own rows only (what it was asked for is not recorded).
# Each chunk's attempts (re-runs after a transient store fault), for ``runs ID``.
ATTEMPTS_DDL = f"ALTER TABLE {CHUNKS_TABLE} ADD COLUMN IF NOT EXISTS attempts INTEGER"
_PART_SUFFIX = r"':[0-9]+\+[0-9]+$'"  # a part's key is its input's and ':<first>+<size>'
SYMBOLOGY_DDL = f"""CREATE TABLE IF NOT EXISTS {SYMBOLOGY_TABLE} (
  dataset TEXT NOT NULL,
  stype TEXT NOT NULL,
  symbol TEXT NOT NULL,
  instrument_id BIGINT NOT NULL,
  start_ns BIGINT NOT NULL,
  end_ns BIGINT NOT NULL,
  PRIMARY KEY (dataset, stype, symbol, instrument_id, start_ns)
)"""
COVERAGE_DDL = (
    f"ALTER TABLE {CHUNKS_TABLE} ADD COLUMN IF NOT EXISTS input_key TEXT",
    f"ALTER TABLE {CHUNKS_TABLE} ADD COLUMN IF NOT EXISTS replaced BIGINT",
    f"""CREATE TABLE IF NOT EXISTS {COVERAGE_TABLE} (
  input_key TEXT NOT NULL,
  dataset TEXT NOT NULL,
  schema TEXT NOT NULL,
  instrument_id BIGINT,
  start_ns BIGINT NOT NULL,
  end_ns BIGINT NOT NULL,
  complete BOOLEAN NOT NULL
)""",
    f"CREATE INDEX IF NOT EXISTS marketpipe_coverage_input ON {COVERAGE_TABLE} (input_key)",
    f"CREATE INDEX IF NOT EXISTS marketpipe_coverage_time ON {COVERAGE_TABLE} (dataset, schema, start_ns)",
    SYMBOLOGY_DDL,
    INSTRUMENTS_DDL,
    f"""INSERT INTO {SYMBOLOGY_TABLE} (dataset, stype, symbol, instrument_id, start_ns, end_ns)
SELECT dataset, 'raw_symbol', raw_symbol, instrument_id, start_ns, end_ns FROM {INSTRUMENTS_TABLE}
ON CONFLICT DO NOTHING""",
    f"DROP TABLE {INSTRUMENTS_TABLE}",
    f"""INSERT INTO {COVERAGE_TABLE} (input_key, dataset, schema, instrument_id, start_ns, end_ns, complete)
SELECT regexp_replace(chunk_key, {_PART_SUFFIX}, ''), coalesce(dataset, ''), schema, NULL,
  min(first_ns), max(last_ns) + 1, false
FROM {CHUNKS_TABLE} WHERE input_key IS NULL AND first_ns IS NOT NULL AND status = '{ChunkStatus.DONE}'
GROUP BY 1, 2, 3""",
    f"UPDATE {CHUNKS_TABLE} SET input_key = regexp_replace(chunk_key, {_PART_SUFFIX}, '')"
    " WHERE input_key IS NULL",
)
SYMBOLOGY_SELECT = f"SELECT dataset, stype, symbol, instrument_id, start_ns, end_ns FROM {SYMBOLOGY_TABLE}"
# What a reader of a store the previous release made reads instead: readers migrate nothing.
PREVIOUS_SYMBOLOGY_SELECT = (
    "SELECT dataset, 'raw_symbol' AS stype, raw_symbol AS symbol, instrument_id, start_ns, end_ns"
    f" FROM {INSTRUMENTS_TABLE}"
)
UPSERT_SYMBOL = f"""INSERT INTO {SYMBOLOGY_TABLE} (dataset, stype, symbol, instrument_id, start_ns, end_ns)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (dataset, stype, symbol, instrument_id, start_ns) DO UPDATE SET
  end_ns = greatest({SYMBOLOGY_TABLE}.end_ns, excluded.end_ns)"""
INSERT_COVERAGE = f"""INSERT INTO {COVERAGE_TABLE}
  (input_key, dataset, schema, instrument_id, start_ns, end_ns, complete)
VALUES (%s, %s, %s, %s, %s, %s, %s)"""


def run_lock_key(run_id: str) -> int:
    """The 64-bit key of the lock a run holds while its process lives."""
    return chunk_id(f"run:{run_id}")


BOOKKEEPING_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {CHUNKS_TABLE} (
  chunk_key TEXT PRIMARY KEY,
  chunk_id BIGINT NOT NULL,
  job TEXT NOT NULL,
  schema TEXT NOT NULL,
  label TEXT NOT NULL,
  status TEXT NOT NULL,
  records_read BIGINT,
  stored BIGINT,
  quarantined BIGINT,
  seconds DOUBLE PRECISION,
  first_ns BIGINT,
  last_ns BIGINT,
  run_id TEXT,
  updated_at TIMESTAMPTZ NOT NULL,
  error TEXT
)""",
    f"""CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (
  run_id TEXT PRIMARY KEY,
  job TEXT NOT NULL,
  started_at TIMESTAMPTZ NOT NULL,
  finished_at TIMESTAMPTZ,
  status TEXT NOT NULL,
  records_read BIGINT,
  stored BIGINT,
  quarantined BIGINT,
  failed BIGINT
)""",
    f"""CREATE TABLE IF NOT EXISTS {QUARANTINE_TABLE} (
  run_id TEXT NOT NULL,
  chunk_id BIGINT NOT NULL,
  chunk_key TEXT NOT NULL,
  schema TEXT NOT NULL,
  stage TEXT NOT NULL,
  rule TEXT NOT NULL,
  message TEXT NOT NULL,
  record TEXT NOT NULL,
  quarantined_at TIMESTAMPTZ NOT NULL
)""",
)


def ledger_steps(db: LedgerDatabase, model: Sequence[str] = ()) -> list[migrations.Migration]:
    """The ledger's migrations in ``db``; ``model``: what the model's step makes besides the
    bookkeeping tables (a store's own tables, functions and views)."""
    Step, run = migrations.Migration, migrations.statements
    return [
        Step(migrations.MODEL, run(db, *BOOKKEEPING_DDL, *model)),
        Step(migrations.CHUNK_RANGES, run(db, *CHUNK_RANGES_DDL)),
        Step(migrations.INSTRUMENTS, run(db, INSTRUMENTS_DDL)),
        Step(migrations.COVERAGE, run(db, *COVERAGE_DDL)),
        Step(migrations.ATTEMPTS, run(db, ATTEMPTS_DDL)),
    ]


# first_ns/last_ns: event-time range of the chunk's stored rows; only a commit sets them.
UPSERT_CHUNK = f"""INSERT INTO {CHUNKS_TABLE}
  (chunk_key, chunk_id, job, schema, label, status, records_read, stored, quarantined,
   seconds, first_ns, last_ns, run_id, updated_at, error, dataset, start_ns, end_ns, input_key, attempts)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), %s, %s, %s, %s, %s, %s)
ON CONFLICT (chunk_key) DO UPDATE SET
  job = excluded.job, label = excluded.label, status = excluded.status, attempts = excluded.attempts,
  dataset = excluded.dataset, start_ns = excluded.start_ns, end_ns = excluded.end_ns,
  input_key = excluded.input_key,
  replaced = CASE WHEN excluded.status = '{ChunkStatus.DONE}' THEN NULL ELSE {CHUNKS_TABLE}.replaced END,
  records_read = excluded.records_read, stored = excluded.stored,
  quarantined = excluded.quarantined, seconds = excluded.seconds,
  first_ns = CASE WHEN excluded.status = '{ChunkStatus.DONE}' THEN excluded.first_ns
    ELSE {CHUNKS_TABLE}.first_ns END,
  last_ns = CASE WHEN excluded.status = '{ChunkStatus.DONE}' THEN excluded.last_ns
    ELSE {CHUNKS_TABLE}.last_ns END,
  run_id = excluded.run_id, updated_at = excluded.updated_at, error = excluded.error"""

INSERT_PENDING = f"""INSERT INTO {CHUNKS_TABLE}
  (chunk_key, chunk_id, job, schema, label, status, updated_at, dataset, start_ns, end_ns, input_key)
VALUES (%s, %s, %s, %s, %s, '{ChunkStatus.PENDING}', now(), %s, %s, %s, %s)
ON CONFLICT (chunk_key) DO NOTHING"""

CHUNK_STATE = f"SELECT status, first_ns, last_ns, run_id FROM {CHUNKS_TABLE} WHERE chunk_key = %s"

INSERT_RUN = f"""INSERT INTO {RUNS_TABLE} (run_id, job, started_at, status)
VALUES (%s, %s, now(), '{RunStatus.RUNNING}') ON CONFLICT (run_id) DO NOTHING"""

FINISH_RUN = f"""UPDATE {RUNS_TABLE} SET finished_at = now(), status = %s,
  records_read = %s, stored = %s, quarantined = %s, failed = %s WHERE run_id = %s"""

DELETE_QUARANTINE = f"DELETE FROM {QUARANTINE_TABLE} WHERE chunk_id = %s"

INSERT_QUARANTINE = f"""INSERT INTO {QUARANTINE_TABLE}
  (run_id, chunk_id, chunk_key, schema, stage, rule, message, record, quarantined_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())"""

CHUNK_COUNTS = f"""SELECT job, status, run_id, count(*) FROM {CHUNKS_TABLE}
GROUP BY job, status, run_id ORDER BY job, status"""

FAILED_CHUNKS = f"""SELECT job, label, coalesce(error, '') FROM {CHUNKS_TABLE}
WHERE status = '{ChunkStatus.FAILED}' ORDER BY updated_at DESC LIMIT 20"""

RUNS_SELECT = f"""SELECT run_id, job, started_at, finished_at, status,
  records_read, stored, quarantined, failed
FROM {RUNS_TABLE}"""
LAST_RUNS = 5  # the runs status shows
PARTLY_DELETED = "partly deleted (marketpipe delete): the next run of its input stores it whole again"
# A chunk as ``runs ID`` shows it: the ledger keeps each chunk's latest run.
RUN_CHUNK_FIELDS = (
    "label", "schema", "status", "records_read", "stored", "quarantined", "seconds", "attempts",
    "updated_at", "error",
)  # fmt: skip


def _quarantine_filter(query: QuarantineQuery) -> tuple[str, list[Any]]:
    where, params = [], []
    for column, value in (("run_id", query.run_id), ("schema", query.schema), ("rule", query.rule)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    return (" WHERE " + " AND ".join(where)) if where else "", params


def filters(query: ExportQuery, time_ns: str) -> tuple[str, list[Any]]:
    """The WHERE clause of a query's schema, symbols and time range, and its parameters.

    ``time_ns`` is the store's expression for the index time in nanoseconds since the epoch.
    """
    family = query.family
    where: list[str] = []
    params: list[Any] = []
    if "schema" in family.column_names:
        where.append("schema = %s")
        params.append(query.schema)
    if query.symbols:
        matches = ["symbol = ANY(%s)"]
        params.append(list(query.symbols))
        for instrument_id, first_ns, end_ns in query.instruments:
            matches.append(f"(instrument_id = %s AND {time_ns} >= %s AND {time_ns} < %s)")
            params.extend([instrument_id, first_ns, end_ns])
        where.append("(" + " OR ".join(matches) + ")")
    if query.start_ns is not None:
        where.append(f"{time_ns} >= %s")
        params.append(query.start_ns)
    if query.end_ns is not None:
        where.append(f"{time_ns} < %s")
        params.append(query.end_ns)
    return ((" WHERE " + " AND ".join(where)) if where else ""), params


def span_ranges(spans: Sequence[Span]) -> dict[tuple[int, int], list[int] | None]:
    """Spans grouped by time range, in order: the instruments of each (None: every one). A
    day's input covers one range, whatever its number of instruments."""
    ranges: dict[tuple[int, int], set[int] | None] = {}
    for instrument, start, end in spans:
        held = ranges.setdefault((start, end), set())
        if instrument is None or held is None:
            ranges[start, end] = None
        else:
            held.add(instrument)
    return {r: None if i is None else sorted(i) for r, i in sorted(ranges.items())}


def covered_rows(
    family: Family, schema: str, tx: ReplacingTransaction, time_ns: str
) -> tuple[str, list[Any]]:
    """The WHERE clause of the rows a coverage replaces: ``tx.replaced``'s chunks, inside the
    spans (grouped by time range: an instrument list each, or every instrument)."""
    where = ["chunk_id = ANY(%s)"]
    params: list[Any] = [list(tx.replaced)]
    if "schema" in family.column_names:
        where.append("schema = %s")
        params.append(schema)
    spans = []
    for (start, end), instruments in span_ranges(tx.spans).items():
        term = f"({time_ns} >= %s AND {time_ns} < %s"
        params.extend([start, end])
        if instruments is not None:
            term += " AND instrument_id = ANY(%s)"
            params.append(instruments)
        spans.append(term + ")")
    where.append("(" + " OR ".join(spans) + ")")
    return " WHERE " + " AND ".join(where), params


def export_statement(query: ExportQuery, time_ns: str) -> tuple[str, list[Any]]:
    """SELECT of an export, in index-time order, and its parameters."""
    family = query.family
    clause, params = filters(query, time_ns)
    columns = ", ".join(identifier(n) for n in family.column_names)
    statement = (
        f"SELECT {columns} FROM {identifier(family.table)}{clause} ORDER BY {identifier(family.time_column)}"
    )
    return statement, params


def utc_schema(schema: pa.Schema) -> pa.Schema:
    """Naive timestamps (a DuckDB store's, UTC by convention) marked as UTC."""
    return pa.schema(
        [
            pa.field(f.name, pa.timestamp(f.type.unit, tz="UTC"))
            if pa.types.is_timestamp(f.type) and f.type.tz is None
            else f
            for f in schema
        ]
    )


def utc_timestamps(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.cast(utc_schema(batch.schema))


def query_error(exc: Exception) -> UsageError:
    """A failed query as the database tells it, hints and the caret under the error's place
    included: it is the user's SQL, not a fault of the store."""
    lines = [line.rstrip() for line in str(exc).strip().splitlines()]
    return UsageError("query: " + "\n".join(line for line in lines if line))


class Background:
    """One write at a time on a worker thread, so the caller prepares the next meanwhile."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="marketpipe-store")
        self._inflight: Future[None] | None = None

    def submit(self, write: Callable[..., None], *args: object) -> None:
        self.wait()
        self._inflight = self._executor.submit(write, *args)

    def check(self) -> None:
        """Raises what the write in flight raised, if it has ended so."""
        if self._inflight is not None and self._inflight.done():
            self._inflight.result()

    def wait(self) -> None:
        """Until the write in flight is done; raises what it raised."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.result()

    def close(self) -> None:
        """Nothing may still write when the transaction ends (its error is already raised)."""
        with suppress(Exception):
            self.wait()
        self._executor.shutdown()


def recorded_definitions(ledger: SqlLedger, relations: set[str]) -> dict[str, str]:
    """Table -> the definition it was made with (JSON), as the ledger's database records it."""
    if catalog.DEFINITIONS_TABLE not in relations:
        return {}
    statement = f"SELECT table_name, definition FROM {catalog.DEFINITIONS_TABLE}"
    return {str(table): str(definition) for table, definition in ledger.fetch(statement)}


def record_definitions(ledger: SqlLedger, families: Sequence[Family]) -> None:
    """The definitions of tables made (or first checked) now, in the open transaction."""
    if families:
        ledger.execute(catalog.DEFINITIONS_DDL)
        ledger.execute_many(catalog.RECORD_DEFINITION, catalog.rows(families))


class ChunkTransaction:
    """A chunk's ledger side inside the database transaction its rows are written in."""

    def __init__(self, ledger: SqlLedger, chunk: Chunk, run_id: str, job: str, force: bool) -> None:
        self.ledger = ledger
        self.chunk = chunk
        self.run_id = run_id
        self.job = job
        self.force = force
        self.id = chunk_id(chunk.key)
        self.earlier: TimeRange | None = None
        self.rejections: list[Rejection] = []
        self.opened = False
        self.committed = False

    def open(self) -> None:
        """Begin the database transaction: the chunk's ledger row locked, its earlier
        quarantined records dropped, the range its earlier rows span read (once)."""
        if self.opened:
            return
        self.opened = True
        ledger = self.ledger
        ledger.begin()
        rows = ledger.fetch(CHUNK_STATE + ledger.ROW_LOCK, [self.chunk.key])
        status, first_ns, last_ns, owner = rows[0] if rows else (None, None, None, self.run_id)
        if owner != self.run_id and status == ChunkStatus.DONE and not self.force:
            raise ChunkAlreadyStored(self.chunk.label)
        if first_ns is not None:
            self.earlier = (int(first_ns), int(last_ns))
        ledger.execute(DELETE_QUARANTINE, [self.id])

    def quarantine(self, rejections: Sequence[Rejection]) -> None:
        self.rejections.extend(rejections)

    def finish(self, counts: ChunkCounts, stored: TimeRange | None) -> None:
        if self.rejections:
            self.ledger.execute_many(
                INSERT_QUARANTINE,
                [
                    (
                        self.run_id,
                        self.id,
                        self.chunk.key,
                        self.chunk.schema,
                        r.stage,
                        r.rule,
                        r.message,
                        r.record,
                    )
                    for r in self.rejections
                ],
            )
        self.ledger.execute(
            UPSERT_CHUNK,
            self.ledger._chunk_row(self.chunk, self.job, ChunkStatus.DONE, counts, self.run_id, stored),
        )
        self.ledger.commit()
        self.committed = True


@dataclass
class CoverageTransaction:
    """An input's spans, the chunk ids of the other inputs they replace, and the rows dropped
    of each (filled in by the data side, with what to do once the ledger has committed or
    rolled back)."""

    spans: list[Span]
    replaced: list[int]
    dropped: dict[int, int] = field(default_factory=dict)
    committed: list[Callable[[], None]] = field(default_factory=list)
    rolled_back: list[Callable[[], None]] = field(default_factory=list)
    forgotten: int = 0  # a deletion's: the chunks the ledger no longer records
    unfinished: int = 0  # a deletion's: the chunks left pending, some of their rows gone


class SqlLedger:
    """Bookkeeping and chunk transactions over a DB-API-like connection (DuckDB, psycopg)."""

    location: str
    # False for a reader of a store the previous release made (not migrated): it has no
    # coverage recorded and keeps its symbology in the instruments table.
    coverage_recorded = True
    attempts_recorded = True  # False for a reader of a store without the attempts column

    pending_migrations: list[str] = []  # a read-only opening's: what its next write applies

    def _opened(self, applied: set[int], read_only: bool, steps: Sequence[migrations.Migration]) -> None:
        """What the store's migrations say about reading it: ``steps`` are this release's; a
        reader reports those not applied and applies none."""
        if read_only:
            self.pending_migrations = [str(m) for m in migrations.pending(steps, applied)]
        if read_only and migrations.COVERAGE not in applied:
            self.coverage_recorded = False
        if read_only and migrations.ATTEMPTS not in applied:
            self.attempts_recorded = False

    @property
    def symbology_select(self) -> str:
        """A SELECT of (dataset, stype, symbol, instrument_id, start_ns, end_ns)."""
        return SYMBOLOGY_SELECT if self.coverage_recorded else PREVIOUS_SYMBOLOGY_SELECT

    # The database-specific parts.
    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        raise NotImplementedError

    def execute_many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def fetch(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def lock_schema(self) -> None:
        """Hold, until the transaction ends, the lock under which other processes change this
        database's schema (one embedded file has one writer process: nothing to lock)."""

    def begin(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def reconnect(self) -> None:
        raise NotImplementedError

    # Holding a chunk against other processes. The embedded file has one writer process at a
    # time (DuckDB's file lock), so only a server needs these.
    ROW_LOCK = ""

    def _claim(self, chunk: Chunk, key: int) -> None:
        """Until ``_release``, no other process writes this chunk (waits while one does)."""

    def _release(self, key: int) -> None:
        """Let other processes write the chunk again (or: the run is over)."""

    # A run holds a lock for as long as its process lives, so `status` can tell a run that is
    # going on from one whose process died. A reader of the embedded file knows no writer
    # process is there (DuckDB's file lock would have refused it).
    def _hold_run(self, key: int) -> None:
        """Held until ``_release`` or the end of the process."""

    def _run_alive(self, run_id: str) -> bool:
        return False

    def _chunk_row(
        self,
        chunk: Chunk,
        job: str,
        status: ChunkStatus,
        counts: ChunkCounts | None,
        run_id: str,
        stored: TimeRange | None = None,
        error: str | None = None,
    ) -> tuple[Any, ...]:
        c = counts
        first, last = stored or (None, None)
        return (
            chunk.key, chunk_id(chunk.key), job, chunk.schema, chunk.label, status.value,
            c and c.read, c and c.stored, c and c.quarantined, c and c.seconds,
            first, last, run_id, error, chunk.dataset, chunk.start_ns, chunk.end_ns, chunk.input,
            c and c.attempts,
        )  # fmt: skip

    def is_done(self, chunk: Chunk) -> bool:
        rows = self.fetch(CHUNK_STATE, [chunk.key])
        return bool(rows) and rows[0][0] == ChunkStatus.DONE

    def plan_chunks(self, chunks: Sequence[Chunk], job: str) -> None:
        if chunks:
            self.execute_many(
                INSERT_PENDING,
                [
                    (c.key, chunk_id(c.key), job, c.schema, c.label, c.dataset, c.start_ns, c.end_ns, c.input)
                    for c in chunks
                ],
            )
            self.commit()

    def mark_failed(self, chunk: Chunk, run_id: str, job: str, error: str) -> None:
        self.execute(UPSERT_CHUNK, self._chunk_row(chunk, job, ChunkStatus.FAILED, None, run_id, error=error))
        self.commit()

    def mark_done(self, chunk: Chunk, run_id: str, job: str, counts: ChunkCounts) -> None:
        self.execute(UPSERT_CHUNK, self._chunk_row(chunk, job, ChunkStatus.DONE, counts, run_id))
        self.commit()

    def forget_failures(self, keys: Sequence[str]) -> int:
        where = f" FROM {CHUNKS_TABLE} WHERE chunk_key = ANY(%s) AND status = '{ChunkStatus.FAILED}'"
        (count,) = self.fetch("SELECT count(*)" + where, [list(keys)])[0]
        if count:
            self.execute("DELETE" + where, [list(keys)])
        self.commit()
        return int(count)

    def failed_chunks(self) -> list[tuple[str, str, str, str]]:
        return [
            (str(k), str(j), str(lb), str(e or ""))
            for k, j, lb, e in self.fetch(
                f"SELECT chunk_key, job, label, error FROM {CHUNKS_TABLE}"
                f" WHERE status = '{ChunkStatus.FAILED}' ORDER BY updated_at, chunk_key"
            )
        ]

    def start_run(self, run_id: str, job: str) -> None:
        self.execute(INSERT_RUN, [run_id, job])
        self.commit()
        self._hold_run(run_lock_key(run_id))

    def run_counts(self, run_id: str) -> ChunkCounts:
        # A download's own row sums its parts' rows: only the rows that wrote data count.
        read, stored, quarantined, seconds = self.fetch(
            "SELECT coalesce(sum(records_read), 0), coalesce(sum(stored), 0),"
            f" coalesce(sum(quarantined), 0), coalesce(sum(seconds), 0) FROM {CHUNKS_TABLE}"
            f" WHERE run_id = %s AND status = '{ChunkStatus.DONE}' AND chunk_key NOT IN"
            f" (SELECT input_key FROM {CHUNKS_TABLE} WHERE run_id = %s AND input_key <> chunk_key)",
            [run_id, run_id],
        )[0]
        return ChunkCounts(int(read), int(stored), int(quarantined), float(seconds))

    def finish_run(self, run_id: str, status: RunStatus, counts: ChunkCounts, failed: int) -> None:
        self.execute(
            FINISH_RUN, [status.value, counts.read, counts.stored, counts.quarantined, failed, run_id]
        )
        self.commit()
        self._release(run_lock_key(run_id))

    @contextmanager
    def chunk_transaction(
        self, chunk: Chunk, run_id: str, job: str, force: bool, hold: bool = True
    ) -> Iterator[ChunkTransaction]:
        """Claim the chunk, mark it running, then yield its transaction, which holds its
        ledger row and has dropped its earlier quarantined records: from the start with
        ``hold`` (the rows go into this database, inside it), else from ``tx.open()`` as the
        rows are handed over (a data side of its own: the session is not left idle in a
        transaction while the rows are written elsewhere).

        The claim spares a second writer the work; the row lock makes a second copy impossible
        even without it: a writer that got this far waits for the first to commit, then reads
        the range the first stored, which its data side deletes before writing its own.
        """
        tx = ChunkTransaction(self, chunk, run_id, job, force)
        self._claim(chunk, tx.id)
        try:
            if not force and self.is_done(chunk):
                raise ChunkAlreadyStored(chunk.label)
            # An input written again is not whole until it is completed again: other inputs'
            # completions leave its rows alone meanwhile (they would replace rows it is about
            # to replace itself, then lose the overlap to its own completion).
            with self._coverage_lock(chunk.coverage.dataset or chunk.dataset, chunk.schema):
                self.execute(UPSERT_CHUNK, self._chunk_row(chunk, job, ChunkStatus.RUNNING, None, run_id))
                self.execute(f"DELETE FROM {COVERAGE_TABLE} WHERE input_key = %s", [chunk.input])
                self.commit()
            try:
                if hold:
                    tx.open()
                yield tx
            finally:
                if not tx.committed:
                    self.rollback()
        finally:
            self._release(tx.id)

    def quarantined(self, query: QuarantineQuery) -> list[QuarantinedRecord]:
        clause, params = _quarantine_filter(query)
        rows = self.fetch(
            "SELECT run_id, chunk_key, schema, stage, rule, message, record, quarantined_at"
            f" FROM {QUARANTINE_TABLE}{clause} ORDER BY quarantined_at, chunk_key, rule, record LIMIT %s",
            [*params, query.limit],
        )
        return [QuarantinedRecord(*row) for row in rows]

    def quarantine_count(self, query: QuarantineQuery) -> int:
        clause, params = _quarantine_filter(query)
        return int(self.fetch(f"SELECT count(*) FROM {QUARANTINE_TABLE}{clause}", params)[0][0])

    def quarantine_rules(self) -> list[str]:
        return [str(r) for (r,) in self.fetch(f"SELECT DISTINCT rule FROM {QUARANTINE_TABLE} ORDER BY 1")]

    def run_chunks(self, run_id: str) -> list[dict[str, object]]:
        # A reader of a store no release since migrations.ATTEMPTS wrote has no attempts column.
        fields = [f if f != "attempts" or self.attempts_recorded else "NULL" for f in RUN_CHUNK_FIELDS]
        rows = self.fetch(
            f"SELECT {', '.join(fields)} FROM {CHUNKS_TABLE} WHERE run_id = %s ORDER BY updated_at, label",
            [run_id],
        )
        return [dict(zip(RUN_CHUNK_FIELDS, r, strict=True)) for r in rows]

    def runs(self, limit: int, run_id: str | None = None) -> list[dict[str, object]]:
        where, params = ("", []) if run_id is None else (" WHERE run_id = %s", [run_id])
        runs = [
            dict(zip(RUN_FIELDS, r, strict=True))
            for r in self.fetch(f"{RUNS_SELECT}{where} ORDER BY started_at DESC LIMIT %s", [*params, limit])
        ]
        for run in runs:
            if run["status"] == RunStatus.RUNNING and not self._run_alive(str(run["run_id"])):
                run["status"] = RunStatus.INTERRUPTED.value
        return runs

    def chunk_ranges(self, schema: str) -> list[tuple[str, int, int, ChunkStatus]]:
        return [
            (str(dataset or ""), int(start), int(end), ChunkStatus(status))
            for dataset, start, end, status in self.fetch(
                # A chunk a deletion left pending ran: its days are done; what was deleted
                # from them is told by the coverage withdrawn (``covered``).
                f"SELECT dataset, start_ns, end_ns, CASE WHEN error = %s THEN '{ChunkStatus.DONE}'"
                f" ELSE status END FROM {CHUNKS_TABLE} WHERE schema = %s"
                " AND start_ns IS NOT NULL AND end_ns IS NOT NULL ORDER BY updated_at, chunk_key",
                [PARTLY_DELETED, schema],
            )
        ]

    def record_symbology(self, symbology: Sequence[SymbolInterval]) -> None:
        self._record_symbology(symbology)
        self.commit()

    def _record_symbology(self, symbology: Sequence[SymbolInterval]) -> None:
        self.execute_many(
            UPSERT_SYMBOL,
            [(i.dataset, i.stype, i.symbol, i.instrument_id, i.start_ns, i.end_ns) for i in symbology],
        )

    def expected_rows(self, schemas: Sequence[str]) -> dict[int, tuple[str, int]]:
        # A chunk stored as parts wrote its rows under the parts' ids: its own row has no range.
        rows = self.fetch(
            f"SELECT chunk_id, label, coalesce(stored, 0) - coalesce(replaced, 0) FROM {CHUNKS_TABLE}"
            f" WHERE status = '{ChunkStatus.DONE}' AND first_ns IS NOT NULL AND schema = ANY(%s)",
            [list(schemas)],
        )
        return {int(i): (str(label), int(n)) for i, label, n in rows}

    def mark_damaged(self, damaged: Mapping[int, str]) -> None:
        if not damaged:
            return
        ids = sorted(damaged)
        inputs = f"SELECT input_key FROM {CHUNKS_TABLE} WHERE chunk_id = ANY(%s)"
        self.begin()
        try:
            self.execute_many(
                f"UPDATE {CHUNKS_TABLE} SET status = '{ChunkStatus.FAILED}', error = %s, updated_at = now()"
                " WHERE chunk_id = %s",
                [(f"damaged (verify): {damaged[i]}", i) for i in ids],
            )
            # The chunk a download's parts make up is not done either (a re-run would skip it).
            self.execute(
                f"UPDATE {CHUNKS_TABLE} SET status = '{ChunkStatus.FAILED}', updated_at = now(),"
                f" error = 'damaged (verify): a part of it' WHERE chunk_key IN ({inputs})"
                f" AND status = '{ChunkStatus.DONE}'",
                [ids],
            )
            self.execute(f"DELETE FROM {COVERAGE_TABLE} WHERE input_key IN ({inputs})", [ids])
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def covered(self, dataset: str, schema: str, start_ns: int, end_ns: int) -> list[Span]:
        if not self.coverage_recorded:
            return []
        return [
            (None if i is None else int(i), int(s), int(e))
            for i, s, e in self.fetch(
                f"SELECT instrument_id, start_ns, end_ns FROM {COVERAGE_TABLE} WHERE complete"
                " AND dataset = %s AND schema = %s AND start_ns < %s AND end_ns > %s",
                [dataset, schema, end_ns, start_ns],
            )
        ]

    def _coverage_of(self, chunk: Chunk) -> list[Span]:
        """An input's spans: what its coverage guarantees, else its own rows' time range."""
        if chunk.coverage.complete:
            return list(chunk.coverage.spans)
        first, last = self.fetch(
            f"SELECT min(first_ns), max(last_ns) FROM {CHUNKS_TABLE} WHERE input_key = %s", [chunk.input]
        )[0]
        return [] if first is None else [(None, int(first), int(last) + 1)]

    def _meeting(self, chunk: Chunk, spans: Sequence[Span]) -> list[tuple[str, Span, bool]]:
        """Other inputs' recorded coverage that meets ``spans``: (input, span, complete).
        Inputs still being stored have none yet (they replace these once they are whole)."""
        if not spans:
            return []
        low, high = min(s for _, s, _ in spans), max(e for _, _, e in spans)
        mine: dict[int | None, list[tuple[int, int]]] = {}
        for instrument, start, end in spans:
            mine.setdefault(instrument, []).append((start, end))
        every = [w for v in mine.values() for w in v]

        def meets(instrument: int | None, start: int, end: int) -> bool:
            wanted = every if instrument is None else mine.get(instrument, []) + mine.get(None, [])
            return any(s < end and start < e for s, e in wanted)

        rows = self.fetch(
            f"SELECT input_key, instrument_id, start_ns, end_ns, complete FROM {COVERAGE_TABLE}"
            " WHERE dataset = %s AND schema = %s AND start_ns < %s AND end_ns > %s AND input_key <> %s",
            [chunk.coverage.dataset or chunk.dataset, chunk.schema, high, low, chunk.input],
        )
        found = []
        for key, instrument, start, end, complete in rows:
            span = (None if instrument is None else int(instrument), int(start), int(end))
            if meets(*span):
                found.append((str(key), span, bool(complete)))
        return found

    def _chunk_ids(self, inputs: Sequence[str]) -> list[int]:
        """The chunks of these inputs that hold rows."""
        if not inputs:
            return []
        return [
            int(i)
            for (i,) in self.fetch(
                f"SELECT chunk_id FROM {CHUNKS_TABLE} WHERE input_key = ANY(%s) AND first_ns IS NOT NULL",
                [sorted(set(inputs))],
            )
        ]

    def _replacement(self, chunk: Chunk, spans: Sequence[Span]) -> tuple[list[Span], list[int]]:
        """What completing the input drops: a complete input, the rows other inputs stored in
        its spans; an input of its own records only (a live recording, a file cut by a
        limit), its own rows inside other inputs' complete coverage (the historical copy is
        the whole one). (spans, chunk ids)."""
        meeting = self._meeting(chunk, spans)
        if chunk.coverage.complete:
            return list(spans), self._chunk_ids([key for key, _, _ in meeting])
        theirs = [span for _, span, complete in meeting if complete]
        return theirs, self._chunk_ids([chunk.input]) if theirs else []

    def is_complete(self, chunk: Chunk) -> bool:
        rows = self.fetch(f"SELECT 1 FROM {COVERAGE_TABLE} WHERE input_key = %s LIMIT 1", [chunk.input])
        return bool(rows)

    @contextmanager
    def _coverage_lock(self, dataset: str, schema: str) -> Iterator[None]:
        """Held around a transaction that reads or changes which inputs of the dataset's
        schema are whole, until it has ended: across processes for a server, across the
        writer threads of the one process an embedded file has."""
        yield

    @contextmanager
    def _replacing(
        self,
        dataset: str,
        schema: str,
        begin: Callable[[], CoverageTransaction],
        end: Callable[[CoverageTransaction], None],
    ) -> Iterator[CoverageTransaction]:
        """One transaction under the coverage lock of the dataset's schema: ``begin`` makes the
        transaction's spans and the chunks they replace, the caller drops their rows, the
        rows dropped are counted out of their chunks (``replaced``), ``end`` records the rest.
        The data side's undo steps run if it fails, its clean-up once the ledger committed."""
        with self._coverage_lock(dataset, schema):
            self.begin()
            try:
                tx = begin()
                try:
                    yield tx
                except BaseException:
                    for undo in tx.rolled_back:
                        undo()
                    raise
                self.execute_many(
                    f"UPDATE {CHUNKS_TABLE} SET replaced = coalesce(replaced, 0) + %s WHERE chunk_id = %s",
                    [(rows, owner) for owner, rows in tx.dropped.items()],
                )
                end(tx)
                self.commit()
            except BaseException:
                self.rollback()
                raise
        for done in tx.committed:
            done()

    def coverage_transaction(self, chunk: Chunk) -> AbstractContextManager[CoverageTransaction]:
        """The input's coverage replaces what other inputs stored there and is recorded, in
        one transaction under the coverage lock: the caller drops ``tx.replaced``'s rows in
        ``tx.spans`` inside it."""
        dataset = chunk.coverage.dataset or chunk.dataset
        spans: list[Span] = []  # the input's own, recorded; the transaction's are what it drops

        def begin() -> CoverageTransaction:
            spans.extend(self._coverage_of(chunk))
            return CoverageTransaction(*self._replacement(chunk, spans))

        def end(tx: CoverageTransaction) -> None:
            self.execute(f"DELETE FROM {COVERAGE_TABLE} WHERE input_key = %s", [chunk.input])
            self.execute_many(
                INSERT_COVERAGE,
                [(chunk.input, dataset, chunk.schema, i, s, e, chunk.coverage.complete) for i, s, e in spans],
            )
            self._record_symbology(chunk.coverage.symbology)

        return self._replacing(dataset, chunk.schema, begin, end)

    def deletion_transaction(self, deletion: Deletion) -> AbstractContextManager[CoverageTransaction]:
        """The rows of ``deletion`` go, with the ledger's record of them, in one transaction
        under the coverage lock: the caller drops ``tx.replaced``'s rows in ``tx.spans``
        inside it. Chunks requested inside the deletion's days that hold no row after it (all
        of them when every symbol goes) are forgotten, with their quarantined records, so
        coverage shows those days as never requested and a run of the same inputs stores them
        again; a chunk that lost some rows is left pending (a run of its input stores it whole
        again). The coverage recorded for the deleted instruments (every one's, when a span
        covers every instrument) over those days is withdrawn, so an API run requests them
        again."""
        start, stop = deletion.start_ns, deletion.end_ns
        chunks: list[tuple[Any, ...]] = []

        def begin() -> CoverageTransaction:
            chunks.extend(
                self.fetch(
                    f"SELECT chunk_id, chunk_key, coalesce(input_key, chunk_key), start_ns, end_ns,"
                    f" first_ns, last_ns, coalesce(stored, 0) - coalesce(replaced, 0) FROM {CHUNKS_TABLE}"
                    " WHERE schema = %s AND coalesce(dataset, '') = %s",
                    [deletion.schema, deletion.dataset],
                )
            )
            replaced = [
                int(i) for i, _, _, _, _, first, last, _ in chunks
                if first is not None and first < stop and last >= start
            ]  # fmt: skip
            return CoverageTransaction(list(deletion.spans), replaced)

        def end(tx: CoverageTransaction) -> None:
            held: dict[str, int] = {}  # rows each input still holds, its parts' included
            for owner, key, input_key, *_, rows in chunks:
                left = int(rows) - tx.dropped.get(int(owner), 0)
                held[str(input_key)] = held.get(str(input_key), 0) + left
                if input_key != key:
                    held[str(key)] = held.get(str(key), 0)
            inside = [
                (int(owner), str(key), str(input_key))
                for owner, key, input_key, first, last, *_ in chunks
                if first is not None and last is not None and first >= start and last <= stop
            ]
            forgotten = [
                owner for owner, key, input_key in inside
                if deletion.every_symbol or held.get(input_key, 0) <= 0 and held.get(key, 0) <= 0
            ]  # fmt: skip
            tx.forgotten = len(forgotten)
            self.execute(f"DELETE FROM {QUARANTINE_TABLE} WHERE chunk_id = ANY(%s)", [forgotten])
            self.execute(f"DELETE FROM {CHUNKS_TABLE} WHERE chunk_id = ANY(%s)", [forgotten])
            # A chunk that lost some rows is no longer whole: pending, so the next run of its
            # input stores it whole again (an API plan requests the deleted instruments' days
            # anew: their coverage is gone). Its days read as done (``chunk_ranges``).
            partly = [i for i, n in tx.dropped.items() if n and i not in set(forgotten)]
            tx.unfinished = len(partly)
            inputs = f"SELECT input_key FROM {CHUNKS_TABLE} WHERE chunk_id = ANY(%s)"
            self.execute(
                f"UPDATE {CHUNKS_TABLE} SET status = '{ChunkStatus.PENDING}', updated_at = now(),"
                f" error = %s WHERE (chunk_id = ANY(%s) OR chunk_key IN ({inputs}))"
                f" AND status = '{ChunkStatus.DONE}'",
                [PARTLY_DELETED, partly, partly],
            )
            self._withdraw_coverage(deletion)

        return self._replacing(deletion.dataset, deletion.schema, begin, end)

    def _withdraw_coverage(self, deletion: Deletion) -> None:
        """Cut the deletion's days out of the coverage recorded for its instruments."""
        if not self.coverage_recorded:
            return
        start, end = deletion.start_ns, deletion.end_ns
        instruments = {i for i, _, _ in deletion.spans}
        rows = self.fetch(
            f"SELECT input_key, instrument_id, start_ns, end_ns, complete FROM {COVERAGE_TABLE}"
            " WHERE dataset = %s AND schema = %s AND start_ns < %s AND end_ns > %s",
            [deletion.dataset, deletion.schema, end, start],
        )
        cut = [
            r
            for r in rows
            if deletion.every_symbol or r[1] is None or None in instruments or r[1] in instruments
        ]
        for input_key, instrument, first, stop, complete in cut:
            keep = " AND instrument_id IS NULL" if instrument is None else " AND instrument_id = %s"
            self.execute(
                f"DELETE FROM {COVERAGE_TABLE} WHERE input_key = %s AND dataset = %s AND schema = %s"
                f" AND start_ns = %s AND end_ns = %s{keep}",
                [input_key, deletion.dataset, deletion.schema, first, stop]
                + ([] if instrument is None else [instrument]),
            )
            pieces = [(first, min(stop, start)), (max(first, end), stop)]
            self.execute_many(
                INSERT_COVERAGE,
                [
                    (input_key, deletion.dataset, deletion.schema, instrument, a, b, complete)
                    for a, b in pieces
                    if a < b
                ],
            )

    def stored_through(self, job: str) -> dt.date | None:
        done: set[dt.date] = set()
        unfinished: set[dt.date] = set()
        for start, end, status in self.fetch(
            f"SELECT start_ns, end_ns, status FROM {CHUNKS_TABLE}"
            " WHERE job = %s AND start_ns IS NOT NULL AND end_ns IS NOT NULL",
            [job],
        ):
            days = days_touched(int(start), int(end))
            (done if status == ChunkStatus.DONE else unfinished).update(days)
        full = done - unfinished
        return max(full) if full else None

    def report(self, status: StoreStatus) -> None:
        alive: dict[str, bool] = {}

        def gone(run_id: object) -> bool:
            """Its process is gone: killed, or the machine stopped."""
            key = str(run_id)
            if key not in alive:
                alive[key] = self._run_alive(key)
            return not alive[key]

        counts: Counter[tuple[str, str]] = Counter()
        for job, state, run_id, count in self.fetch(CHUNK_COUNTS):
            if state == ChunkStatus.RUNNING and gone(run_id):  # the next run takes it
                state = ChunkStatus.INTERRUPTED
            counts[str(job), str(state)] += int(count)
        status.chunks = [(job, state, n) for (job, state), n in sorted(counts.items())]
        status.failed = [(str(j), str(lb), str(e)) for j, lb, e in self.fetch(FAILED_CHUNKS)]
        status.runs = self.runs(LAST_RUNS)
        status.pending_migrations = list(self.pending_migrations)


class SqlStore(SqlLedger):
    """A SQL database holding both the tables and their ledger: a chunk's rows are written in
    the ledger's transaction, so they exist exactly when its progress row says ``done``."""

    mode: str
    model: Model
    capabilities: Capabilities

    def _ns(self, column: str) -> str:
        """Expression for a timestamp column in nanoseconds since the epoch."""
        raise NotImplementedError

    def _time_ns(self, family: Family) -> str:
        """Expression for a family's index time in nanoseconds since the epoch."""
        return self._ns(family.time_column)

    def _sink(self, family: Family, chunk_id: int) -> ChunkSink:
        raise NotImplementedError

    def check_model(self, relations: set[str]) -> None:
        """The tables there (of ``relations``) must have the columns the transformation file
        declares, name for name; a table not there yet is made from the file. Read before any
        DDL: a changed transformation file against an existing database would otherwise fail
        mid-load or store columns under the wrong names. ``catalog.check`` compares what the
        columns mean."""
        found: dict[str, list[str]] = {}
        for table, column in self.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        ):
            found.setdefault(str(table), []).append(str(column))
        for family in self.model.families.values():
            expected = [*family.column_names, "chunk_id"]
            if family.table in relations and found.get(family.table) != expected:
                have = ", ".join(found.get(family.table, [])) or "no columns"
                raise StoreRejected(
                    f"table {family.table} in {self.location} does not match the transformation file"
                    f" (found: {have}; declared: {', '.join(expected)}): nothing was changed; use a new"
                    " database or migrate the table"
                )

    def inspect_catalog(self) -> tuple[set[str], list[Family]]:
        """What the database holds, checked before anything in it changes (``catalog``): its
        relations, and the families whose definitions are not recorded yet."""
        relations = {
            str(name)
            for (name,) in self.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            )
        }
        catalog.refuse_foreign(self.location, relations, self.model)
        pending = catalog.check(self.location, self.model, recorded_definitions(self, relations))
        self.check_model(relations)
        return relations, pending

    def open_chunk(self, family: Family, chunk_id: int, earlier: TimeRange | None) -> ChunkSink:
        if earlier is not None:
            # Bounded by the stored time range so TimescaleDB and BRIN can skip the rest.
            self.execute(
                f"DELETE FROM {identifier(family.table)} WHERE chunk_id = %s"
                f" AND {self._time_ns(family)} BETWEEN %s AND %s",
                [chunk_id, *earlier],
            )
        return self._sink(family, chunk_id)

    def verify(self, family: Family, expected: Mapping[int, int], repair: bool) -> dict[int, str]:
        """Rows per chunk id against the ledger (rows a chunk no longer holds show on a read;
        rows of no chunk the ledger has done are left alone: a failed later attempt keeps its
        earlier rows until the chunk is stored again)."""
        table = identifier(family.table)
        held = {int(c): int(n) for c, n in self.fetch(f"SELECT chunk_id, count(*) FROM {table} GROUP BY 1")}
        return {
            chunk: f"{held.get(chunk, 0):,} rows in {family.table}, the ledger says {rows:,}"
            for chunk, rows in expected.items()
            if held.get(chunk, 0) != rows
        }

    def drop_covered(self, family: Family, schema: str, tx: ReplacingTransaction) -> None:
        """Rows of ``tx.replaced``'s chunks inside ``tx.spans``, counted per chunk and deleted,
        in the ledger's open transaction."""
        clause, params = covered_rows(family, schema, tx, self._time_ns(family))
        table = identifier(family.table)
        # Counted, then deleted: one DELETE ... RETURNING counted in a CTE reads each row again
        # through TimescaleDB's hypertable, several times slower (README, "Measurements behind the code").
        counts = self.fetch(f"SELECT chunk_id, count(*) FROM {table}{clause} GROUP BY chunk_id", params)
        if counts:
            self.execute(f"DELETE FROM {table}{clause}", params)
        tx.dropped = {int(owner): int(rows) for owner, rows in counts}

    def day_counts(self, query: ExportQuery) -> list[tuple[str | None, int, int]]:
        time_ns = self._time_ns(query.family)
        clause, params = filters(query, time_ns)
        day = f"CAST(({time_ns} - {time_ns} %% {NS_PER_DAY}) / {NS_PER_DAY} AS BIGINT)"
        rows = self.fetch(
            f"SELECT symbol, {day} AS day, count(*) FROM {identifier(query.family.table)}{clause}"
            " GROUP BY 1, 2",
            params,
        )
        return [(None if s is None else str(s), int(d), int(n)) for s, d, n in rows]

    def symbol_ranges(self, symbols: Sequence[str]) -> dict[str, list[tuple[int, int, int]]]:
        statement = (
            f"SELECT symbol, instrument_id, start_ns, end_ns FROM ({self.symbology_select}) s"
            " WHERE symbol = ANY(%s)"
        )
        definitions = next((f for f in self.model.families.values() if "definition" in f.schemas), None)
        params: list[Any] = [list(symbols)]
        if definitions is not None and {"raw_symbol", "activation", "expiration"} <= set(
            definitions.column_names
        ):
            # A definition names its contract from activation (else when it was received) to
            # expiration (else for good).
            since = f"coalesce({self._ns('activation')}, {self._ns(definitions.time_column)})"
            until = f"coalesce({self._ns('expiration')}, {2**63 - 1})"
            statement += (
                f" UNION SELECT raw_symbol, instrument_id, min({since}), max({until})"
                f" FROM {identifier(definitions.table)} WHERE raw_symbol = ANY(%s)"
                " GROUP BY raw_symbol, instrument_id"
            )
            params.append(list(symbols))
        found: dict[str, set[tuple[int, int, int]]] = {}
        for symbol, i, s, e in self.fetch(statement, params):
            found.setdefault(str(symbol), set()).add((int(i), int(s), int(e)))
        return {symbol: sorted(ranges) for symbol, ranges in found.items()}

    def table_status(self, family: Family) -> TableStatus:
        time_ns = self._time_ns(family)
        rows, first, last = self.fetch(
            f"SELECT count(*), min({time_ns}), max({time_ns}) FROM {identifier(family.table)}"
        )[0]
        return TableStatus(family.table, family.time_column, int(rows), first, last)
