"""Local DBN files (``--from-file``): a file, a directory or a glob of .dbn / .dbn.zst."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import structlog

from marketpipe.errors import SourceError, UsageError
from marketpipe.sources.base import Chunk, Plan, RawBatch
from marketpipe.sources.dbn_reader import DbnFile

_SUFFIXES = (".dbn", ".dbn.zst")
log = structlog.get_logger("marketpipe.files")


def expand(spec: str) -> list[Path]:
    """The files a ``--from-file`` argument names, in a stable order."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES))
        if not files:
            raise UsageError(f"no .dbn or .dbn.zst files in directory {spec}")
        return files
    if path.is_file():
        return [path]
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UsageError(f"no files match {spec}")
        return files
    raise UsageError(f"no such file or directory: {spec}")


class DbnFileSource:
    """One chunk per file (a DBN file holds one schema), keyed by its decompressed content.

    The same data ingested again, renamed, or compressed differently, replaces its own rows.
    """

    def __init__(self, spec: str) -> None:
        self._paths = expand(spec)
        self._path_of: dict[str, Path] = {}

    def plan(self) -> Plan:
        plan = Plan()
        for path in self._paths:
            try:
                dbn = DbnFile(path)
                key = f"dbn:{dbn.digest()}:{dbn.schema}"
            except SourceError as exc:
                plan.failures.append((str(path), str(exc)))
                continue
            if key in self._path_of:
                log.info("input.duplicate", input=str(path), same_data_as=str(self._path_of[key]))
                continue
            self._path_of[key] = path
            plan.chunks.append(Chunk(key=key, schema=dbn.schema, label=str(path), dataset=dbn.dataset))
        return plan

    def read(self, chunk: Chunk, batch_size: int) -> Iterator[RawBatch]:
        return DbnFile(self._path_of[chunk.key]).batches(batch_size)
