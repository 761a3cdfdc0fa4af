"""A data side that keeps tables in memory as Arrow: what a new store takes, written as a test.

It pairs with the SQL ledger in a DuckDB file and passes the store conformance suite. Its rows
and its ledger are not in one transaction (``atomic_chunks=False``): a chunk's rows replace the
chunk's earlier rows when published, whatever the ledger recorded."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from marketpipe.model import Family, Model
from marketpipe.stores.base import Capabilities, ExportQuery, ReplacingTransaction, TableStatus, TimeRange


class _Sink:
    def __init__(self, store: ArrowStore, family: Family, chunk_id: int) -> None:
        self._store, self._family, self._id = store, family, chunk_id
        self._tables: list[pa.Table] = []

    def write(self, table: pa.Table) -> None:
        self._tables.append(table)

    def commit(self) -> None:
        rows = pa.concat_tables([self._family.arrow_schema.empty_table(), *self._tables])
        self._store.tables.setdefault(self._family.table, {})[self._id] = rows

    def published(self) -> None:
        """``commit`` replaced the chunk's rows already."""

    def close(self) -> None:
        self._tables = []


class ArrowStore:
    location = "memory"
    mode = "arrow"
    capabilities = Capabilities(atomic_chunks=False, concurrent_writers=False, threaded_writers=False)

    def __init__(self, model: Model) -> None:
        self.model = model
        self.tables: dict[str, dict[int, pa.Table]] = {}  # table -> chunk id -> rows

    def open_chunk(self, family: Family, chunk_id: int, earlier: TimeRange | None) -> _Sink:
        return _Sink(self, family, chunk_id)

    def verify(self, family: Family, expected: Mapping[int, int], repair: bool) -> dict[int, str]:
        held = {chunk: rows.num_rows for chunk, rows in self.tables.get(family.table, {}).items()}
        return {c: f"{held.get(c, 0)} rows" for c, n in expected.items() if held.get(c, 0) != n}

    def drop_covered(self, family: Family, schema: str, tx: ReplacingTransaction) -> None:
        """Published at once: memory holds no transaction (the ledger commits after)."""
        chunks = self.tables.get(family.table, {})
        for chunk_id in tx.replaced:
            rows = chunks.get(chunk_id)
            if rows is None:
                continue
            time = rows[family.time_column].cast(pa.int64())
            inside = pa.array([False] * rows.num_rows)
            for instrument, start, end in tx.spans:
                hit = pc.and_(pc.greater_equal(time, start), pc.less(time, end))
                if instrument is not None:
                    hit = pc.and_(hit, pc.equal(rows["instrument_id"], instrument))
                inside = pc.or_(inside, hit)
            dropped = pc.sum(inside.cast(pa.int64())).as_py() or 0
            if dropped:
                chunks[chunk_id] = rows.filter(pc.invert(inside))
                tx.dropped[chunk_id] = dropped

    def _rows(self, family: Family) -> pa.Table:
        chunks = self.tables.get(family.table, {}).values()
        return pa.concat_tables([family.arrow_schema.empty_table(), *chunks])

    def export(self, query: ExportQuery, batch_size: int) -> Iterator[pa.RecordBatch]:
        table = self._rows(query.family)
        time = table[query.family.time_column].cast(pa.int64())
        keep = pc.is_valid(time)
        if "schema" in table.column_names:
            keep = pc.and_(keep, pc.equal(table["schema"], query.schema))
        if query.symbols:
            named = pc.is_in(table["symbol"], pa.array(list(query.symbols)))
            for instrument_id, first_ns, end_ns in query.instruments:
                during = pc.and_(pc.greater_equal(time, first_ns), pc.less(time, end_ns))
                named = pc.or_(named, pc.and_(pc.equal(table["instrument_id"], instrument_id), during))
            keep = pc.and_(keep, named)
        if query.start_ns is not None:
            keep = pc.and_(keep, pc.greater_equal(time, query.start_ns))
        if query.end_ns is not None:
            keep = pc.and_(keep, pc.less(time, query.end_ns))
        yield from table.filter(keep).sort_by(query.family.time_column).to_batches(batch_size)

    def day_counts(self, query: ExportQuery) -> list[tuple[str | None, int, int]]:
        rows = pa.Table.from_batches(list(self.export(query, 1 << 20)), schema=query.family.arrow_schema)
        days = pc.divide(rows[query.family.time_column].cast(pa.int64()), 86_400 * 10**9)
        counts = (
            pa.table({"symbol": rows["symbol"], "day": days})
            .group_by(["symbol", "day"])
            .aggregate([("day", "count")])
        )
        return [(r["symbol"], r["day"], r["day_count"]) for r in counts.to_pylist()]

    def symbol_ranges(self, symbols: Sequence[str]) -> dict[str, list[tuple[int, int, int]]]:
        """No definitions table and no symbology of its own: the ledger's alone would do."""
        return {}

    def table_status(self, family: Family) -> TableStatus:
        time = self._rows(family)[family.time_column].cast(pa.int64())
        bounds = pc.min_max(time)
        return TableStatus(
            family.table, family.time_column, len(time), bounds["min"].as_py(), bounds["max"].as_py()
        )

    def close(self) -> None:
        self.tables.clear()

    def reconnect(self) -> None:
        """Memory has no connection to lose."""
