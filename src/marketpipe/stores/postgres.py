"""PostgreSQL (and TimescaleDB when the extension is there), loaded by binary COPY.

Types: event times are BIGINT nanoseconds since the epoch (``timestamptz`` holds only
microseconds; ``marketpipe_ts(ns)`` and the ``<table>_v`` views give a timestamptz to read,
``marketpipe_ns(timestamptz)`` an index-friendly bound to filter by), prices NUMERIC(19, 9),
uint64 fields NUMERIC(20, 0), uint32 BIGINT. Arrow batches are encoded to the binary COPY
format by pgpq and streamed through psycopg 3: no row-by-row INSERT, no Python object per
record.

Faults: errors worth retrying (connection refused or reset, admin shutdown, serialization
failure, deadlock) become ``TransientStoreError``; refusals (bad credentials, missing
database, no permission) become ``StoreRejected``. Connecting is retried here; a chunk is
retried as a whole by the pipeline.
"""

from __future__ import annotations

import copy
import queue
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import pgpq
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

import marketpipe.stores.migrations as migrations
import marketpipe.stores.sql as sql
import marketpipe.stores.timescale as timescale
from marketpipe.components import StoreConfig
from marketpipe.errors import StoreError, StoreRejected, TransientStoreError, UsageError
from marketpipe.model import Family, Model
from marketpipe.retries import retrying
from marketpipe.stores.base import (
    QUARANTINE_TABLE,
    Capabilities,
    ExportQuery,
    ReplacingTransaction,
    Store,
)
from marketpipe.types import Chunk

log = structlog.get_logger("marketpipe.postgres")

MIGRATION_LOCK = 0x6D61726B6574  # "market": serializes concurrent starts
# TCP keepalives: a peer that vanished without a reset is noticed in about a minute
# instead of a query waiting forever.
CONNECT_OPTIONS: dict[str, Any] = {
    "application_name": "marketpipe",
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
_TRANSIENT = (
    errors.AdminShutdown,
    errors.CannotConnectNow,
    errors.TooManyConnections,
    errors.SerializationFailure,
    errors.DeadlockDetected,
    errors.QueryCanceled,
)
_PERMANENT_SQLSTATES = {"28000", "28P01", "3D000", "42501"}
# libpq reports connection refusals as text only (no SQLSTATE before the session exists).
_PERMANENT_MESSAGES = (
    "does not exist",
    "authentication failed",
    "permission denied",
    "no pg_hba.conf entry",
    "password",
    "invalid connection option",
    "invalid URI",
    # TLS set up differently on the two ends: the same answer on every attempt.
    "does not support SSL",
    "SSL was required",
    "certificate verify failed",
)


def _integer_type(arrow_type: pa.DataType) -> str:
    """The narrowest signed type holding the DBN integer (no unsigned types in PostgreSQL)."""
    bits = arrow_type.bit_width * (2 if pa.types.is_unsigned_integer(arrow_type) else 1)
    return "NUMERIC(20, 0)" if bits > 64 else sql.SIGNED_INTEGERS[max(bits, 16)]


# Each must be the type pgpq encodes the COPY column as (binary COPY checks the types).
column_type = sql.column_types("NUMERIC(19, 9)", "BIGINT", "TEXT", _integer_type)


def copy_table(table: pa.Table, chunk_id: int) -> pa.Table:
    """The Arrow shape of a COPY: timestamps as their int64 nanoseconds, plus chunk_id."""
    columns = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in table.columns]
    columns.append(pa.repeat(pa.scalar(chunk_id, pa.int64()), table.num_rows))
    return pa.Table.from_arrays(columns, names=[*table.column_names, "chunk_id"])


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    if getattr(exc, "sqlstate", None) in _PERMANENT_SQLSTATES:
        return False
    return not any(m in str(exc) for m in _PERMANENT_MESSAGES)


def in_schema(url: str, schema: str | None) -> str:
    """Connection parameters whose sessions work in ``schema`` (libpq's ``options``:
    search_path ``schema, public``, public for an extension's functions such as TimescaleDB's):
    every connection made from them, a writer's, a worker's, the chunk maker's, is there."""
    if schema is None:
        return url
    info = {key: str(value) for key, value in conninfo_to_dict(url).items() if value is not None}
    info["options"] = f"{info.get('options', '')} -c search_path={schema},public".strip()
    return make_conninfo("", **info)


def schema_of(url: str) -> str | None:
    """The schema ``in_schema`` put these connection parameters in, if any."""
    found = re.search(r"search_path=([a-z0-9_]+)", str(conninfo_to_dict(url).get("options", "")))
    return found.group(1) if found else None


def safe_location(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    schema = schema_of(url)
    where = f" (schema {schema})" if schema else ""
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}{where}"


def translate(exc: psycopg.Error, where: str) -> StoreError | StoreRejected:
    reason = " ".join(str(exc).split())
    if is_transient(exc):
        return TransientStoreError(f"{where}: {reason}")
    if getattr(exc, "sqlstate", None) in _PERMANENT_SQLSTATES or isinstance(exc, psycopg.OperationalError):
        return StoreRejected(f"{where}: {reason}")
    return StoreError(f"{where}: {reason}")


def _model_statements(model: Model) -> list[str]:
    tables = [*sql.BOOKKEEPING_DDL]
    tables.append(f"CREATE INDEX IF NOT EXISTS marketpipe_quarantine_chunk ON {QUARANTINE_TABLE} (chunk_id)")
    tables.append(
        "CREATE OR REPLACE FUNCTION marketpipe_ts(ns BIGINT) RETURNS timestamptz LANGUAGE SQL IMMUTABLE"
        " PARALLEL SAFE AS $$ SELECT to_timestamp(0) + (ns / 1000) * interval '1 microsecond' $$"
    )
    tables.append(
        "CREATE OR REPLACE FUNCTION marketpipe_ns(t timestamptz) RETURNS BIGINT LANGUAGE SQL IMMUTABLE"
        " PARALLEL SAFE AS $$ SELECT (extract(epoch FROM t) * 1000000000)::BIGINT $$"
    )
    for family in model.families.values():
        tables.append(sql.create_family_table(family, column_type))
        tables.append(sql.readable_view(family, lambda column: f"marketpipe_ts({column})"))
    return tables


# Every index is paid on every COPY. One BRIN on (instrument, time) serves "this instrument
# over this time" and time alone (a multicolumn BRIN takes conditions on any of its columns),
# because each COPY batch is written in (instrument, time) order: an instrument's rows of a
# batch sit in a run of pages whose ranges summarize few instruments. It costs COPY far less
# than the B-tree it replaces and reads a rare instrument's day in a few ms (README,
# "Measurements behind the code").
BRIN_PAGES_PER_RANGE = 16


def _brin_index_statements(model: Model) -> list[str]:
    statements = []
    for family in model.families.values():
        name, time = sql.identifier(family.table), sql.identifier(family.time_column)
        statements += [
            f"DROP INDEX IF EXISTS {family.table}_instrument_time",
            f"DROP INDEX IF EXISTS {family.table}_time_brin",
            f"CREATE INDEX IF NOT EXISTS {family.table}_instrument_time_brin ON {name}"
            f" USING brin (instrument_id, {time}) WITH (pages_per_range = {BRIN_PAGES_PER_RANGE})",
        ]
    return statements


DECOMPRESS_UNLIMITED = "SET LOCAL timescaledb.max_tuples_decompressed_per_dml_transaction = 0"


def _migrations(store: PostgresStore, mode_timescale: bool) -> list[migrations.Migration]:
    """Versioned schema steps; the TimescaleDB one only where the extension is usable."""
    model = store.model
    steps = sql.ledger_steps(store, _model_statements(model))
    steps.append(
        migrations.Migration(
            migrations.BRIN_INDEX, migrations.statements(store, *_brin_index_statements(model))
        )
    )
    if mode_timescale:
        steps.append(
            migrations.Migration(
                migrations.TIMESCALE, lambda: timescale.create_hypertables(store.conn, model)
            )
        )
    return steps


# A batch goes to COPY in slices: whole batches were slower, smaller slices no faster
# (README, "Measurements behind the code").
COPY_SLICE_ROWS = 16_384


class _Abandoned(Exception):
    """The chunk ended without a commit: its COPY fails and the transaction rolls back."""


def copy_schema(family: Family) -> pa.Schema:
    """What ``copy_table`` makes of a family's rows: known before the first batch."""
    fields = [
        pa.field(f.name, pa.int64()) if pa.types.is_timestamp(f.type) else f for f in family.arrow_schema
    ]
    return pa.schema([*fields, pa.field("chunk_id", pa.int64())])


class _PgSink:
    """A chunk's rows in one COPY, started as the chunk opens and fed its batches through a
    short queue while the pipeline reads and checks the next: the session is in that COPY
    from the chunk's first statements to its last, never idle inside the transaction (what
    idle_in_transaction_session_timeout ends, and what holds VACUUM back)."""

    def __init__(self, store: PostgresStore, family: Family, chunk_id: int) -> None:
        self._store = store
        self._family = family
        self._chunk_id = chunk_id
        self._time_column = family.time_column
        self._schema = copy_schema(family)
        columns = [*family.column_names, "chunk_id"]
        self._copy = (
            f"COPY {sql.identifier(family.table)} ({', '.join(sql.identifier(c) for c in columns)})"
            " FROM STDIN WITH (FORMAT BINARY)"
        )
        # Two batches at most wait for the server: memory stays bounded when COPY is slower.
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)
        self._abandoned = False
        self._ended = False
        self._copying = sql.Background()
        self._copying.submit(self._copy_rows)

    def write(self, table: pa.Table) -> None:
        # Rows in (instrument, time) order: what keeps the BRIN on (instrument_id, time)
        # narrow; sorted here, on the pipeline's thread, while the server loads the batch before.
        rows = table.sort_by([("instrument_id", "ascending"), (self._time_column, "ascending")])
        data = copy_table(rows, self._chunk_id).cast(self._schema)
        if self._store.ahead is not None and data.num_rows:
            times = pc.min_max(data[self._time_column])
            self._store.ahead.make(self._family, times["min"].as_py(), times["max"].as_py())
        self._hand_over(data)

    def _hand_over(self, data: pa.Table | None) -> None:
        """Queue ``data`` (None: the end) unless the COPY stopped: then raise its error."""
        while True:
            try:
                self._queue.put(data, timeout=0.1)
                return
            except queue.Full:
                self._copying.check()

    def _copy_rows(self) -> None:
        # Encoded and sent a slice at a time: the server parses each slice while the next is
        # encoded (one 250,000-row message would leave it idle while the whole batch encodes).
        encoder = pgpq.ArrowToPostgresBinaryEncoder(self._schema)
        with self._store.translated("COPY"), self._store.conn.cursor() as cur, cur.copy(self._copy) as copy:
            copy.write(encoder.write_header())
            while (data := self._queue.get()) is not None:
                for batch in data.to_batches(max_chunksize=COPY_SLICE_ROWS):
                    copy.write(encoder.write_batch(batch))
            if self._abandoned:
                raise _Abandoned  # psycopg ends the COPY with an error: nothing of it stays
            copy.write(encoder.finish())

    def commit(self) -> None:
        self._ended = True
        self._hand_over(None)
        self._copying.wait()

    def published(self) -> None:
        """The rows replaced went in the chunk's transaction."""

    def close(self) -> None:
        """Without a commit, the COPY is failed (and the transaction rolls back after)."""
        if not self._ended:
            self._abandoned = True
            with suppress(Exception):  # the COPY's own error is the one raised already
                self._hand_over(None)
        self._copying.close()


class PostgresStore(sql.SqlStore):
    # Chunks of other processes wait on an advisory lock, not on the whole database.
    capabilities = Capabilities(
        atomic_chunks=True, concurrent_writers=True, threaded_writers=True, in_ledger_transaction=True
    )

    def __init__(
        self,
        url: str,
        retries: int = 5,
        retry_wait: float = 0.5,
        compress_after_days: int | None = None,
        read_only: bool = False,
        *,
        model: Model,
    ):
        """``read_only``: every transaction is READ ONLY; nothing is created, migrated or converted,
        so a role with SELECT rights alone can read."""
        self.model = model
        self.url = url
        self.location = safe_location(url)
        self.schema = schema_of(url)
        self.retries = retries
        self.retry_wait = retry_wait
        self.read_only = read_only
        self._reads = 0  # exports being consumed on this store (``export``)
        # Inside a transaction the ledger began (a chunk's, an input's completion): reads keep
        # it open. Outside one, a read ends the transaction it opened at once.
        self._explicit = False
        self._run_locks: set[int] = set()  # held for the runs of this process, across reconnects
        self.conn = self._connect()
        self.mode = self._inspect() if read_only else self._migrate(compress_after_days)
        self.ahead = (
            timescale.ChunksAhead(url, CONNECT_OPTIONS)
            if self.mode == "timescaledb" and not read_only
            else None
        )

    # Connection and schema.
    def _connect(self) -> psycopg.Connection[Any]:
        def log_retry(attempt: int, reason: str, wait: float) -> None:
            log.warning("db.retry", action="connect", attempt=attempt, reason=reason, wait=wait)

        for attempt in retrying(self.retries, self.retry_wait, log_retry):
            with attempt:
                try:
                    conn = psycopg.connect(self.url, **CONNECT_OPTIONS)
                    conn.read_only = self.read_only
                    return conn
                except psycopg.Error as exc:
                    raise translate(exc, f"cannot connect to PostgreSQL at {self.location}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def another(self) -> Store:
        """Migrated and inspected already: only the connection is new."""
        twin = copy.copy(self)
        twin.conn = self._connect()
        twin._explicit, twin._run_locks = False, set()
        return Store(twin, twin)

    def reconnect(self) -> None:
        """A new session: the run locks the old one held (released with it) are taken again."""
        with suppress(psycopg.Error):
            self.conn.close()
        self.conn = self._connect()
        self._explicit = False
        for key in sorted(self._run_locks):
            self._hold_run(key)

    def close(self) -> None:
        """A writer thread's store shares the chunks made ahead (a later use reconnects)."""
        self.conn.close()
        if self.ahead is not None:
            self.ahead.close()

    def _migrate(self, compress_after_days: int | None) -> str:
        """Checked first (``catalog``: someone else's table, a table another transformation file
        made), then migrated, in one transaction: a refusal changes nothing."""
        with self.translated("schema migration"), self.conn.transaction():
            self.lock_schema()
            if self.schema is not None:  # rolled back with the rest if the store is refused
                self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {sql.identifier(self.schema)}")
            relations, pending = self.inspect_catalog()
            use_timescale, why = timescale.detect(self.conn)
            applied = migrations.recorded(self, relations)
            migrations.check_release(self.location, applied)
            migrations.migrate(self, _migrations(self, use_timescale), applied)
            sql.record_definitions(self, pending)
            if use_timescale and compress_after_days is not None:
                timescale.add_compression_policies(self.conn, compress_after_days, self.model)
        mode = "timescaledb" if use_timescale else "postgresql"
        log.info("store.mode", mode=mode, reason=why, location=self.location)
        return mode

    def _inspect(self) -> str:
        """The mode the store was made in, read without changing anything."""
        with self.translated("schema check"):
            current = self.conn.execute("SELECT current_schema()").fetchone()
            if self.schema is not None and (current is None or current[0] != self.schema):
                raise StoreRejected(
                    f"no schema {self.schema} in {self.location}: nothing has been ingested there"
                )
            relations, _ = self.inspect_catalog()
            applied = migrations.recorded(self, relations)
            self.conn.commit()
        if not applied:
            raise StoreRejected(f"no marketpipe tables in {self.location}: nothing has been ingested there")
        migrations.check_release(self.location, applied)
        self._opened(applied, True, _migrations(self, migrations.TIMESCALE in applied))
        mode = "timescaledb" if migrations.TIMESCALE in applied else "postgresql"
        log.info("store.mode", mode=mode, reason="read-only: as the store was made", location=self.location)
        return mode

    @contextmanager
    def translated(self, where: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise translate(exc, f"{where} on {self.location}") from None

    # SqlLedger's primitives.
    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        with self.translated("query"):
            self.conn.execute(statement, params)

    def execute_many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.translated("query"), self.conn.cursor() as cur:
            cur.executemany(statement, rows)

    def fetch(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # A read that opened a transaction ends it: a session idle in a transaction holds back
        # VACUUM, freezes now() for the run's later rows, and is what
        # idle_in_transaction_session_timeout (managed servers set it) terminates.
        opened = not self._explicit and self.conn.info.transaction_status == TransactionStatus.IDLE
        with self.translated("query"):
            rows = self.conn.execute(statement, params).fetchall()
            if opened:
                self.conn.commit()
            return rows

    def begin(self) -> None:
        """psycopg opens the transaction with the first statement; until it ends, reads keep it."""
        self._explicit = True

    def commit(self) -> None:
        self._explicit = False
        with self.translated("commit"):
            self.conn.commit()

    def rollback(self) -> None:
        self._explicit = False
        with suppress(psycopg.Error):  # the connection is gone; so is the transaction
            self.conn.rollback()

    def lock_schema(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))

    @contextmanager
    def _coverage_lock(self, dataset: str, schema: str) -> Iterator[None]:
        # Taken by the transaction's first statement, released by its end: inputs of one
        # dataset's schema complete one at a time across processes, and READ COMMITTED shows
        # each what the one before it recorded.
        self.execute("SELECT pg_advisory_xact_lock(%s)", [sql.chunk_id(f"coverage:{dataset}:{schema}")])
        yield

    def drop_covered(self, family: Family, schema: str, tx: ReplacingTransaction) -> None:
        if self.mode == "timescaledb":
            self.execute(DECOMPRESS_UNLIMITED)  # see open_chunk
        super().drop_covered(family, schema, tx)

    def _ns(self, column: str) -> str:
        return sql.identifier(column)

    ROW_LOCK = " FOR UPDATE"

    def _claim(self, chunk: Chunk, key: int) -> None:
        # A session-level advisory lock: it outlives the chunk's transactions and ends with
        # the session, so a killed writer never leaves a chunk held.
        with self.translated("chunk claim"):
            (taken,) = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()  # type: ignore[misc]
            if not taken:
                log.info("chunk.waiting", chunk=chunk.label, reason="another run is writing it")
                self.conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            self.conn.commit()

    def _release(self, key: int) -> None:
        self._run_locks.discard(key)
        with suppress(psycopg.Error):  # a lost connection released it already
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            self.conn.commit()

    def _hold_run(self, key: int) -> None:
        self._run_locks.add(key)
        with self.translated("run lock"):
            self.conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            self.conn.commit()

    def _run_alive(self, run_id: str) -> bool:
        # A bigint advisory key shows in pg_locks as classid (high 32 bits) and objid (low).
        key = sql.run_lock_key(run_id) & 0xFFFFFFFFFFFFFFFF
        rows = self.fetch(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
            " AND classid::bigint = %s AND objid::bigint = %s",
            [key >> 32, key & 0xFFFFFFFF],
        )
        return bool(rows)

    def open_chunk(self, family: Family, chunk_id: int, earlier: sql.TimeRange | None) -> sql.ChunkSink:
        if earlier is not None and self.mode == "timescaledb":
            # Deleting a chunk's earlier rows from a compressed day decompresses the segments
            # they sit in (an instrument's day, other chunks' rows too), and TimescaleDB stops
            # a transaction past 100,000 decompressed rows: a --force of any busy compressed day
            # would fail every time. 0 is unlimited (TimescaleDB's own hint); this transaction only.
            self.execute(DECOMPRESS_UNLIMITED)
        return super().open_chunk(family, chunk_id, earlier)

    def _sink(self, family: Family, chunk_id: int) -> _PgSink:
        return _PgSink(self, family, chunk_id)

    def query(self, statement: str, batch_size: int, memory_limit: str | None = None) -> pa.RecordBatchReader:
        """The user's SQL: one statement (prepared, so the server parses it as one), in a READ
        ONLY transaction, as a role that reads tables and no server file. A role that may read
        or write the server's files or run its programs (a superuser, the README's own URLs)
        runs it as PostgreSQL's predefined ``pg_read_all_data`` (``SET LOCAL ROLE``): a READ
        ONLY transaction alone still lets ``COPY ... TO 'file'`` and ``pg_read_file`` run.
        Column types are inferred from the values (NUMERIC as exact decimals), so the result is
        gathered before it is returned. ``memory_limit``: the server's own settings rule."""
        self.conn.rollback()  # a transaction of its own, READ ONLY from its first statement
        try:
            with self.conn.cursor() as cur:
                cur.execute("SET TRANSACTION READ ONLY")
                cur.execute(FILE_ACCESS)
                row = cur.fetchone()
                if row is not None and row[0]:
                    try:
                        cur.execute("SET LOCAL ROLE pg_read_all_data")
                    except psycopg.errors.InsufficientPrivilege:
                        raise UsageError(
                            f"query: the role of {self.location} may read or write the server's files"
                            " and is not a member of pg_read_all_data, as which query would run the"
                            " statement: connect as a role without file access, or grant it"
                            " pg_read_all_data"
                        ) from None
                cur.execute(statement, prepare=True)
                if cur.description is None:
                    raise UsageError("query: the statement returns no rows: query runs SELECT statements")
                names = [d.name for d in cur.description]
                rows = cur.fetchall()
        except psycopg.Error as exc:
            self.rollback()
            if is_transient(exc) or isinstance(exc, psycopg.OperationalError):
                raise translate(exc, f"query on {self.location}") from None
            raise sql.query_error(exc) from None
        except UsageError:
            self.rollback()
            raise
        self.conn.rollback()  # nothing to keep: a read
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
        table = pa.table([pa.array(list(c)) for c in columns], names=names)
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(batch_size))

    def export(self, query: ExportQuery, batch_size: int) -> Iterator[pa.RecordBatch]:
        family = query.family
        statement, params = sql.export_statement(query, self._time_ns(family))
        # Store types that differ from the model's Arrow type: fetched as these, then cast.
        via = {
            c.name: pa.int64() if c.is_timestamp else pa.decimal128(20, 0)
            for c in family.columns
            if c.is_timestamp or c.arrow_type == pa.uint64()
        }
        # A read runs in a transaction of its own (its server-side cursor lives until that
        # commits): a read while another is still being consumed gets a connection of its own.
        reading = self._reads > 0
        conn = self._connect() if reading else self.conn
        self._reads += 1
        try:
            with self.translated("export"), conn.cursor(name="marketpipe_export") as cur:
                cur.itersize = batch_size
                cur.execute(statement, params)
                while rows := cur.fetchmany(batch_size):
                    values = list(zip(*rows, strict=True))
                    arrays = []
                    for column, data in zip(family.columns, values, strict=True):
                        array = pa.array(data, type=via.get(column.name, column.arrow_type))
                        arrays.append(array.cast(column.arrow_type))
                    yield pa.RecordBatch.from_arrays(arrays, schema=family.arrow_schema)
            conn.commit()
        finally:
            self._reads -= 1
            if reading:
                conn.close()


# Whether the connection's role may read or write the server's files or run its programs.
FILE_ACCESS = """SELECT rolsuper
  OR pg_has_role(current_user, 'pg_read_server_files', 'USAGE')
  OR pg_has_role(current_user, 'pg_write_server_files', 'USAGE')
  OR pg_has_role(current_user, 'pg_execute_server_program', 'USAGE')
FROM pg_roles WHERE rolname = current_user"""


def open_store(config: StoreConfig, model: Model, read_only: bool) -> Store:
    store = _open(config, model, read_only)
    return Store(store, store)


def open_ledger(config: StoreConfig, read_only: bool) -> PostgresStore:
    """A ledger alone (a lake's): a store of no tables."""
    return _open(config, Model({}), read_only)


def _open(config: StoreConfig, model: Model, read_only: bool) -> PostgresStore:
    url = in_schema(config.location, config.pg_schema)
    return PostgresStore(
        url, config.retries, config.retry_wait, config.compress_after_days, read_only, model=model
    )
