"""Embedded DuckDB file: the zero-setup default store.

Timestamps are TIMESTAMP_NS (nanoseconds, UTC by convention: DuckDB's TIMESTAMPTZ holds
only microseconds), prices DECIMAL(19, 9), unsigned DBN integers DuckDB's unsigned types.
Batches go in through DuckDB's Arrow scan: no row-by-row insert.
"""

from __future__ import annotations

import copy
import os
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

import marketpipe.stores.migrations as migrations
import marketpipe.stores.sql as sql
from marketpipe.components import StoreConfig
from marketpipe.defaults import DUCKDB_MEMORY_LIMIT
from marketpipe.errors import StoreError, StoreRejected, UsageError, interrupted_query, interruption
from marketpipe.model import Family, Model
from marketpipe.stores.base import MIGRATIONS_TABLE, Capabilities, ExportQuery, Store

# Rows need no insertion order (reads order by time): without it DuckDB inserts in
# parallel, about twice as fast here.
CONFIG: dict[str, str | bool | int | float | list[str]] = {"preserve_insertion_order": False}


def integer_type(arrow_type: pa.DataType) -> str:
    """DuckDB has every width of signed and unsigned integer."""
    unsigned = "U" if pa.types.is_unsigned_integer(arrow_type) else ""
    return unsigned + sql.SIGNED_INTEGERS[arrow_type.bit_width]


column_type = sql.column_types(
    "DECIMAL(19, 9)",  # every int64 fixed-point price, exactly
    "TIMESTAMP_NS",  # TIMESTAMPTZ would stop at microseconds
    "VARCHAR",
    integer_type,
)


# Below this much free space after a failed write, the failure is the disk being full (DuckDB
# may report it as the aborted transaction it caused rather than as ENOSPC).
_NEARLY_FULL = 16 * 2**20


def _q(statement: str) -> str:
    """psycopg's placeholders in DuckDB's terms: ``%s`` a parameter, ``%%`` a percent sign."""
    return statement.replace("%s", "?").replace("%%", "%")


def _naive(table: pa.Table) -> pa.Table:
    """Arrow tz-aware timestamps would enter DuckDB as microsecond TIMESTAMPTZ: strip the tz."""
    fields = [
        pa.field(f.name, pa.timestamp("ns")) if pa.types.is_timestamp(f.type) else f for f in table.schema
    ]
    return table.cast(pa.schema(fields))


class _Abandoned(Exception):
    """The chunk ended without a commit: its insert stops with an error and is rolled back."""


class _DuckDBSink:
    """A chunk's rows in one INSERT that reads them as they are written, one insert at a time
    per file.

    DuckDB splits one insert's row groups (122,880 rows) among its threads. Several inserts per
    chunk, or two at once, leave partly filled row groups that the next checkpoint merges by
    rewriting them (README, "Measurements behind the code"); one insert per chunk leaves one per
    thread. The insert runs on a background thread from the chunk's first rows and reads
    batches from a queue as the pipeline checks the next (DuckDB releases the GIL while it
    inserts); a chunk waiting for another's insert keeps its batches queued.
    """

    def __init__(self, store: DuckDBStore, family: Family, chunk_id: int) -> None:
        self._store = store
        self._table = sql.identifier(family.table)
        self._chunk_id = chunk_id
        self._queue: queue.SimpleQueue[pa.Table | None] = queue.SimpleQueue()
        self._background = sql.Background()
        self._started = False
        self._abandoned = False

    def write(self, table: pa.Table) -> None:
        table = _naive(table)
        if not self._started:
            self._started = True
            self._background.submit(self._insert, table.schema)
        self._queue.put(table)

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while (table := self._queue.get()) is not None:
            yield from table.to_batches()
        if self._abandoned:
            raise _Abandoned

    def _insert(self, schema: pa.Schema) -> None:
        columns = ", ".join(sql.identifier(n) for n in schema.names)
        con = self._store.con
        with self._store.inserting:
            if self._abandoned:
                return
            con.register("_marketpipe_batch", pa.RecordBatchReader.from_batches(schema, self._batches()))
            try:
                self._store.execute_translated(
                    f"INSERT INTO {self._table} ({columns}, chunk_id)"
                    f" SELECT {columns}, ? FROM _marketpipe_batch",
                    [self._chunk_id],
                )
            finally:
                with suppress(duckdb.Error):  # after a failed insert the transaction is aborted
                    con.unregister("_marketpipe_batch")

    def commit(self) -> None:
        self._queue.put(None)
        self._background.wait()

    def published(self) -> None:
        """The rows replaced went in the chunk's transaction."""

    def close(self) -> None:
        """After a commit, nothing is left; otherwise the insert stops before the rollback."""
        self._abandoned = True
        self._queue.put(None)
        self._background.close()


_LEDGER_TABLES = {
    sql.CHUNKS_TABLE,
    sql.RUNS_TABLE,
    sql.QUARANTINE_TABLE,
    MIGRATIONS_TABLE,
    sql.SYMBOLOGY_TABLE,
    sql.COVERAGE_TABLE,
}


class DuckDBLedger(sql.SqlLedger):
    """A DuckDB file holding the ledger; a store's tables too when it is a ``DuckDBStore``."""

    def __init__(self, path: str, memory_limit: str = DUCKDB_MEMORY_LIMIT, read_only: bool = False) -> None:
        """``read_only``: the file must hold a store already; nothing is created or changed."""
        self.location = path
        # Shared by the writer threads' connections (``another``): one file, one process.
        self._coverage_mutex = threading.Lock()
        file = Path(path).expanduser()
        if read_only and not file.is_file():
            raise StoreRejected(f"no marketpipe store at {path}: nothing has been ingested there")
        try:
            if not read_only:
                file.parent.mkdir(parents=True, exist_ok=True)
            config = {**CONFIG, "memory_limit": memory_limit}
            self.con = duckdb.connect(str(file), read_only=read_only, config=config)
        except (OSError, duckdb.Error) as exc:
            raise StoreRejected(
                _busy(path, str(exc)) or f"cannot open DuckDB database {path}: {exc}"
            ) from None
        try:
            self._prepare(read_only)
        except BaseException:
            self.con.close()
            raise

    def _prepare(self, read_only: bool) -> None:
        tables = {str(t) for (t,) in self.fetch("SELECT table_name FROM information_schema.tables")}
        applied = migrations.recorded(self, tables)
        if not applied and sql.CHUNKS_TABLE in tables:
            applied = {1}  # the first release kept no migrations table in DuckDB
        migrations.check_release(self.location, applied)
        steps = sql.ledger_steps(self)
        self._opened(applied, read_only, steps)
        if read_only:
            if not applied:
                raise StoreRejected(f"{self.location} is not a marketpipe store")
        else:
            self._create(tables, applied, steps)

    def _create(self, tables: set[str], applied: set[int], steps: list[migrations.Migration]) -> None:
        """The ledger's migrations this file lacks (a store that has them all opens without a
        statement more: 2M trades, 0.01 s of 0.6); a ledger table gone with its versions
        recorded is made again (every step's DDL may run twice)."""
        if not tables >= _LEDGER_TABLES:
            applied = set()
        with self._migrating():
            migrations.migrate(self, steps, applied)

    @contextmanager
    def _migrating(self) -> Iterator[None]:
        """One transaction for the steps: a failed step leaves the file as it was."""
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    @contextmanager
    def _coverage_lock(self, dataset: str, schema: str) -> Iterator[None]:
        # Taken before the transaction begins, so its snapshot holds what the one before it
        # committed.
        with self._coverage_mutex:
            yield

    def close(self) -> None:
        self.con.close()

    def reconnect(self) -> None:
        """An embedded file has no connection to lose."""

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """A full disk as one line naming the store; an interrupt as the interrupt it was; any
        other DuckDB error stays a bug."""
        try:
            yield
        except RuntimeError as exc:
            if interrupted_query(exc):  # Ctrl-C or SIGTERM while DuckDB ran a query
                raise interruption() from None
            raise
        except duckdb.Error as exc:
            folder = Path(self.location).parent
            free = 0
            if folder.exists():
                space = os.statvfs(folder)
                free = space.f_bavail * space.f_frsize
            if "No space left on device" in str(exc) or free < _NEARLY_FULL:
                raise StoreError(
                    f"no space left on the device of {self.location} ({free:,} bytes free): the chunk"
                    " was rolled back and nothing of it was kept; free some space"
                ) from None
            raise

    def execute_translated(self, statement: str, params: Sequence[Any] = ()) -> None:
        with self._translated():
            self.con.execute(statement, list(params))

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        self.execute_translated(_q(statement), params)

    def execute_many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:  # DuckDB refuses an empty parameter list (psycopg runs nothing)
            return
        with self._translated():
            self.con.executemany(_q(statement), [list(r) for r in rows])

    def fetch(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._translated():
            return self.con.execute(_q(statement), list(params)).fetchall()

    def begin(self) -> None:
        self.con.begin()

    def commit(self) -> None:
        # Outside an explicit transaction DuckDB autocommits; committing then is an error.
        with suppress(duckdb.TransactionException), self._translated():
            self.con.commit()

    def rollback(self) -> None:
        with suppress(duckdb.Error):  # a failed write may have ended the transaction already
            self.con.rollback()


class DuckDBStore(DuckDBLedger, sql.SqlStore):
    """A DuckDB database file, created with its tables on first use."""

    mode = "duckdb"
    # One writer process at a time: DuckDB locks the file. Within it, writer threads each
    # have a connection (transaction) of their own.
    capabilities = Capabilities(
        atomic_chunks=True, concurrent_writers=False, threaded_writers=True, in_ledger_transaction=True
    )

    def __init__(
        self, path: str, memory_limit: str = DUCKDB_MEMORY_LIMIT, read_only: bool = False, *, model: Model
    ) -> None:
        self.model = model
        self.inserting = threading.Lock()  # shared by the writer threads' connections
        super().__init__(path, memory_limit, read_only)

    def another(self) -> Store:
        """A writer thread's connection to the file this process has open."""
        twin = copy.copy(self)
        twin.con = self.con.cursor()
        return Store(twin, twin)

    def _create(self, tables: set[str], applied: set[int], steps: list[migrations.Migration]) -> None:
        super()._create(tables, applied, steps)
        for family in self.model.families.values():
            if family.table not in tables:
                self.con.execute(sql.create_family_table(family, column_type))

    def _prepare(self, read_only: bool) -> None:
        """Checked before anything is made (``catalog``): someone else's table of one of
        marketpipe's names, or a table another transformation file made, is refused and the
        file stays as it was."""
        _, pending = self.inspect_catalog()
        super()._prepare(read_only)
        if not read_only:
            sql.record_definitions(self, pending)

    def _ns(self, column: str) -> str:
        return f"epoch_ns({sql.identifier(column)})"

    def _sink(self, family: Family, chunk_id: int) -> _DuckDBSink:
        return _DuckDBSink(self, family, chunk_id)

    # Where the user's SQL may read files besides the store's own: nowhere for a DuckDB file
    # (its tables are inside it); a lake's views read its root.
    readable_roots: tuple[str, ...] = ()
    _confined = False

    def query(self, statement: str, batch_size: int, memory_limit: str | None = None) -> pa.RecordBatchReader:
        """The user's SQL, one SELECT (or EXPLAIN of one), on a read-only connection with the
        ``<table>_v`` views PostgreSQL has (here as temporary views), so one query runs on either
        store; confined to the store (``_confine``), under ``memory_limit`` (None: DuckDB's
        default, 80% of the machine's memory, not ingest's cap)."""
        try:
            kinds = [s.type for s in self.con.extract_statements(statement)]
        except duckdb.Error as exc:
            raise sql.query_error(exc) from None
        if len(kinds) != 1 or kinds[0] not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
            found = ", ".join(k.name for k in kinds) or "nothing"
            raise UsageError(f"query: query runs one SELECT statement (or EXPLAIN of one); found: {found}")
        for family in self.model.families.values():
            self.con.execute(sql.readable_view(family, lambda column: column, "TEMP VIEW"))
        self._confine(memory_limit)
        try:
            relation = self.con.sql(statement)
            reader = None if relation is None else relation.to_arrow_reader(batch_size)
        except duckdb.Error as exc:
            raise _query_error(exc) from None
        if reader is None:
            raise UsageError("query: the statement returns no rows: query runs SELECT statements")

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    yield sql.utc_timestamps(batch)
            except duckdb.Error as exc:
                raise _query_error(exc) from None

        return pa.RecordBatchReader.from_batches(sql.utc_schema(reader.schema), batches())

    def _confine(self, memory_limit: str | None) -> None:
        """The user's SQL reads the store and nothing else: no other file (``COPY ... TO``,
        ``read_csv``, ``ATTACH``), no extension installed or loaded, and no setting changed back
        (DuckDB's own switches; the configuration is locked last)."""
        if self._confined:
            return
        try:
            self.con.execute(
                "RESET memory_limit" if memory_limit is None else "SET memory_limit = ?",
                None if memory_limit is None else [memory_limit],
            )
        except duckdb.Error as exc:
            raise UsageError(f"MARKETPIPE_QUERY_MEMORY_LIMIT {memory_limit!r}: {exc}") from None
        if self.readable_roots:
            roots = ", ".join("'" + r.replace("'", "''") + "'" for r in self.readable_roots)
            self.con.execute(f"SET allowed_directories = [{roots}]")
        for setting in (
            "enable_external_access = false",
            "autoinstall_known_extensions = false",
            "autoload_known_extensions = false",
            "lock_configuration = true",
        ):
            self.con.execute(f"SET {setting}")
        self._confined = True

    def export(self, query: ExportQuery, batch_size: int) -> Iterator[pa.RecordBatch]:
        family = query.family
        statement, params = sql.export_statement(query, self._time_ns(family))
        # A cursor of its own: a connection holds one open result, and reads may interleave
        # (a second read while a first one's batches are still being consumed).
        with self.con.cursor() as cursor:
            reader = cursor.sql(_q(statement), params=params).to_arrow_reader(batch_size)
            for batch in reader:
                yield batch.cast(family.arrow_schema)


def _busy(path: str, error: str) -> str | None:
    """DuckDB's refusal of a file another process holds, as which process holds it (its
    command line, where /proc shows it: ``marketpipe ingest --job ...``). DuckDB lets one
    process open a file to write, and none other while it does, so the ledger cannot be read
    to name the run."""
    held = re.search(r"Conflicting lock is held in (.*) \(PID (\d+)\)", error)
    if held is None:
        return None
    program, pid = held.groups()
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        command = program
    return (
        f"{path} is busy: another process is writing it (PID {pid}: {command}); a DuckDB store takes"
        " one process at a time, so run this once it has finished (a PostgreSQL store takes many)"
    )


def _query_error(exc: duckdb.Error) -> UsageError:
    """As ``sql.query_error``; running out of memory names the setting that gives more."""
    error = sql.query_error(exc)
    if isinstance(exc, duckdb.OutOfMemoryException):
        return UsageError(f"{error} (MARKETPIPE_QUERY_MEMORY_LIMIT sets query's memory limit, e.g. 8GB)")
    return error


def open_store(config: StoreConfig, model: Model, read_only: bool) -> Store:
    store = DuckDBStore(config.location, config.memory_limit, read_only, model=model)
    return Store(store, store)


def open_ledger(config: StoreConfig, read_only: bool) -> DuckDBStore:
    """A ledger alone (a lake's): a store of no tables, whose writer threads each get a
    connection of their own."""
    return DuckDBStore(config.location, config.memory_limit, read_only, model=Model({}))
