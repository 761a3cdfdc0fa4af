"""A store is a data side (the tables) and a ledger (chunk and run bookkeeping, quarantine).

The SQL stores are both in one database, so a chunk's rows and its done mark commit in one
transaction; another data side (files, memory) pairs with a SQL ledger and declares what it
guarantees in its ``Capabilities``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from marketpipe.errors import UsageError
from marketpipe.model import Family, Model
from marketpipe.types import (
    Chunk,
    ChunkCounts,
    ChunkStatus,
    Rejection,
    RunStatus,
    Span,
    SymbolInterval,
)

CHUNKS_TABLE = "marketpipe_chunks"
RUNS_TABLE = "marketpipe_runs"
QUARANTINE_TABLE = "marketpipe_quarantine"
MIGRATIONS_TABLE = "marketpipe_migrations"
INSTRUMENTS_TABLE = "marketpipe_instruments"  # the previous release's symbology
SYMBOLOGY_TABLE = "marketpipe_symbology"
COVERAGE_TABLE = "marketpipe_coverage"


TimeRange = tuple[int, int]  # first and last index timestamp, nanoseconds since the epoch


def instrument_ranges(data: DataStore, symbols: Sequence[str]) -> list[tuple[int, int, int]]:
    """The instruments any of ``symbols`` stood for, and when (``DataStore.symbol_ranges``)."""
    if not symbols:
        return []
    return sorted({r for ranges in data.symbol_ranges(symbols).values() for r in ranges})


def chunk_id(chunk_key: str) -> int:
    """A signed 64-bit id for a chunk key, stored on every row the chunk wrote."""
    digest = hashlib.blake2b(chunk_key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass(frozen=True)
class ExportQuery:
    """What to read back; times as nanoseconds since the epoch, ``end_ns`` exclusive."""

    family: Family
    schema: str
    symbols: Sequence[str] = ()
    start_ns: int | None = None
    end_ns: int | None = None
    # Rows of these instruments within [start, end) match too: the contracts a symbol names
    # (``symbol_ranges``), whatever symbol the rows were stored under.
    instruments: Sequence[tuple[int, int, int]] = ()


@dataclass(frozen=True)
class QuarantineQuery:
    run_id: str | None = None
    schema: str | None = None
    rule: str | None = None
    limit: int = 50


@dataclass(frozen=True)
class QuarantinedRecord:
    run_id: str
    chunk_key: str
    schema: str
    stage: str
    rule: str
    message: str
    record: str  # every raw DBN field as JSON
    quarantined_at: object


@dataclass
class TableStatus:
    table: str
    time_column: str
    rows: int
    first_ns: int | None
    last_ns: int | None


# A run as status reports it, in the order of the ledger's query.
RUN_FIELDS = (
    "run_id",
    "job",
    "started_at",
    "finished_at",
    "status",
    "read",
    "stored",
    "quarantined",
    "failed",
)


@dataclass
class StoreStatus:
    location: str
    mode: str
    tables: list[TableStatus] = field(default_factory=list)
    chunks: list[tuple[str, str, int]] = field(default_factory=list)  # (job, status, count)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (job, label, error)
    runs: list[dict[str, object]] = field(default_factory=list)
    pending_migrations: list[str] = field(default_factory=list)  # the next write applies them


@dataclass
class Verification:
    """``verify``'s finding: the chunks checked, the damaged ones (chunk id, label, reason)."""

    location: str
    chunks: int = 0
    damaged: list[tuple[int, str, str]] = field(default_factory=list)
    repaired: bool = False


class LedgerDatabase(Protocol):
    """The database a SQL ledger keeps its tables in, as the ledger, the migration runner and
    a data side that lists its own files in the ledger (the lake) use it. Statements take
    psycopg's ``%s`` parameters (a DuckDB ledger translates them)."""

    location: str

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None: ...

    def execute_many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def fetch(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def lock_schema(self) -> None:
        """Hold, until the transaction ends, the lock under which processes change the
        schema (a server's; one embedded file has one writer process: nothing to lock)."""
        ...


@runtime_checkable
class Querying(Protocol):
    """A data side that runs the user's own read-only SQL (``marketpipe query``)."""

    def query(self, statement: str, batch_size: int, memory_limit: str | None = None) -> pa.RecordBatchReader:
        """The rows of one statement that returns rows, read from the store and nothing else;
        a statement that fails, or would change or read anything else, is a UsageError.
        ``memory_limit``: an embedded engine's cap for it (None: the engine's own default)."""
        ...


@dataclass(frozen=True)
class Capabilities:
    """What a data side guarantees, so the ledger and the orchestrator need not guess."""

    # The chunk's rows commit in the ledger's transaction with its done mark (same database).
    # Otherwise the rows are published first and the done mark follows: a stop in between
    # leaves rows the ledger calls unfinished, and the next write of the chunk replaces them.
    atomic_chunks: bool
    # Several processes may write chunks at the same time (a server); else one at a time.
    concurrent_writers: bool
    # Several threads of one process may write chunks at the same time, each through
    # ``another()`` (a connection of its own).
    threaded_writers: bool
    # The rows go into the ledger's own database, in its transaction: the ledger's transaction
    # begins as the chunk opens (a SQL store). Otherwise it begins as the chunk commits.
    in_ledger_transaction: bool = False


class ChunkSink(Protocol):
    """Where one chunk's rows go on the data side."""

    def write(self, table: pa.Table) -> None: ...

    def commit(self) -> None:
        """Every row is handed over; a non-atomic store publishes them here."""
        ...

    def published(self) -> None:
        """The ledger has committed the chunk: drop what its rows replaced, if anything is left."""
        ...

    def close(self) -> None:
        """End of the chunk: rows not committed are dropped."""
        ...


@runtime_checkable
class Connected(Protocol):
    """A store that takes writer threads: each connects anew."""

    def another(self) -> Store:
        """The same store (and ledger) through a connection of its own."""
        ...


class DataStore(Protocol):
    """The tables: write a chunk's rows, read them back, count them."""

    location: str
    mode: str
    model: Model
    capabilities: Capabilities

    def open_chunk(self, family: Family, chunk_id: int, earlier: TimeRange | None) -> ChunkSink:
        """A sink that replaces the rows an earlier write of the chunk stored (``earlier``:
        their index-time range, where the ledger knows it)."""
        ...

    def export(self, query: ExportQuery, batch_size: int) -> Iterator[pa.RecordBatch]: ...

    def table_status(self, family: Family) -> TableStatus: ...

    def day_counts(self, query: ExportQuery) -> list[tuple[str | None, int, int]]:
        """(symbol, UTC day as days since the epoch, rows) of the rows ``query`` selects."""
        ...

    def symbol_ranges(self, symbols: Sequence[str]) -> dict[str, list[tuple[int, int, int]]]:
        """Per symbol, (instrument_id, start, end in ns) of the instruments it (of any
        symbology type) stood for, from the ledger's symbology and the stored definitions; a
        symbol the store knows nothing of is absent. One query for any number of symbols."""
        ...

    def verify(self, family: Family, expected: Mapping[int, int], repair: bool) -> dict[int, str]:
        """What is wrong with the rows the data side holds of each chunk of ``expected``
        (chunk id -> rows the ledger says it holds): chunk id -> reason. With ``repair``, what
        would fail every read (a lake's missing file) is taken out of the store's listing."""
        ...

    def drop_covered(self, family: Family, schema: str, tx: ReplacingTransaction) -> None:
        """Delete the rows of ``tx.replaced``'s chunks inside ``tx.spans`` in the ledger's
        transaction, and count them per chunk in ``tx.dropped``."""
        ...

    def close(self) -> None: ...

    def reconnect(self) -> None:
        """Drop a connection a transient fault broke and open a new one."""
        ...


class LedgerTransaction(Protocol):
    """A chunk being written, as the ledger holds it until ``finish``."""

    id: int
    earlier: TimeRange | None

    def open(self) -> None:
        """The transaction begins (where it did not as the chunk opened)."""
        ...

    def quarantine(self, rejections: Sequence[Rejection]) -> None: ...

    def finish(self, counts: ChunkCounts, stored: TimeRange | None) -> None:
        """Quarantined records and the done mark, committed together."""
        ...


class ReplacingTransaction(Protocol):
    """An input being marked whole (or a deletion): its spans, the chunks of other inputs they
    replace, the rows dropped of each, and what to do once the ledger has committed or rolled
    back."""

    spans: list[Span]
    replaced: list[int]
    dropped: dict[int, int]
    committed: list[Callable[[], None]]
    rolled_back: list[Callable[[], None]]
    forgotten: int  # a deletion's: the chunks the ledger no longer records
    unfinished: int  # a deletion's: the chunks left pending, some of their rows gone


@dataclass(frozen=True)
class Deletion:
    """Rows to delete: a dataset's schema in [start_ns, end_ns), of the instruments of
    ``spans`` (each clipped to that range; one span of no instrument: every one)."""

    dataset: str
    schema: str
    spans: Sequence[Span]
    start_ns: int
    end_ns: int

    @property
    def every_symbol(self) -> bool:
        return any(instrument is None for instrument, _, _ in self.spans)


class Ledger(Protocol):
    """Chunk and run bookkeeping, quarantine and reports."""

    def is_done(self, chunk: Chunk) -> bool: ...

    def plan_chunks(self, chunks: Sequence[Chunk], job: str) -> None:
        """Record planned chunks as pending (chunks already known keep their state)."""
        ...

    def deletion_transaction(self, deletion: Deletion) -> AbstractContextManager[ReplacingTransaction]:
        """One transaction under the coverage lock in which the caller drops the rows of
        ``tx.replaced`` inside ``tx.spans``; the ledger then forgets what no longer holds rows
        and withdraws the deleted coverage (``SqlLedger.deletion_transaction``)."""
        ...

    def chunk_transaction(
        self, chunk: Chunk, run_id: str, job: str, force: bool, hold: bool = True
    ) -> AbstractContextManager[LedgerTransaction]:
        """One writer at a time per chunk, across processes: a run that finds the chunk stored
        by another once it has it raises ChunkAlreadyStored (unless ``force``). ``hold``: the
        transaction begins at once (rows written into the ledger's database), else at
        ``open``."""
        ...

    def mark_failed(self, chunk: Chunk, run_id: str, job: str, error: str) -> None: ...

    def mark_done(self, chunk: Chunk, run_id: str, job: str, counts: ChunkCounts) -> None:
        """A chunk stored as parts, each in its own transaction: all of them are done."""
        ...

    def forget_failures(self, keys: Sequence[str]) -> int:
        """Drop the failed progress rows of these chunk keys (a later run made them obsolete,
        or their inputs are gone); how many there were."""
        ...

    def failed_chunks(self) -> list[tuple[str, str, str, str]]:
        """Every failed chunk, oldest first: (chunk key, job, label, error)."""
        ...

    def start_run(self, run_id: str, job: str) -> None: ...

    def run_counts(self, run_id: str) -> ChunkCounts:
        """What the chunks ``run_id`` finished stored, as the ledger has them: the truth where
        a run was stopped between a chunk's commit and the run's own count of it."""
        ...

    def finish_run(self, run_id: str, status: RunStatus, counts: ChunkCounts, failed: int) -> None: ...

    def quarantined(self, query: QuarantineQuery) -> list[QuarantinedRecord]:
        """Quarantined records, oldest first."""
        ...

    def quarantine_count(self, query: QuarantineQuery) -> int:
        """How many quarantined records ``query`` selects, its limit aside."""
        ...

    def quarantine_rules(self) -> list[str]:
        """The rules the quarantined records name."""
        ...

    def run_chunks(self, run_id: str) -> list[dict[str, object]]:
        """The chunks whose latest run is ``run_id`` (a chunk a later run redid is that run's),
        oldest first: label, schema, status, counts, seconds, when it ended and its error."""
        ...

    def runs(self, limit: int, run_id: str | None = None) -> list[dict[str, object]]:
        """The last ``limit`` runs (or the one ``run_id``), latest first, as ``RUN_FIELDS``; a
        run whose process is gone says interrupted."""
        ...

    def stored_through(self, job: str) -> dt.date | None:
        """The last UTC day every chunk of ``job`` covering it is done, if any."""
        ...

    def chunk_ranges(self, schema: str) -> list[tuple[str, int, int, ChunkStatus]]:
        """(dataset, requested start, end in ns, state) of the schema's chunks, least recently
        updated first: where chunks overlap, the later word on a day is the one that holds."""
        ...

    def record_symbology(self, symbology: Sequence[SymbolInterval]) -> None:
        """Remember what symbols stood for, and when."""
        ...

    def expected_rows(self, schemas: Sequence[str]) -> dict[int, tuple[str, int]]:
        """Done chunks of these schemas that wrote rows: chunk id -> (label, rows it still
        holds: what it stored less what later inputs replaced)."""
        ...

    def mark_damaged(self, damaged: Mapping[int, str]) -> None:
        """These chunks (chunk id -> reason) failed verification: failed, with the reason,
        and their input no longer whole, so the next run of it stores them again."""
        ...

    def covered(self, dataset: str, schema: str, start_ns: int, end_ns: int) -> list[Span]:
        """The spans of whole inputs that meet [start, end): what is stored for good."""
        ...

    def is_complete(self, chunk: Chunk) -> bool:
        """The chunk's input is whole and its coverage recorded."""
        ...

    def coverage_transaction(self, chunk: Chunk) -> AbstractContextManager[ReplacingTransaction]:
        """Mark the chunk's input whole: its coverage (or, for an input that is not complete,
        the time its rows span) is recorded with its symbology, and replaces the rows other
        whole inputs stored in its spans, in one transaction."""
        ...

    def report(self, status: StoreStatus) -> None:
        """Fill in chunks, failures and last runs."""
        ...

    def close(self) -> None: ...

    def reconnect(self) -> None: ...


class ChunkWriter:
    """A chunk's rows to the data side; its rejections, range and done mark to the ledger."""

    def __init__(self, family: Family, sink: ChunkSink, tx: LedgerTransaction) -> None:
        self._time_column = family.time_column
        self._sink = sink
        self._tx = tx
        self._range: TimeRange | None = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            times = table[self._time_column].cast(pa.int64()).to_numpy()  # never NULL
            low, high = int(times.min()), int(times.max())
            if self._range is not None:
                low, high = min(low, self._range[0]), max(high, self._range[1])
            self._range = (low, high)
        self._sink.write(table)

    def quarantine(self, rejections: Sequence[Rejection]) -> None:
        self._tx.quarantine(rejections)

    def commit(self, counts: ChunkCounts) -> None:
        """Make the chunk's rows visible and mark it done (atomically where the store can)."""
        self._tx.open()
        self._sink.commit()
        self._tx.finish(counts, self._range)
        self._sink.published()


@dataclass
class Store:
    """A data side and its ledger; for the SQL stores one object in one database is both."""

    data: DataStore
    ledger: Ledger

    @property
    def location(self) -> str:
        return self.data.location

    @property
    def mode(self) -> str:
        return self.data.mode

    @property
    def model(self) -> Model:
        return self.data.model

    @contextmanager
    def write_chunk(self, chunk: Chunk, run_id: str, job: str, force: bool = False) -> Iterator[ChunkWriter]:
        """Replace whatever an earlier write of ``chunk`` stored; uncommitted work is dropped."""
        family = self.model.family_of(chunk.schema)
        hold = self.data.capabilities.in_ledger_transaction
        with self.ledger.chunk_transaction(chunk, run_id, job, force, hold) as tx:
            sink = self.data.open_chunk(family, tx.id, tx.earlier)
            try:
                yield ChunkWriter(family, sink, tx)
            finally:
                sink.close()

    def deletion(
        self, schema: str, dataset: str | None, symbols: Sequence[str], start_ns: int, end_ns: int
    ) -> tuple[Deletion, int]:
        """What ``delete`` would remove and how many rows that is: the rows of ``symbols``
        (every symbol when empty) through the store's symbology, in [start_ns, end_ns)."""
        family = self.model.family_of(schema)
        known = sorted({d for d, *_ in self.ledger.chunk_ranges(schema) if d})
        if dataset is None:
            if len(known) > 1:
                raise UsageError(
                    f"{schema} is stored from several datasets ({', '.join(known)}): give --dataset"
                )
            dataset = known[0] if known else ""
        by_symbol = self.data.symbol_ranges(symbols) if symbols else {}
        unknown = [s for s in symbols if s not in by_symbol]
        if unknown:  # a typo must not read as "0 rows deleted"
            raise UsageError(
                f"--symbols: {', '.join(unknown)}: the store knows no instrument by that name"
                " (its symbology and definitions)"
            )
        instruments = [
            (i, max(s, start_ns), min(e, end_ns))
            for i, s, e in instrument_ranges(self.data, symbols)
            if s < end_ns and e > start_ns
        ]
        spans: list[Span] = list(instruments) if symbols else [(None, start_ns, end_ns)]
        query = ExportQuery(family, schema, symbols, start_ns, end_ns, instruments)
        rows = sum(n for _, _, n in self.data.day_counts(query)) if spans else 0
        return Deletion(dataset, schema, spans, start_ns, end_ns), rows

    def delete(self, deletion: Deletion) -> tuple[int, int, int]:
        """Remove the rows of ``deletion`` and the ledger's record of them in one transaction;
        the rows deleted, the chunks the ledger forgot and those it left pending."""
        family = self.model.family_of(deletion.schema)
        with self.ledger.deletion_transaction(deletion) as tx:
            if tx.replaced and deletion.spans:
                self.data.drop_covered(family, deletion.schema, tx)
        return sum(tx.dropped.values()), tx.forgotten, tx.unfinished

    def complete_input(self, chunk: Chunk) -> None:
        """Every part of ``chunk``'s input is stored: what it covers replaces the rows other
        inputs stored there (an input of the same records in another request, split, symbol
        or file), so each record is stored once."""
        family = self.model.family_of(chunk.schema)
        with self.ledger.coverage_transaction(chunk) as tx:
            if tx.replaced:
                self.data.drop_covered(family, chunk.schema, tx)

    def verify(self, repair: bool = False) -> Verification:
        """Every done chunk's rows against the ledger; with ``repair`` the damaged ones are
        marked so that the next run stores them again."""
        report = Verification(self.location)
        for family in self.model.families.values():
            expected = self.ledger.expected_rows(family.schemas)
            report.chunks += len(expected)
            found = self.data.verify(family, {i: rows for i, (_, rows) in expected.items()}, repair)
            for chunk, reason in sorted(found.items()):
                label = expected[chunk][0] if chunk in expected else f"chunk {chunk} (not in the ledger)"
                report.damaged.append((chunk, label, reason))
        if repair:
            self.ledger.mark_damaged({c: r for c, _, r in report.damaged})
            report.repaired = True
        return report

    def export(self, query: ExportQuery, batch_size: int) -> Iterator[pa.RecordBatch]:
        return self.data.export(query, batch_size)

    def status(self) -> StoreStatus:
        report = StoreStatus(self.location, self.mode)
        report.tables = [self.data.table_status(f) for f in self.model.families.values()]
        self.ledger.report(report)
        return report

    def another(self) -> Store:
        """A second connection to the same store, for a writer on another thread: only where
        the data side declares threaded writers."""
        data = self.data
        if not (data.capabilities.threaded_writers and isinstance(data, Connected)):
            raise TypeError(f"a {self.mode} store takes one writer at a time")
        return data.another()

    def _parts(self) -> list[DataStore | Ledger]:
        return [self.data] if self.ledger is self.data else [self.data, self.ledger]

    def reconnect(self) -> None:
        for part in self._parts():
            part.reconnect()

    def close(self) -> None:
        for part in self._parts():
            part.close()
