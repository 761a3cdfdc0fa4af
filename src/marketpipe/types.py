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
class SymbolInterval:
    """Point-in-time symbology: ``symbol`` of symbology type ``stype`` (raw_symbol, parent,
    continuous, ...) stands for ``instrument_id`` of ``dataset`` over [start, end) in ns."""

    dataset: str
    stype: str
    symbol: str
    instrument_id: int
    start_ns: int
    end_ns: int


Span = tuple[int | None, int, int]  # instrument_id (None: every instrument), start, end ns


@dataclass(frozen=True)
class Coverage:
    """What an input (a historical response or file) holds every record of, by Databento's
    guarantee for a request of (dataset, schema, instruments, [start, end)): each span is an
    instrument (None: every instrument of the dataset) over [start, end) in nanoseconds of the
    index time. Storing the input replaces whatever the store holds in its spans.

    ``complete`` is False for an input that holds only its own records: a live recording (the
    gateway may drop records), a file cut by a ``limit``. It replaces nothing but its own
    earlier rows, and a complete input of the same instruments and time replaces its rows."""

    dataset: str
    spans: tuple[Span, ...]
    complete: bool = True
    # What the input's symbols stood for (its metadata's mappings).
    symbology: tuple[SymbolInterval, ...] = ()


NOTHING = Coverage("", (), complete=False)


@dataclass(frozen=True)
class Chunk:
    """A unit of work: writing the same ``key`` again replaces what it stored before.

    ``input_key`` names the input the chunk is a part of (a file's schema, an API download):
    once all its parts are stored, the input's ``coverage`` replaces the rows other inputs
    stored there."""

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
    input_key: str = ""  # empty: the chunk is its input
    coverage: Coverage = field(default=NOTHING, compare=False, repr=False)

    @property
    def input(self) -> str:
        return self.input_key or self.key


@dataclass(frozen=True)
class RawBatch:
    """Records in the DBN v3 layout of the chunk's family, with their resolved symbols."""

    records: np.ndarray
    symbols: pa.Array
    # Live data recorded with ts_out: the gateway's send time after each record.
    ts_out: np.ndarray | None = None


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
    # What the requested symbols (parent, continuous) and their contracts stand for, from
    # symbology resolution.
    symbology: list[SymbolInterval] = field(default_factory=list)


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
    attempts: int = 1  # 2 and more: re-run after a transient store fault


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
    notes: list[str] = field(default_factory=list)  # e.g. what is already stored, left out
