"""The words every stage shares: units of work, record batches, plans, rejections, counts
and statuses. It imports nothing from marketpipe, so every stage may use it and it depends on
none: the CLI uses the pipeline, the pipeline the stages, the stages the model and these."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pyarrow as pa


class ChunkStatus(StrEnum):
    """A chunk's state in the ledger; ``skipped`` is only ever a run's result, and
    ``interrupted`` only what ``status`` shows of a ``running`` chunk whose run is gone: neither
    is stored."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"


class RunStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    PARTIAL = "partial"  # some inputs or chunks failed; the others are stored
    STOPPED = "stopped"  # the store went away for good
    INTERRUPTED = "interrupted"  # Ctrl-C, or (seen by status) its process is gone


# Records per store transaction: bounds what one transaction holds (DuckDB keeps a
# transaction's rows in memory) and lets a crashed run resume inside a large input. Part of
# every part's key: changing it would make old and new parts different chunks.
PART_RECORDS = 1_000_000


def record_parts(records: int, size: int) -> list[tuple[int, int]]:
    """(first record, record count) of each part of ``records`` records."""
    return [(first, min(size, records - first)) for first in range(0, max(records, 1), size)]


@dataclass(frozen=True)
class Chunk:
    """A unit of work: writing the same ``key`` again replaces what it stored before."""

    key: str
    schema: str
    label: str
    dataset: str = ""  # Databento's dataset code, for coverage against its exchange calendar
    # Event-time window the records must fall in, nanoseconds, [start, end); None: unbounded.
    start_ns: int | None = None
    end_ns: int | None = None
    # For a part of a file: its records first_record .. first_record + record_count.
    first_record: int = 0
    record_count: int | None = None


@dataclass(frozen=True)
class RawBatch:
    """Records in the DBN v3 layout of the chunk's family, with their resolved symbols."""

    records: np.ndarray
    symbols: pa.Array
    # Live data recorded with ts_out: the gateway's send time after each record.
    ts_out: np.ndarray | None = None


@dataclass(frozen=True)
class Instrument:
    """A contract's own (raw) symbol for an instrument id of a dataset, over [start, end)."""

    dataset: str
    instrument_id: int
    raw_symbol: str
    start_ns: int
    end_ns: int


@dataclass
class Plan:
    chunks: list[Chunk] = field(default_factory=list)
    # Inputs that could not even be planned (bad files): (label, reason).
    failures: list[tuple[str, str]] = field(default_factory=list)
    # Inputs that were planned, so an earlier failure of theirs is history.
    inputs: list[str] = field(default_factory=list)
    # What the user should know before trusting the result (e.g. symbols found for part of the range).
    warnings: list[str] = field(default_factory=list)
    # Inputs not planned because another input of the run holds the same data: (input, same as).
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    # Worth saying, not a warning (e.g. a live recording's system messages).
    notes: list[str] = field(default_factory=list)
    # Contracts behind the requested symbols (parent, continuous), from symbology resolution.
    instruments: list[Instrument] = field(default_factory=list)


@dataclass(frozen=True)
class Rejection:
    stage: str
    rule: str
    message: str
    record: str  # the full record as JSON: every field, exact integers and decimals


@dataclass(frozen=True)
class ChunkCounts:
    read: int
    stored: int
    quarantined: int
    seconds: float


@dataclass(frozen=True)
class Quote:
    """What a source's provider says a plan would cost, per schema."""

    schema: str
    records: int
    billable_bytes: int
    cost_usd: float


@dataclass(frozen=True)
class Estimate:
    """A plan priced before anything is fetched: quotes, requests, and what to warn about."""

    quotes: list[Quote]
    requests: int
    warnings: list[str]
