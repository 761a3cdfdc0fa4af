"""What every source gives the pipeline: a plan of chunks, and raw record batches per chunk."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from marketpipe.types import Chunk, Estimate, Plan, RawBatch, Span


@dataclass(frozen=True)
class Fetched:
    """A chunk whose data is at hand: ``[chunk]``, or the parts it turned out to hold (each
    stored in its own transaction); or, with no parts, why its data cannot be had."""

    chunk: Chunk
    parts: list[Chunk]
    error: str | None = None


class Stored(Protocol):
    """What the store already holds for good: a source plans only what is missing."""

    def covered(self, dataset: str, schema: str, start_ns: int, end_ns: int) -> list[Span]:
        """Spans of whole inputs of the dataset's schema that meet [start, end) (ns)."""
        ...


class Source(Protocol):
    def plan(self, stored: Stored | None = None) -> Plan:
        """The chunks to fetch; a source that pays for data leaves out what ``stored`` holds
        (None: nothing is, as for ``--force``)."""
        ...

    def fetch(self, chunks: Iterable[Chunk]) -> Iterator[Fetched]:
        """Each chunk in order once its data is at hand. ``chunks`` is drawn lazily (the caller
        leaves out chunks already stored as it goes): a source may draw the next one and fetch
        it while the caller stores the one just yielded."""
        ...

    def read(self, chunk: Chunk, batch_size: int) -> Iterator[RawBatch]:
        """Raw batches of at most ``batch_size`` records; raises SourceError on bad input."""
        ...

    def finish(self, chunk: Chunk, committed: bool) -> None:
        """The chunk is over (stored when ``committed``): release what reading it needed."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Quoting(Protocol):
    """A source that can price its plan before fetching anything (``ingest --dry-run``)."""

    def estimate(self, stored: Stored | None = None) -> Estimate: ...


@runtime_checkable
class Throttled(Protocol):
    """A source whose downloads share a limit with every process of a run (a cluster's
    workers): it holds ``download_slot()`` for each download, and the cluster hands it one
    slot of a cluster-wide semaphore (by default a slot is always free)."""

    download_slot: Callable[[], AbstractContextManager[object]]
