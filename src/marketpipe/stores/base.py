"""The store interface every backend implements (DuckDB, PostgreSQL), and its shared types."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from marketpipe.model import Family, Model
from marketpipe.types import Chunk, ChunkCounts, Rejection, RunStatus

CHUNKS_TABLE = "marketpipe_chunks"
RUNS_TABLE = "marketpipe_runs"
QUARANTINE_TABLE = "marketpipe_quarantine"
MIGRATIONS_TABLE = "marketpipe_migrations"


class ChunkAlreadyStored(Exception):
    """Another run stored the chunk while this one waited for it: nothing to do."""


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


class ChunkWriter(Protocol):
    def write(self, table: pa.Table) -> None: ...

    def quarantine(self, rejections: Sequence[Rejection]) -> None: ...

    def commit(self, counts: ChunkCounts) -> None:
        """Make the chunk's rows visible and mark it done, atomically."""
        ...


class Store(Protocol):
    location: str
    mode: str
    model: Model

    def close(self) -> None: ...

    def reconnect(self) -> None:
        """Drop a connection a transient fault broke and open a new one."""
        ...

    def is_done(self, chunk: Chunk) -> bool: ...

    def plan_chunks(self, chunks: Sequence[Chunk], job: str) -> None:
        """Record planned chunks as pending (chunks already known keep their state)."""
        ...

    def write_chunk(
        self, chunk: Chunk, run_id: str, job: str, force: bool = False
    ) -> AbstractContextManager[ChunkWriter]:
        """Replace whatever an earlier write of ``chunk`` stored; uncommitted work is rolled back.

        One writer at a time per chunk, across processes: a run that finds the chunk stored by
        another once it has it raises ChunkAlreadyStored (unless ``force``)."""
        ...

    def mark_failed(self, chunk: Chunk, run_id: str, job: str, error: str) -> None: ...

    def mark_done(self, chunk: Chunk, run_id: str, job: str, counts: ChunkCounts) -> None:
        """A chunk stored as parts, each in its own transaction: all of them are done."""
        ...

    def forget_failure(self, chunk: Chunk) -> None:
        """Drop a failed progress row that a later run made obsolete."""
        ...

    def start_run(self, run_id: str, job: str) -> None: ...

    def finish_run(self, run_id: str, status: RunStatus, counts: ChunkCounts, failed: int) -> None: ...

    def export(self, query: ExportQuery, batch_size: int) -> Iterator[pa.RecordBatch]: ...

    def status(self) -> StoreStatus: ...

    def quarantined(self, query: QuarantineQuery) -> list[QuarantinedRecord]:
        """Quarantined records, oldest first."""
        ...
