"""DBN files (``--from-file``): a file, a directory or a glob of .dbn / .dbn.zst, on a local
disk or at an fsspec URL (``s3://bucket/prefix/`` with s3fs installed, ``file:///data``).

A remote file is copied once into a temporary directory of the run (fsspec's ``simplecache``)
and read from there: the reader checks and decodes local files.
"""

from __future__ import annotations

import glob
import shutil
import tempfile
import threading
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import structlog
from fsspec.implementations.local import LocalFileSystem

from marketpipe.config import missing_filesystem
from marketpipe.errors import SourceError, UsageError
from marketpipe.sources.base import Fetched, Stored
from marketpipe.sources.dbn_reader import DbnFile, Inspection
from marketpipe.types import PART_RECORDS, Chunk, Coverage, Plan, RawBatch, record_parts

_SUFFIXES = (".dbn", ".dbn.zst")
log = structlog.get_logger("marketpipe.files")


def expand(spec: str) -> list[str]:
    """The files a ``--from-file`` argument names, in a stable order: paths, or URLs."""
    if "://" in spec:
        return _expand_url(spec)
    return [str(p) for p in _expand_path(spec)]


def _expand_url(spec: str) -> list[str]:
    try:
        fs, root = fsspec.core.url_to_fs(spec)
        if fs.isdir(root):
            files = sorted(p for p in fs.find(root) if p.endswith(_SUFFIXES))
            if not files:
                raise UsageError(f"no .dbn or .dbn.zst files in directory {spec}")
        elif fs.isfile(root):
            files = [root]
        elif glob.has_magic(root):
            files = sorted(p for p in fs.glob(root) if fs.isfile(p))
            if not files:
                raise UsageError(f"no files match {spec}")
        else:
            raise UsageError(f"no such file or directory: {spec}")
    except ImportError as exc:
        raise UsageError(f"--from-file {spec}: {missing_filesystem(spec, exc)}") from None
    except (ValueError, OSError) as exc:
        raise UsageError(f"--from-file {spec}: {exc}") from None
    return [fs.unstrip_protocol(p) for p in files]


def _expand_path(spec: str) -> list[Path]:
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
    """Chunks of a DBN file: parts of ``PART_RECORDS`` records, keyed by the decompressed data.

    The same data ingested again (renamed, compressed differently) replaces its own rows.
    """

    PART_RECORDS = PART_RECORDS
    AHEAD = 2  # inputs inspected ahead of the plan

    def __init__(self, spec: str) -> None:
        self._paths = expand(spec)
        self._path_of: dict[str, str] = {}
        self._cache: str | None = None  # this process's copies of remote files
        # The inputs are read and hashed (most of planning) from the moment the source exists,
        # while the run loads its rules and opens its store; a few ahead of the plan, as each
        # holds its file's metadata.
        self._stop = threading.Event()
        self._pool = self._planner()
        self._ahead = deque(self._pool.submit(self._inspect, p) for p in self._paths[: self.AHEAD])

    def __getstate__(self) -> dict[str, Any]:
        """A worker process reads the chunks it is given (planning is done) and copies the
        remote files it reads into a directory of its own."""
        state = {**self.__dict__, "_cache": None, "_ahead": deque()}
        del state["_stop"], state["_pool"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _stop=threading.Event(), _pool=self._planner())

    @staticmethod
    def _planner() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(1, thread_name_prefix="marketpipe-plan")

    def _local(self, name: str) -> Path:
        """A local path of the input ``name`` (a remote file: its copy, made once)."""
        if "://" not in name:
            return Path(name)
        fs, path = fsspec.core.url_to_fs(name)
        if isinstance(fs, LocalFileSystem):
            return Path(path)
        if self._cache is None:
            self._cache = tempfile.mkdtemp(prefix="marketpipe-inputs-")
        return Path(fsspec.open_local(f"simplecache::{name}", simplecache={"cache_storage": self._cache}))

    def _inspect(self, path: str) -> tuple[DbnFile, Inspection]:
        dbn = DbnFile(self._local(path))
        return dbn, dbn.inspect(self._stop)

    def plan(self, stored: Stored | None = None) -> Plan:
        """Every input (files cost nothing to read again; what they cover replaces the rows
        other inputs stored there)."""
        plan = Plan()
        seen: dict[str, str] = {}
        for index, path in enumerate(self._paths):
            if index + self.AHEAD < len(self._paths):
                self._ahead.append(self._pool.submit(self._inspect, self._paths[index + self.AHEAD]))
            try:
                dbn, inspection = self._ahead.popleft().result()
            except SourceError as exc:
                plan.failures.append((str(path), str(exc)))
                continue
            except Exception as exc:  # whatever a file holds fails that file alone
                log.error(
                    "input.unreadable", input=str(path), error=repr(exc), traceback=traceback.format_exc()
                )
                plan.failures.append((str(path), f"{path}: unreadable: {exc}"))
                continue
            if inspection.digest in seen:
                log.info("input.duplicate", input=str(path), same_data_as=str(seen[inspection.digest]))
                plan.duplicates.append((str(path), str(seen[inspection.digest])))
                continue
            seen[inspection.digest] = path
            plan.inputs.append(str(path))
            self._note_live(path, inspection, plan)
            coverage = dbn.coverage()
            for schema, records in sorted(inspection.records.items()):
                plan.chunks.extend(
                    self._parts(path, dbn, schema, f"dbn:{inspection.digest}:{schema}", records, coverage)
                )
        return plan

    @staticmethod
    def _note_live(path: str, inspection: Inspection, plan: Plan) -> None:
        """A live recording's gateway messages: counted in the summary, each logged."""
        for message in inspection.messages:
            log.info("live.message", input=str(path), message=message)
        if inspection.system or inspection.errors:
            text = (
                f"{path}: {inspection.system:,} system and {inspection.errors:,} error messages"
                " from the live gateway"
            )
            shown = "; ".join(inspection.messages)
            (plan.warnings if inspection.errors else plan.notes).append(
                f"{text}{': ' + shown if shown else ''}"
            )

    def _parts(
        self, path: str, dbn: DbnFile, schema: str, input_key: str, records: int, coverage: Coverage
    ) -> list[Chunk]:
        size = self.PART_RECORDS
        parts = record_parts(records, size)
        chunks = []
        for first, count in parts:
            label = str(path) if len(parts) == 1 else f"{path} [records {first:,}-{first + count - 1:,}]"
            if dbn.live:
                label = f"{label} ({schema})"
            key = f"{input_key}:{first}+{size}"
            self._path_of[key] = path
            chunks.append(
                Chunk(
                    key,
                    schema,
                    label,
                    dataset=dbn.dataset,
                    start_ns=dbn.start_ns,
                    end_ns=dbn.end_ns,
                    first_record=first,
                    record_count=count,
                    input_key=input_key,
                    coverage=coverage,
                )
            )
        return chunks

    def read(self, chunk: Chunk, batch_size: int) -> Iterator[RawBatch]:
        dbn = DbnFile(self._local(self._path_of[chunk.key]))
        return dbn.batches(chunk.schema, batch_size, chunk.first_record, chunk.record_count)

    def fetch(self, chunks: Iterable[Chunk]) -> Iterator[Fetched]:
        """Local files are at hand, and planned as parts already (their record counts are known
        before anything runs)."""
        for chunk in chunks:
            yield Fetched(chunk, [chunk])

    def finish(self, chunk: Chunk, committed: bool) -> None:
        """The user's files stay as they are."""

    def close(self) -> None:
        """Planning not finished stops; the copies of remote files go with the run."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._cache is not None:
            shutil.rmtree(self._cache, ignore_errors=True)
            self._cache = None
