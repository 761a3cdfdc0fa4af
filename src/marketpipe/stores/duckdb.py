"""Embedded DuckDB file: the zero-setup default store.

Timestamps are TIMESTAMP_NS (nanoseconds, UTC by convention: DuckDB's TIMESTAMPTZ holds
only microseconds), prices DECIMAL(19, 9), unsigned DBN integers DuckDB's unsigned types.
Batches go in as Arrow through DuckDB's Arrow scan: no row-by-row insert.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from marketpipe.errors import StoreUnavailable
from marketpipe.model import FAMILIES, FAMILY_OF_SCHEMA, Column, Kind
from marketpipe.sources.base import Chunk
from marketpipe.stores import sql
from marketpipe.stores.base import (
    ChunkCounts,
    ExportQuery,
    StoreStatus,
    TableStatus,
    chunk_id,
)
from marketpipe.validation import Rejection

_INT_TYPES = {
    pa.uint8(): "UTINYINT",
    pa.uint16(): "USMALLINT",
    pa.uint32(): "UINTEGER",
    pa.uint64(): "UBIGINT",
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
}


def column_type(column: Column) -> str:
    if column.kind is Kind.PRICE:
        return "DECIMAL(19, 9)"
    if column.kind is Kind.TIMESTAMP:
        return "TIMESTAMP_NS"
    if column.kind is Kind.INTEGER:
        return _INT_TYPES[column.arrow_type]
    return "VARCHAR"


def _q(statement: str) -> str:
    return statement.replace("%s", "?")


def _naive(table: pa.Table) -> pa.Table:
    """Arrow tz-aware timestamps would enter DuckDB as microsecond TIMESTAMPTZ: strip the tz."""
    fields = [
        pa.field(f.name, pa.timestamp("ns")) if pa.types.is_timestamp(f.type) else f for f in table.schema
    ]
    return table.cast(pa.schema(fields))


class _DuckDBChunkWriter:
    def __init__(self, store: DuckDBStore, chunk: Chunk, run_id: str, job: str) -> None:
        self._store = store
        self._con = store.con
        self._chunk = chunk
        self._run_id = run_id
        self._job = job
        self._id = chunk_id(chunk.key)
        self._family = FAMILY_OF_SCHEMA[chunk.schema]
        self.committed = False

    def write(self, table: pa.Table) -> None:
        columns = ", ".join(sql.quote(n) for n in table.column_names)
        self._con.register("_marketpipe_batch", _naive(table))
        try:
            self._con.execute(
                f"INSERT INTO {sql.quote(self._family.table)} ({columns}, chunk_id) "
                f"SELECT {columns}, ? FROM _marketpipe_batch",
                [self._id],
            )
        finally:
            self._con.unregister("_marketpipe_batch")

    def quarantine(self, rejections: Sequence[Rejection]) -> None:
        if rejections:
            self._con.executemany(
                _q(sql.INSERT_QUARANTINE),
                [
                    (
                        self._run_id,
                        self._id,
                        self._chunk.key,
                        self._chunk.schema,
                        r.stage,
                        r.rule,
                        r.message,
                        r.record,
                    )
                    for r in rejections
                ],
            )

    def commit(self, counts: ChunkCounts) -> None:
        self._store.record_chunk(self._chunk, self._run_id, self._job, "done", counts, None)
        self._con.commit()
        self.committed = True


class DuckDBStore:
    """A DuckDB database file, created with its tables on first use."""

    mode = "duckdb"

    def __init__(self, path: str) -> None:
        self.location = path
        try:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.con = duckdb.connect(str(Path(path).expanduser()))
        except (OSError, duckdb.Error) as exc:
            raise StoreUnavailable(f"cannot open DuckDB database {path}: {exc}") from None
        for family in FAMILIES.values():
            self.con.execute(sql.create_family_table(family, column_type))
        for statement in sql.BOOKKEEPING_DDL:
            self.con.execute(statement)

    def close(self) -> None:
        self.con.close()

    def is_done(self, chunk: Chunk) -> bool:
        row = self.con.execute(_q(sql.CHUNK_STATUS), [chunk.key]).fetchone()
        return row is not None and row[0] == "done"

    def record_chunk(
        self,
        chunk: Chunk,
        run_id: str,
        job: str,
        status: str,
        counts: ChunkCounts | None,
        error: str | None,
    ) -> None:
        c = counts
        self.con.execute(
            _q(sql.UPSERT_CHUNK),
            [
                chunk.key,
                chunk_id(chunk.key),
                job,
                chunk.schema,
                chunk.label,
                status,
                c and c.read,
                c and c.stored,
                c and c.quarantined,
                c and c.seconds,
                run_id,
                error,
            ],
        )

    @contextmanager
    def write_chunk(self, chunk: Chunk, run_id: str, job: str) -> Iterator[_DuckDBChunkWriter]:
        self.record_chunk(chunk, run_id, job, "running", None, None)
        family = FAMILY_OF_SCHEMA[chunk.schema]
        self.con.begin()
        writer = _DuckDBChunkWriter(self, chunk, run_id, job)
        try:
            self.con.execute(_q(sql.delete_chunk(family)), [writer._id])
            self.con.execute(_q(sql.DELETE_QUARANTINE), [writer._id])
            yield writer
        finally:
            if not writer.committed:
                self.con.rollback()

    def mark_failed(self, chunk: Chunk, run_id: str, job: str, error: str) -> None:
        self.record_chunk(chunk, run_id, job, "failed", None, error)

    def start_run(self, run_id: str, job: str) -> None:
        self.con.execute(_q(sql.INSERT_RUN), [run_id, job])

    def finish_run(self, run_id: str, status: str, counts: ChunkCounts) -> None:
        self.con.execute(_q(sql.FINISH_RUN), [status, counts.read, counts.stored, counts.quarantined, run_id])

    def export(self, query: ExportQuery, batch_size: int) -> Iterator[pa.RecordBatch]:
        family = query.family
        statement, params = sql.export_statement(query, f"epoch_ns({sql.quote(family.time_column)})")
        reader = self.con.sql(_q(statement), params=params).to_arrow_reader(batch_size)
        for batch in reader:
            yield batch.cast(family.arrow_schema)

    def status(self) -> StoreStatus:
        report = StoreStatus(self.location, self.mode)
        for family in FAMILIES.values():
            time_ns = f"epoch_ns({sql.quote(family.time_column)})"
            rows, first, last = self.con.execute(sql.table_summary(family, time_ns)).fetchone() or (
                0,
                None,
                None,
            )
            report.tables.append(TableStatus(family.table, rows, first, last))
        report.chunks = [tuple(r) for r in self.con.execute(sql.CHUNK_COUNTS).fetchall()]
        report.failed = [tuple(r) for r in self.con.execute(sql.FAILED_CHUNKS).fetchall()]
        names = ["run_id", "job", "started_at", "finished_at", "status", "read", "stored", "quarantined"]
        report.runs = [dict(zip(names, r, strict=False)) for r in self.con.execute(sql.LAST_RUNS).fetchall()]
        return report
