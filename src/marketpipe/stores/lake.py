"""A Parquet lake: one directory per table, hive partitions by UTC day of the index time
(``trades/day=2024-03-04/``), written by any number of processes at once; its ledger (chunks,
runs, quarantine, and the list of the lake's files) is a DuckDB file or a PostgreSQL database.

A chunk's files are written under temporary names (``_<name>.parquet.tmp``: Spark, pyarrow
datasets and ``*.parquet`` globs skip them), renamed to their final names, and listed in the
ledger in the transaction that marks the chunk done. marketpipe reads the files the ledger
lists, so a chunk appears whole or not at all; a new write of a chunk lists its new files in
place of the old ones, which are deleted once the ledger has committed. Files are those
``export`` writes: the model's Arrow types (nanosecond UTC timestamps, decimal prices), zstd.

Locations are local directories or fsspec URLs (``lake:s3://bucket/prefix`` with s3fs
installed); DuckDB reads them, through fsspec where they are not local.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import IO, cast

import duckdb
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import structlog
from fsspec.implementations.local import LocalFileSystem

import marketpipe.stores.catalog as catalog
import marketpipe.stores.migrations as migrations
import marketpipe.stores.sql as sql
from marketpipe.components import StoreConfig
from marketpipe.config import missing_filesystem
from marketpipe.defaults import DUCKDB_MEMORY_LIMIT
from marketpipe.errors import StoreError, StoreRejected
from marketpipe.model import Family, Model
from marketpipe.registry import kind_of
from marketpipe.stores import open_ledger
from marketpipe.stores.base import (
    SYMBOLOGY_TABLE,
    Capabilities,
    Connected,
    ExportQuery,
    ReplacingTransaction,
    Store,
    TableStatus,
    TimeRange,
)
from marketpipe.stores.duckdb import DuckDBStore, integer_type
from marketpipe.symbology import NS_PER_DAY
from marketpipe.types import Span

log = structlog.get_logger("marketpipe.lake")

FILES_TABLE = "marketpipe_lake_files"
FILES_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {FILES_TABLE} (
  path TEXT PRIMARY KEY,
  table_name TEXT NOT NULL,
  chunk_id BIGINT NOT NULL,
  rows BIGINT NOT NULL,
  first_ns BIGINT NOT NULL,
  last_ns BIGINT NOT NULL
)""",
    f"CREATE INDEX IF NOT EXISTS marketpipe_lake_files_chunk ON {FILES_TABLE} (chunk_id)",
    # Each file's size and SHA-256 as written, for ``verify`` (files listed before: none).
    f"ALTER TABLE {FILES_TABLE} ADD COLUMN IF NOT EXISTS bytes BIGINT",
    f"ALTER TABLE {FILES_TABLE} ADD COLUMN IF NOT EXISTS sha256 TEXT",
)
LIST_FILE = f"""INSERT INTO {FILES_TABLE} (path, table_name, chunk_id, rows, first_ns, last_ns, bytes, sha256)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"""
# A file is closed once this much Arrow data went in: zstd Parquet is a fraction of it, so
# files stay at about 200 MB at most (README, "Measurements behind the code").
FILE_ARROW_BYTES = 512 << 20
DEFAULT_LEDGER = "_marketpipe/ledger.duckdb"  # under a local lake's directory

# The DuckDB type each column of a lake file reads as (an empty table's view declares them).
column_type = sql.column_types("DECIMAL(19, 9)", "TIMESTAMPTZ_NS", "VARCHAR", integer_type)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class _Hashed(io.RawIOBase):
    """A file being written, hashed as its bytes go by (the file is never read back)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.sha256.update(data)
        self._raw.write(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


@dataclass
class _File:
    """One Parquet file of a chunk: written under ``temporary``, published as ``path``."""

    path: str  # relative to the lake's root
    temporary: str
    writer: pq.ParquetWriter | None
    stream: _Hashed
    rows: int = 0
    arrow_bytes: int = 0
    first_ns: int = 2**63 - 1
    last_ns: int = -(2**63)


class _LakeSink:
    """A chunk's rows into day files, encoded on a background thread (pyarrow releases the GIL
    while it compresses) while the pipeline reads and checks the next rows."""

    def __init__(self, lake: LakeStore, family: Family, chunk_id: int) -> None:
        self._lake = lake
        self._family = family
        self._id = chunk_id
        self._prefix = f"{chunk_id & (2**64 - 1):016x}"  # every file of the chunk starts so
        self._token = uuid.uuid4().hex[:12]
        self._open: dict[str, _File] = {}  # day -> file being written
        self._files: list[_File] = []
        self._superseded: list[str] = []
        self._background = sql.Background()
        self._published = False

    def write(self, table: pa.Table) -> None:
        self._background.submit(self._write_days, table)

    def _write_days(self, table: pa.Table) -> None:
        table = table.cast(self._family.arrow_schema)
        times = table[self._family.time_column].cast(pa.int64()).to_numpy()
        days = times // NS_PER_DAY
        unique = np.unique(days)
        if len(unique) == 1:
            self._write(int(unique[0]), table, times)
            return
        for day in unique:
            mask = days == day
            self._write(int(day), table.filter(pa.array(mask)), times[mask])

    def _write(self, day: int, rows: pa.Table, times: np.ndarray) -> None:
        label = str(np.datetime64(day, "D"))
        file = self._open.get(label)
        if file is None:
            file = self._start(label)
        assert file.writer is not None
        file.writer.write_table(rows)
        file.rows += rows.num_rows
        file.arrow_bytes += rows.nbytes
        file.first_ns, file.last_ns = (
            min(file.first_ns, int(times.min())),
            max(file.last_ns, int(times.max())),
        )
        if file.arrow_bytes >= FILE_ARROW_BYTES:
            self._end(label)

    def _start(self, day: str) -> _File:
        folder = f"{self._family.table}/day={day}"
        name = f"{self._prefix}-{self._token}-{len(self._files)}.parquet"
        temporary = self._lake.full(f"{folder}/_{name}.tmp")
        self._lake.fs.makedirs(self._lake.full(folder), exist_ok=True)
        stream = _Hashed(self._lake.fs.open(temporary, "wb"))
        writer = pq.ParquetWriter(stream, self._family.arrow_schema, compression="zstd")
        file = _File(f"{folder}/{name}", temporary, writer, stream)
        self._files.append(file)
        self._open[day] = file
        return file

    def _end(self, day: str) -> None:
        file = self._open.pop(day)
        if file.writer is not None:
            file.writer.close()
            file.writer = None
            file.stream.close()

    def commit(self) -> None:
        """Files under their final names, listed in the ledger's open chunk transaction in place
        of the chunk's earlier ones (which stay on disk until the ledger has committed)."""
        self._background.wait()
        for day in list(self._open):
            self._end(day)
        lake = self._lake
        for file in self._files:
            lake.fs.mv(file.temporary, lake.full(file.path))
        ledger = lake.ledger
        where = [self._family.table, self._id]
        chunk_files = f"FROM {FILES_TABLE} WHERE table_name = %s AND chunk_id = %s"
        earlier = {str(p) for (p,) in ledger.fetch(f"SELECT path {chunk_files}", where)}
        ledger.execute(f"DELETE {chunk_files}", where)
        ledger.execute_many(
            LIST_FILE,
            [
                (f.path, *where, f.rows, f.first_ns, f.last_ns, f.stream.tell(), f.stream.sha256.hexdigest())
                for f in self._files
            ],
        )
        self._superseded = sorted(earlier - {f.path for f in self._files})

    def published(self) -> None:
        """The ledger lists the new files: delete the ones they replace, and what stopped
        writes of the chunk left in the days it wrote (best effort: the ledger is the truth)."""
        self._published = True
        lake = self._lake
        current = {f.path for f in self._files}
        folders = {p.rsplit("/", 1)[0] for p in [*current, *self._superseded]}
        leftovers = set(self._superseded)
        for folder in folders:
            with suppress(OSError):
                for found in lake.fs.glob(lake.full(f"{folder}/*{self._prefix}-*")):
                    relative = f"{folder}/{found.rsplit('/', 1)[-1]}"
                    if relative not in current:
                        leftovers.add(relative)
        for path in sorted(leftovers):
            try:
                lake.fs.rm(lake.full(path))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("lake.cleanup_failed", path=path, reason=str(exc))

    def close(self) -> None:
        """A chunk that failed before its files were renamed deletes them. Renamed files stay
        when the ledger's commit did not come back (it may have gone through: deleting them
        could lose a done chunk's rows); the next write of the chunk deletes those the ledger
        does not list."""
        self._background.close()
        for file in self._files:
            if file.writer is not None:
                with suppress(Exception):
                    file.writer.close()
                with suppress(Exception):
                    file.stream.close()
            if not self._published:
                with suppress(OSError):
                    self._lake.fs.rm(file.temporary)


class _LakeTables(DuckDBStore):
    """The lake as DuckDB reads it: an in-memory database whose tables are views of the files
    the ledger lists, so every read (export, query, coverage) is the SQL store's."""

    def __init__(self, lake: LakeStore, memory_limit: str) -> None:
        self._lake = lake
        self.readable_roots = (lake.url(""),)
        super().__init__(":memory:", memory_limit, model=lake.model)

    def _prepare(self, read_only: bool) -> None:
        if not isinstance(self._lake.fs, LocalFileSystem):
            self.con.register_filesystem(self._lake.fs)
        self.con.execute(sql.SYMBOLOGY_DDL)  # the symbology; views come with each read's ``refresh``

    def refresh(
        self, families: Sequence[Family], start_ns: int | None = None, end_ns: int | None = None
    ) -> _LakeTables:
        """Views of the files the ledger lists now (a chunk committed since is read too) for
        the tables of ``families``, with rows in [start_ns, end_ns) where given, so a day's
        export opens that day's files only."""
        lake = self._lake
        listed = f"SELECT table_name, path FROM {FILES_TABLE} WHERE table_name = ANY(%s)"
        params: list[object] = [[f.table for f in families]]
        if start_ns is not None:
            listed, params = listed + " AND last_ns >= %s", [*params, start_ns]
        if end_ns is not None:
            listed, params = listed + " AND first_ns < %s", [*params, end_ns]
        files: dict[str, list[str]] = {}
        listed += " ORDER BY path"
        for table, path in lake.ledger.fetch(listed, params):
            files.setdefault(str(table), []).append(lake.url(str(path)))
        for each in families:
            self.con.execute(self._view(each, files.get(each.table, [])))
        return self

    def refresh_instruments(self) -> _LakeTables:
        """The symbology the ledger keeps now, beside the lake's definitions: what
        ``symbol_ranges`` and a user's query read (an export is handed the ranges)."""
        symbology = self._lake.ledger.fetch(self._lake.ledger.symbology_select)
        self.con.execute(f"DELETE FROM {SYMBOLOGY_TABLE}")
        self.execute_many(f"INSERT INTO {SYMBOLOGY_TABLE} VALUES (%s, %s, %s, %s, %s, %s)", symbology)
        return self

    def _view(self, family: Family, files: list[str]) -> str:
        name = sql.identifier(family.table)
        if files:
            columns = ", ".join(sql.identifier(c) for c in family.column_names)
            listed = "[" + ", ".join(_literal(f) for f in files) + "]"
            source = f"read_parquet({listed}, hive_partitioning = false)"
            return f"CREATE OR REPLACE VIEW {name} AS SELECT {columns} FROM {source}"
        empty = ", ".join(
            f"CAST(NULL AS {column_type(c)}) AS {sql.identifier(c.name)}" for c in family.columns
        )
        return f"CREATE OR REPLACE VIEW {name} AS SELECT {empty} WHERE false"


def _inside(table: pa.Table, family: Family, schema: str, spans: Sequence[Span]) -> np.ndarray:
    """Which rows of ``table`` lie inside ``spans`` (and are of ``schema``, where the table
    holds several)."""
    times = table[family.time_column].cast(pa.int64()).to_numpy()
    instruments = table["instrument_id"].to_numpy()
    inside = np.zeros(table.num_rows, dtype=bool)
    for (start, end), ids in sql.span_ranges(spans).items():
        hit = (times >= start) & (times < end)
        if ids is not None:
            hit &= np.isin(instruments, ids)
        inside |= hit
    if "schema" in family.column_names:
        inside &= np.asarray(table["schema"].to_pylist(), dtype=object) == schema
    return inside


def filesystem(root: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The lake's filesystem and its path there; a URL whose filesystem is not installed, or
    that fsspec cannot parse, is refused in one line."""
    try:
        fs, path = fsspec.core.url_to_fs(root)
    except ImportError as exc:
        raise StoreRejected(f"cannot open the lake {root}: {missing_filesystem(root, exc)}") from None
    except ValueError as exc:
        raise StoreRejected(f"cannot open the lake {root}: {exc}") from None
    return fs, path


class LakeStore:
    """The lake's data side; its ``ledger`` is a SQL ledger of its own."""

    mode = "lake"

    def __init__(
        self, location: str, ledger: sql.SqlLedger, model: Model, memory_limit: str = DUCKDB_MEMORY_LIMIT
    ):
        self.fs, self.root = filesystem(kind_of(location).address(location))
        self.location = location
        self.ledger = ledger
        self.model = model
        self._memory_limit = memory_limit
        # Processes write files side by side; the ledger orders their chunks where its kind
        # takes writers from several processes (a server; a DuckDB ledger has one writer
        # process, its threads each a connection).
        server = bool(kind_of(ledger.location).concurrent_writers)
        self.capabilities = Capabilities(atomic_chunks=True, concurrent_writers=server, threaded_writers=True)

    def full(self, path: str) -> str:
        """A path under the root, as the lake's filesystem names it."""
        return f"{self.root.rstrip('/')}/{path}"

    def url(self, path: str) -> str:
        """A path under the root, as DuckDB opens it (through fsspec unless it is local)."""
        full = self.full(path)
        return full if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(full)

    def another(self) -> Store:
        """A second writer: the same lake through a ledger connection of its own."""
        if not isinstance(self.ledger, Connected):
            raise TypeError(f"the ledger of {self.location} takes one writer at a time")
        ledger = cast(sql.SqlLedger, self.ledger.another().ledger)
        return Store(LakeStore(self.location, ledger, self.model, self._memory_limit), ledger)

    @cached_property
    def _tables(self) -> _LakeTables:
        return _LakeTables(self, self._memory_limit)

    def open_chunk(self, family: Family, chunk_id: int, earlier: TimeRange | None) -> _LakeSink:
        return _LakeSink(self, family, chunk_id)

    def drop_covered(self, family: Family, schema: str, tx: ReplacingTransaction) -> None:
        """Each listed file of ``tx.replaced``'s chunks that holds rows inside ``tx.spans`` is
        written again without them (under its chunk's prefix, so a later write of that chunk
        still finds it) and listed in its place in the ledger's open transaction; the old file
        goes once the ledger has committed, the new one if it rolls back."""
        low, high = min(s for _, s, _ in tx.spans), max(e for _, _, e in tx.spans)
        listed = self.ledger.fetch(
            f"SELECT path, chunk_id FROM {FILES_TABLE} WHERE table_name = %s AND chunk_id = ANY(%s)"
            " AND last_ns >= %s AND first_ns < %s ORDER BY path",
            [family.table, list(tx.replaced), low, high],
        )
        for path, owner in listed:
            table = pq.read_table(self.full(str(path)), filesystem=self.fs)
            drop = _inside(table, family, schema, tx.spans)
            if not drop.any():
                continue
            kept = table.filter(pa.array(~drop))
            self.ledger.execute(f"DELETE FROM {FILES_TABLE} WHERE path = %s", [path])
            if kept.num_rows:
                folder, name = str(path).rsplit("/", 1)
                new = f"{folder}/{name.split('-', 1)[0]}-{uuid.uuid4().hex[:12]}-r.parquet"
                temporary = self.full(f"{folder}/_{new.rsplit('/', 1)[1]}.tmp")
                with _Hashed(self.fs.open(temporary, "wb")) as stream:
                    pq.write_table(kept, stream, compression="zstd")
                self.fs.mv(temporary, self.full(new))
                times = kept[family.time_column].cast(pa.int64()).to_numpy()
                self.ledger.execute(
                    LIST_FILE,
                    [
                        new, family.table, owner, kept.num_rows, int(times.min()), int(times.max()),
                        stream.tell(), stream.sha256.hexdigest(),
                    ],
                )  # fmt: skip
                tx.rolled_back.append(partial(self._remove, new))
            tx.committed.append(partial(self._remove, str(path)))
            tx.dropped[int(owner)] = tx.dropped.get(int(owner), 0) + int(drop.sum())

    def verify(self, family: Family, expected: Mapping[int, int], repair: bool) -> dict[int, str]:
        """Each listed file is there, of its size as written, with a readable footer of its
        rows; each chunk's files hold its rows. With ``repair`` a damaged file is no longer
        listed (reads work again; its chunk is stored again by the next run)."""
        columns = {
            str(c)
            for (c,) in self.ledger.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
                " AND table_schema = current_schema()",
                [FILES_TABLE],
            )
        }
        recorded = ", ".join(c if c in columns else "NULL" for c in ("bytes", "sha256"))
        listed = self.ledger.fetch(
            f"SELECT path, chunk_id, rows, {recorded} FROM {FILES_TABLE} WHERE table_name = %s ORDER BY path",
            [family.table],
        )
        problems: dict[int, list[str]] = {}
        held: Counter[int] = Counter()
        for path, chunk, rows, written, digest in listed:
            problem = self._file_problem(str(path), int(rows), written, digest)
            if problem is None:
                held[int(chunk)] += int(rows)
            else:
                problems.setdefault(int(chunk), []).append(f"{path}: {problem}")
        if repair:
            damaged = [(p.split(": ", 1)[0],) for found in problems.values() for p in found]
            self.ledger.execute_many(f"DELETE FROM {FILES_TABLE} WHERE path = %s", damaged)
        reasons = {chunk: "; ".join(found) for chunk, found in problems.items()}
        for chunk, rows in expected.items():
            if chunk not in reasons and held[chunk] != rows:
                reasons[chunk] = (
                    f"{held[chunk]:,} rows in {family.table}'s listed files, the ledger says {rows:,}"
                )
        return reasons

    def _file_problem(self, path: str, rows: int, written: int | None, digest: str | None) -> str | None:
        """What is wrong with a listed file, if anything: missing, another size, other bytes
        (its SHA-256, where recorded), or a footer unreadable or of other rows."""
        full = self.full(path)
        try:
            if not self.fs.exists(full):
                return "missing"
            size = int(self.fs.size(full))
            if written is not None and size != written:
                return f"{size:,} bytes, {written:,} when written"
            if digest is not None:
                sha256 = hashlib.sha256()
                with self.fs.open(full, "rb") as file:
                    while block := file.read(1 << 20):
                        sha256.update(block)
                if sha256.hexdigest() != digest:
                    return "its bytes changed since it was written (SHA-256)"
            with self.fs.open(full, "rb") as file:
                found = pq.ParquetFile(file).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            return f"unreadable ({exc})"
        return None if found == rows else f"{found:,} rows, {rows:,} when written"

    def _remove(self, path: str) -> None:
        """Best effort: the ledger, not the directory, says which files hold the lake."""
        try:
            self.fs.rm(self.full(path))
        except OSError as exc:
            log.warning("lake.cleanup_failed", path=path, reason=str(exc))

    @contextmanager
    def _readable(self) -> Iterator[None]:
        """A read's error as one line; a listed file that is gone or damaged (removed or
        changed by hand: DuckDB's IO or invalid-input errors) with the remedy for that alone."""
        try:
            yield
        except duckdb.Error as exc:
            reason = str(exc).strip().splitlines()[0]
            remedy = ""
            if isinstance(exc, duckdb.IOException | duckdb.InvalidInputException):
                remedy = " (a listed file is missing or damaged; ingest its chunk again with --force)"
            raise StoreError(f"cannot read the lake {self.location}: {reason}{remedy}") from None

    def export(self, query: ExportQuery, batch_size: int) -> Iterator[pa.RecordBatch]:
        with self._readable():
            yield from self._tables.refresh([query.family], query.start_ns, query.end_ns).export(
                query, batch_size
            )

    def query(self, statement: str, batch_size: int, memory_limit: str | None = None) -> pa.RecordBatchReader:
        """As a DuckDB store's; the views live in a scratch database, so where a read-only file
        refuses a change, statements other than reads are refused here."""
        with self._readable():
            tables = self._tables.refresh(list(self.model.families.values())).refresh_instruments()
        return tables.query(statement, batch_size, memory_limit)

    def day_counts(self, query: ExportQuery) -> list[tuple[str | None, int, int]]:
        with self._readable():
            return self._tables.refresh([query.family], query.start_ns, query.end_ns).day_counts(query)

    def symbol_ranges(self, symbols: Sequence[str]) -> dict[str, list[tuple[int, int, int]]]:
        with self._readable():
            definitions = [f for f in self.model.families.values() if "definition" in f.schemas]
            return self._tables.refresh(definitions).refresh_instruments().symbol_ranges(symbols)

    def table_status(self, family: Family) -> TableStatus:
        """From the ledger's file list: no file is opened."""
        rows, first, last = self.ledger.fetch(
            f"SELECT coalesce(sum(rows), 0), min(first_ns), max(last_ns) FROM {FILES_TABLE}"
            " WHERE table_name = %s",
            [family.table],
        )[0]
        return TableStatus(family.table, family.time_column, int(rows), first, last)

    def close(self) -> None:
        if "_tables" in self.__dict__:
            self._tables.close()

    def reconnect(self) -> None:
        """Files have no connection to lose (the ledger reconnects on its own)."""


def _ledger(config: StoreConfig, root: str, read_only: bool) -> sql.SqlLedger:
    location = config.ledger
    if location is None:
        if "://" in root:
            raise StoreRejected(
                f"the lake {root} needs a ledger: give --ledger (a DuckDB file path or a postgresql:// URL)"
            )
        location = f"{root.rstrip('/')}/{DEFAULT_LEDGER}"
        if read_only and not Path(location).is_file():
            raise StoreRejected(f"no marketpipe lake at {root}: nothing has been ingested there")
    filesystem(root)  # before the ledger is opened (or made): a refused lake changes nothing
    return open_ledger(config.at(location), read_only)


def _prepare_ledger(ledger: sql.SqlLedger, model: Model, read_only: bool) -> None:
    """The ledger's file list, by the migration runner: made on first use; a reader needs it
    there and reports the step as pending where the ledger lacks it. A store's own database is
    no lake's ledger: its chunks would pass for the lake's."""
    tables = {
        str(t)
        for (t,) in ledger.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    }
    if tables & {f.table for f in model.families.values()}:
        raise StoreRejected(
            f"{ledger.location} holds a marketpipe store's tables: give the lake a ledger of its own"
        )
    # The lake's tables are its files: their definitions are kept in the ledger.
    pending = catalog.check(ledger.location, model, sql.recorded_definitions(ledger, tables))
    steps = [migrations.Migration(migrations.LAKE_FILES, migrations.statements(ledger, *FILES_DDL))]
    if read_only:
        if FILES_TABLE not in tables:
            raise StoreRejected(f"{ledger.location} is a marketpipe ledger but not of a lake")
        applied = migrations.recorded(ledger, tables)
        ledger.pending_migrations = sorted(
            [*ledger.pending_migrations, *map(str, migrations.pending(steps, applied))],
            key=lambda m: int(m.split()[0]),
        )
        return
    ledger.lock_schema()  # writers starting at once: one makes the file list, the others find it
    migrations.migrate(ledger, steps, migrations.recorded(ledger, tables))
    sql.record_definitions(ledger, pending)
    ledger.commit()


def open_store(config: StoreConfig, model: Model, read_only: bool) -> Store:
    root = kind_of(config.location).address(config.location)
    ledger = _ledger(config, root, read_only)
    try:
        _prepare_ledger(ledger, model, read_only)
        lake = LakeStore(config.location, ledger, model, config.memory_limit)
    except BaseException:
        ledger.close()
        raise
    return Store(lake, ledger)
