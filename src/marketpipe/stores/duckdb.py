"""Embedded DuckDB file: the zero-setup default store.

Timestamps are TIMESTAMP_NS (nanoseconds, UTC by convention: DuckDB's TIMESTAMPTZ holds
only microseconds), prices DECIMAL(19, 9), unsigned DBN integers DuckDB's unsigned types.
Batches go in through DuckDB's Arrow scan: no row-by-row insert.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from marketpipe.errors import StoreRejected
from marketpipe.model import FAMILIES, Column, Family, Kind
from marketpipe.sources.base import Chunk
from marketpipe.stores import sql
from marketpipe.stores.base import ChunkCounts, ExportQuery
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
    def __init__(self, store: DuckDBStore, tx: sql.ChunkTransaction) -> None:
        self._con = store.con
        self._tx = tx

    def write(self, table: pa.Table) -> None:
        self._tx.note_range(table)
        columns = ", ".join(sql.quote(n) for n in table.column_names)
        self._con.register("_marketpipe_batch", _naive(table))
        try:
            self._con.execute(
                f"INSERT INTO {sql.quote(self._tx.family.table)} ({columns}, chunk_id) "
                f"SELECT {columns}, ? FROM _marketpipe_batch",
                [self._tx.id],
            )
        finally:
            self._con.unregister("_marketpipe_batch")

    def quarantine(self, rejections: Sequence[Rejection]) -> None:
        self._tx.quarantine(rejections)

    def commit(self, counts: ChunkCounts) -> None:
        self._tx.finish(counts)


class DuckDBStore(sql.SqlStore):
    """A DuckDB database file, created with its tables on first use."""

    mode = "duckdb"

    def __init__(self, path: str) -> None:
        self.location = path
        try:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.con = duckdb.connect(str(Path(path).expanduser()))
        except (OSError, duckdb.Error) as exc:
            raise StoreRejected(f"cannot open DuckDB database {path}: {exc}") from None
        for family in FAMILIES.values():
            self.con.execute(sql.create_family_table(family, column_type))
        for statement in sql.BOOKKEEPING_DDL:
            self.con.execute(statement)

    def close(self) -> None:
        self.con.close()

    def reconnect(self) -> None:
        """An embedded file has no connection to lose."""

    def _execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        self.con.execute(_q(statement), list(params))

    def _executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        self.con.executemany(_q(statement), [list(r) for r in rows])

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.con.execute(_q(statement), list(params)).fetchall()

    def _begin(self) -> None:
        self.con.begin()

    def _commit(self) -> None:
        # Outside an explicit transaction DuckDB autocommits; committing then is an error.
        with suppress(duckdb.TransactionException):
            self.con.commit()

    def _rollback(self) -> None:
        self.con.rollback()

    def _time_ns(self, family: Family) -> str:
        return f"epoch_ns({sql.quote(family.time_column)})"

    @contextmanager
    def write_chunk(self, chunk: Chunk, run_id: str, job: str) -> Iterator[_DuckDBChunkWriter]:
        with self._chunk_transaction(chunk, run_id, job) as tx:
            yield _DuckDBChunkWriter(self, tx)

    def export(self, query: ExportQuery, batch_size: int) -> Iterator[pa.RecordBatch]:
        family = query.family
        columns = [sql.quote(n) for n in family.column_names]
        statement, params = sql.export_statement(query, columns, self._time_ns(family))
        reader = self.con.sql(_q(statement), params=params).to_arrow_reader(batch_size)
        for batch in reader:
            yield batch.cast(family.arrow_schema)
