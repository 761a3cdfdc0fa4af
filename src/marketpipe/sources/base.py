"""What every source gives the pipeline: a plan of chunks, and raw record batches per chunk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from marketpipe.types import Chunk, Estimate, Plan, RawBatch


class Source(Protocol):
    def plan(self) -> Plan: ...

    def read(self, chunk: Chunk, batch_size: int) -> Iterator[RawBatch]:
        """Raw batches of at most ``batch_size`` records; raises SourceError on bad input."""
        ...

    def prefetch(self, chunk: Chunk) -> None:
        """A hint: ``chunk`` comes next and is not done; a source may start fetching it now."""
        ...

    def parts(self, chunk: Chunk) -> list[Chunk]:
        """``[chunk]``, or the parts it turns out to hold once its data is at hand (each its own
        transaction); raises SourceError when the data cannot be had."""
        ...

    def finish(self, chunk: Chunk, committed: bool) -> None:
        """The chunk is over (stored when ``committed``): release what reading it needed."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Quoting(Protocol):
    """A source that can price its plan before fetching anything (``ingest --dry-run``)."""

    def estimate(self) -> Estimate: ...
