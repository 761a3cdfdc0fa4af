"""A store of another kind, as a package outside marketpipe would add one: this module and one
entry point (``marketpipe.stores``: ``arrow = arrow_store:KIND``, in the dist-info beside it,
found because the tests put this directory on ``sys.path``). Nothing in marketpipe names it.

Its data side keeps each chunk's rows in one Arrow IPC file, ``DIR/<table>/<chunk id>.arrow``;
its ledger is the SQL ledger in a DuckDB file, ``DIR/ledger.duckdb``, opened through the
registry. Rows and ledger are not in one transaction (``atomic_chunks=False``): a chunk's file
replaces the chunk's earlier rows when it is published, before the ledger marks it done; a
replacement by coverage is renamed into place once the ledger has committed. Reads load the
files into an in-memory DuckDB store and ask it, so every read answers as the SQL stores do."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import ipc

from marketpipe.components import StoreConfig
from marketpipe.errors import StoreRejected
from marketpipe.model import Family, Model
from marketpipe.registry import StoreKind
from marketpipe.stores import open_ledger
from marketpipe.stores.base import (
    SYMBOLOGY_TABLE,
    Capabilities,
    ExportQuery,
    ReplacingTransaction,
    Store,
    TableStatus,
    TimeRange,
)
from marketpipe.stores.duckdb import DuckDBStore

LEDGER = "ledger.duckdb"


def _directory(address: str) -> str:
    if not address.strip():
        raise ValueError("arrow: needs a directory, e.g. arrow:data/arrow")
    return str(Path(address).expanduser().absolute())


KIND = StoreKind(
    "arrow", ("arrow:",), "arrow_store",
    concurrent_writers=False, holds_ledger=False, embedded=False, normalize=_directory,
    example="arrow:DIR", title="Arrow", noun="an Arrow IPC directory",
)  # fmt: skip


def _write(path: Path, table: pa.Table) -> None:
    """The file written beside its place, then renamed into it (a reader sees old or new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with ipc.new_file(temporary, table.schema) as writer:
        writer.write_table(table)
    os.replace(temporary, path)


def _read(path: Path) -> pa.Table:
    with ipc.open_file(path) as reader:
        return reader.read_all()


class _Sink:
    def __init__(self, store: ArrowStore, family: Family, chunk_id: int) -> None:
        self._store, self._family, self._id = store, family, chunk_id
        self._tables: list[pa.Table] = []

    def write(self, table: pa.Table) -> None:
        self._tables.append(table)

    def commit(self) -> None:
        rows = pa.concat_tables([self._family.arrow_schema.empty_table(), *self._tables])
        _write(self._store.file(self._family, self._id), rows)

    def published(self) -> None:
        """``commit`` replaced the chunk's rows already."""

    def close(self) -> None:
        self._tables = []


class ArrowStore:
    mode = "arrow"
    capabilities = Capabilities(atomic_chunks=False, concurrent_writers=False, threaded_writers=False)

    def __init__(self, location: str, root: Path, ledger: DuckDBStore, model: Model) -> None:
        self.location = location
        self.model = model
        self._root = root
        self._ledger = ledger

    def file(self, family: Family, chunk_id: int) -> Path:
        return self._root / family.table / f"{chunk_id}.arrow"

    def _chunks(self, family: Family) -> dict[int, pa.Table]:
        folder = self._root / family.table
        files = sorted(folder.glob("*.arrow")) if folder.is_dir() else []
        return {int(f.stem): _read(f) for f in files}

    def open_chunk(self, family: Family, chunk_id: int, earlier: TimeRange | None) -> _Sink:
        return _Sink(self, family, chunk_id)

    def verify(self, family: Family, expected: Mapping[int, int], repair: bool) -> dict[int, str]:
        held = {chunk: rows.num_rows for chunk, rows in self._chunks(family).items()}
        return {c: f"{held.get(c, 0)} rows" for c, n in expected.items() if held.get(c, 0) != n}

    def drop_covered(self, family: Family, schema: str, tx: ReplacingTransaction) -> None:
        """Each replaced chunk's file without the rows inside the spans, renamed into place once
        the ledger has committed (and dropped if it rolls back)."""
        chunks = self._chunks(family)
        for chunk_id in tx.replaced:
            rows = chunks.get(chunk_id)
            if rows is None:
                continue
            time = rows[family.time_column].cast(pa.int64())
            inside = pa.array([False] * rows.num_rows, type=pa.bool_())
            for instrument, start, end in tx.spans:
                hit = pc.and_(pc.greater_equal(time, start), pc.less(time, end))
                if instrument is not None:
                    hit = pc.and_(hit, pc.equal(rows["instrument_id"], instrument))
                if "schema" in rows.column_names:
                    hit = pc.and_(hit, pc.equal(rows["schema"], schema))
                inside = pc.or_(inside, hit)
            dropped = pc.sum(inside.cast(pa.int64())).as_py() or 0
            if dropped:
                path = self.file(family, chunk_id)
                kept = path.with_name(path.name + ".kept")
                with ipc.new_file(kept, rows.schema) as writer:
                    writer.write_table(rows.filter(pc.invert(inside)))
                tx.committed.append(partial(os.replace, kept, path))
                tx.rolled_back.append(partial(kept.unlink, missing_ok=True))
                tx.dropped[chunk_id] = dropped

    def _engine(self, families: Sequence[Family]) -> DuckDBStore:
        """An in-memory DuckDB store holding these families' rows and the ledger's symbology."""
        engine = DuckDBStore(":memory:", model=self.model)
        for family in families:
            for chunk_id, rows in self._chunks(family).items():
                naive = pa.schema(
                    [
                        f.with_type(pa.timestamp(f.type.unit)) if pa.types.is_timestamp(f.type) else f
                        for f in rows.schema
                    ]
                )
                engine.con.register("chunk_rows", rows.cast(naive))
                engine.con.execute(
                    f'INSERT INTO "{family.table}" BY NAME SELECT *, {chunk_id} AS chunk_id FROM chunk_rows'
                )
                engine.con.unregister("chunk_rows")
        symbology = self._ledger.fetch(self._ledger.symbology_select)
        engine.execute_many(f"INSERT INTO {SYMBOLOGY_TABLE} VALUES (%s, %s, %s, %s, %s, %s)", symbology)
        return engine

    def _definitions(self) -> list[Family]:
        return [f for f in self.model.families.values() if "definition" in f.schemas]

    def export(self, query: ExportQuery, batch_size: int) -> Iterator[pa.RecordBatch]:
        with closing(self._engine([query.family])) as engine:
            yield from engine.export(query, batch_size)

    def day_counts(self, query: ExportQuery) -> list[tuple[str | None, int, int]]:
        with closing(self._engine([query.family])) as engine:
            return engine.day_counts(query)

    def symbol_ranges(self, symbols: Sequence[str]) -> dict[str, list[tuple[int, int, int]]]:
        with closing(self._engine(self._definitions())) as engine:
            return engine.symbol_ranges(symbols)

    def table_status(self, family: Family) -> TableStatus:
        with closing(self._engine([family])) as engine:
            return engine.table_status(family)

    def close(self) -> None:
        """Files hold nothing open."""

    def reconnect(self) -> None:
        """Files have no connection to lose."""


def open_store(config: StoreConfig, model: Model, read_only: bool) -> Store:
    root = Path(KIND.address(config.location))
    if read_only and not (root / LEDGER).is_file():
        raise StoreRejected(f"no marketpipe store at {config.location}: nothing has been ingested there")
    ledger = open_ledger(config.at(str(root / LEDGER)), read_only)
    assert isinstance(ledger, DuckDBStore)  # a DuckDB file's ledger
    return Store(ArrowStore(config.location, root, ledger, model), ledger)
