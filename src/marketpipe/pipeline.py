"""The orchestrator: plan chunks, run every stage over each chunk's batches, count, record.

Stages, in order: load job config (the caller) -> init source -> plan -> read typed records
-> initial validation -> transform -> post-transformation validation -> store -> record
progress. A chunk is written in one store transaction that first removes what an earlier
write of the same chunk stored, so a re-run never duplicates and a failure leaves nothing
half-written. Where the store takes concurrent writers, several chunks run at once, each in a
lane of its own (connection, rules connection, transaction); bookkeeping stays on the caller's.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import pyarrow as pa
import structlog

from marketpipe.components import RunConfig
from marketpipe.config import (
    VALIDATION_FILE,
    IngestRequest,
    Settings,
    config_file,
    load_calendars,
    make_request,
)
from marketpipe.coverage import coverage, sessions
from marketpipe.errors import (
    ChunkAlreadyStored,
    CountMismatch,
    QuarantineRatioExceeded,
    SourceError,
    StoreError,
    StoreRejected,
    TransientStoreError,
    UsageError,
    interrupted_query,
    interruption,
)
from marketpipe.model import Model
from marketpipe.parsing import LAST, resolve_day, utc_today
from marketpipe.retries import retrying
from marketpipe.rules.transformation import load_model
from marketpipe.rules.validation import Validator
from marketpipe.sources import make_source
from marketpipe.sources.base import Fetched, Quoting, Source
from marketpipe.stores import open_store
from marketpipe.stores.base import ChunkWriter, Store
from marketpipe.transform import to_table
from marketpipe.types import Chunk, ChunkCounts, ChunkStatus, Estimate, RawBatch, RunStatus

STAGES = ("read", "validate_initial", "transform", "validate_post", "store")
T = TypeVar("T")


@dataclass
class ChunkResult:
    chunk: Chunk
    status: ChunkStatus
    read: int = 0
    stored: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    error: str | None = None
    rules: Counter[str] = field(default_factory=Counter)  # quarantined, by rule
    warnings: Counter[str] = field(default_factory=Counter)  # stored but warned, by rule
    attempts: int = 1

    def absorb(self, part: ChunkResult) -> None:
        """A part's result into its chunk's: counts add up, one failed part fails the chunk."""
        self.read += part.read
        self.stored += part.stored
        self.quarantined += part.quarantined
        self.seconds += part.seconds
        self.attempts += part.attempts - 1  # the parts' re-runs
        self.rules.update(part.rules)
        self.warnings.update(part.warnings)
        if part.status is ChunkStatus.FAILED:
            self.status, self.error = ChunkStatus.FAILED, part.error


@dataclass(frozen=True)
class SchemaCounts:
    """One schema's part of a run: records ``read``, ``stored`` and ``quarantined`` (what the
    run committed: a failed chunk stores nothing, but the parts of a large one committed
    before it failed count), ``seconds`` spent on its chunks, and chunks ``skipped`` (done by
    an earlier run) and ``failed``."""

    read: int = 0
    stored: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    skipped: int = 0
    failed: int = 0


@dataclass
class RunSummary:
    """What one ingest did. ``run_id`` is empty where nothing ran (a dry run, a job already
    current: ``notes`` says why); ``exit_code`` is the CLI's (1: an input failed or the run
    stopped)."""

    run_id: str
    job: str
    store: str = ""  # where the run stored: the absolute DuckDB path or the URL, and the mode
    # The request as it ran: relative days resolved, with --fill-gaps the sessions fetched.
    request: IngestRequest | None = None
    seconds: float = 0.0  # wall time of the run, planning included
    # A dry run's quote (records, billable bytes and cost per schema); nothing was fetched.
    estimate: Estimate | None = None
    results: list[ChunkResult] = field(default_factory=list)
    plan_failures: list[tuple[str, str]] = field(default_factory=list)
    # Why the run stopped before its last chunk (the store went away for good), if it did.
    stopped: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Inputs skipped because another input of this run holds the same records: (input, same as).
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[tuple[str, str]]:
        """Every input that did not make it: (label, reason)."""
        return self.plan_failures + [
            (r.chunk.label, r.error or "") for r in self.results if r.status is ChunkStatus.FAILED
        ]

    def totals(self) -> ChunkCounts:
        """Records read by every chunk this run worked on (failed ones too); stored and
        quarantined by the chunks it committed."""
        done = [r for r in self.results if r.status is ChunkStatus.DONE]
        return ChunkCounts(
            sum(r.read for r in self.results),
            sum(r.stored for r in done),
            sum(r.quarantined for r in done),
            sum(r.seconds for r in done),
        )

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.stopped else 0

    def schemas(self) -> dict[str, SchemaCounts]:
        """Per schema, in name order, the counts of the chunks this run worked on or skipped."""
        rows: dict[str, list[ChunkResult]] = defaultdict(list)
        for result in self.results:
            rows[result.chunk.schema].append(result)
        return {
            schema: SchemaCounts(
                read=sum(r.read for r in results),
                stored=sum(r.stored for r in results),
                quarantined=sum(r.quarantined for r in results),
                seconds=sum(r.seconds for r in results),
                skipped=sum(r.status is ChunkStatus.SKIPPED for r in results),
                failed=sum(r.status is ChunkStatus.FAILED for r in results),
            )
            for schema, results in sorted(rows.items())
        }


class Progress(Protocol):
    def plan(self, chunks: Sequence[Chunk]) -> None:
        """The chunks planned (a file's parts know their record counts; downloads do not)."""
        ...

    def chunk_started(self, chunk: Chunk) -> None: ...

    def advance(self, records: int) -> None: ...

    def chunk_finished(self, result: ChunkResult) -> None: ...


def input_chunk(label: str) -> Chunk:
    """Progress row of an input as a whole, for failures found before it has chunks."""
    return Chunk(key=f"input:{label}", schema="", label=label)


class _StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.records: Counter[str] = Counter()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


def prepare(
    request: IngestRequest, settings: Settings, model: Model, today: dt.date
) -> tuple[IngestRequest, str | None]:
    """The request as the source takes it: relative days resolved, and with ``--fill-gaps`` the
    sessions to fetch per schema. The note says why there is nothing to fetch, if so. The store
    is opened once, read-only, and only where ``last`` or ``--fill-gaps`` needs it."""
    if request.start_date != LAST and not request.fill_gaps:
        return resolve_days(request, None, today)
    with _existing_store(settings, model) as found:
        request, current = resolve_days(request, found, today)
        if current is None and request.fill_gaps:
            store = None if isinstance(found, StoreRejected) else found
            request = request.model_copy(update={"gap_days": gap_days(request, store, settings)})
    return request, current


def gap_days(request: IngestRequest, store: Store | None, settings: Settings) -> dict[str, list[dt.date]]:
    """Per schema, the sessions of the request's range that coverage finds not done (all of
    them where nothing has been stored yet: ``store`` None)."""
    start, end = request.start_date, request.end_date
    if not isinstance(start, dt.date) or not isinstance(end, dt.date) or not request.dataset:
        raise UsageError("--fill-gaps needs --dataset, --start-date and --end-date")
    calendars = load_calendars(settings.calendars_file)
    if store is None:
        calendar = calendars.get(request.dataset)
        return dict.fromkeys(request.schemas, sessions(calendar, start, end))
    return {
        schema: coverage(store, calendars, schema, request.dataset, None, start, end).gaps()
        for schema in request.schemas
    }


@contextmanager
def _existing_store(settings: Settings, model: Model) -> Iterator[Store | StoreRejected]:
    """The store, read-only; where there is none to read (nothing stored there yet), why."""
    try:
        store = open_store(settings.store, model, read_only=True)
    except StoreRejected as refusal:
        yield refusal
        return
    with closing(store):
        yield store


def resolve_days(
    request: IngestRequest, found: Store | StoreRejected | None, today: dt.date
) -> tuple[IngestRequest, str | None]:
    """Relative days as dates: today, yesterday and -Nd against ``today`` (UTC), ``last`` as the
    day after the last day the job has fully stored (read from the store ``found``, which must
    exist unless the job gives a ``first_start_date``; else why it could not be opened).

    With ``last``, a job already stored through its end is current: the note says so and there
    is nothing to fetch."""
    start, end = request.start_date, request.end_date
    through = None
    if start == LAST:
        through = found.ledger.stored_through(request.name) if isinstance(found, Store) else None
        if through is not None:
            start = through + dt.timedelta(days=1)
        elif request.first_start_date is not None:
            start = request.first_start_date
        elif not isinstance(found, Store):
            raise found or UsageError("start date last needs the store")
        else:
            raise UsageError(
                f"start date last: job {request.name} has no fully stored day in {found.location} yet;"
                " give a date for its first run (in a job: first_start_date)"
            )
    first = None if start is None else resolve_day(start, today)
    last = None if end is None else resolve_day(end, today)
    days = {"start_date": first, "end_date": last}
    if through is not None and first is not None and last is not None and last < first:
        note = f"job {request.name} is stored through {through}: nothing to ingest up to {last}"
        return request.model_copy(update=days), note
    # The request's own checks (an end before the start) on the days as resolved.
    return make_request(**{**request.model_dump(exclude_unset=True), **days}), None


def estimate(source: Quoting, settings: Settings, model: Model, force: bool) -> Estimate:
    """A dry run's quote of what the store does not hold yet (all of it with ``force``, or
    where there is no store yet)."""
    if force:
        return source.estimate(None)
    with _existing_store(settings, model) as found:
        return source.estimate(found.ledger if isinstance(found, Store) else None)


def load_rules(settings: Settings, model: Model | None = None) -> tuple[Model, Validator]:
    """The compiled transformation (``model`` if given) and the validation rules bound to it."""
    model = model or load_model(settings.transformation_file)
    return model, Validator(config_file(settings.validation_file, VALIDATION_FILE), model)


def ingest(
    request: IngestRequest,
    settings: Settings,
    progress: Progress | None = None,
    model: Model | None = None,
    force: bool = False,
    today: dt.date | None = None,
    lanes: LanesFactory | None = None,
) -> RunSummary:
    """One ingest: the transformation, the arguments, the validation rules, then the store,
    each failing before the next is touched, so bad rules or bad arguments never open (or
    create) a store. A file source reads its inputs from the moment it exists, meanwhile.

    ``model``: the compiled transformation file, else compiled here from the settings.
    ``today``: what relative days count from (default: the UTC date now).
    ``lanes``: what runs the chunks (default: writer threads of this process)."""
    model = model or load_model(settings.transformation_file)
    request, current = prepare(request, settings, model, today or utc_today())
    if current is not None:
        return RunSummary("", request.name, settings.db, request, notes=[current])
    structlog.get_logger("marketpipe.pipeline").info("stage.start", stage="init_source", api=request.api)
    with closing(make_source(request, settings.api)) as source:
        model, validator = load_rules(settings, model)
        with closing(open_store(settings.store, model)) as store:
            return Pipeline(request, settings.run, source, store, validator, progress, lanes=lanes).run(force)


class Pipeline:
    def __init__(
        self,
        request: IngestRequest,
        config: RunConfig,
        source: Source,
        store: Store,
        validator: Validator,
        progress: Progress | None = None,
        run_id: str | None = None,
        lanes: LanesFactory | None = None,
    ) -> None:
        """``run_id``: a run's id where this pipeline writes chunks for a run planned elsewhere
        (a cluster worker); ``lanes``: what runs the chunks (default: writer threads)."""
        self.request = request
        self.config = config
        self.source = source
        self.store = store
        self.ledger = store.ledger
        self.model = store.model
        self.validator = validator
        self.progress = progress
        self._progress_lock = threading.Lock()  # lanes report from their threads
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.lanes = lanes or ThreadLanes
        self.log = structlog.get_logger("marketpipe.pipeline").bind(run_id=self.run_id, job=request.name)

    def run(self, force: bool = False) -> RunSummary:
        summary = RunSummary(
            self.run_id, self.request.name, f"{self.store.location} ({self.store.mode})", self.request
        )
        self.log.info("stage.start", stage="plan")
        started = time.perf_counter()
        plan = self.source.plan(None if force else self.ledger)
        self.log.info(
            "stage.end",
            stage="plan",
            chunks=len(plan.chunks),
            failures=len(plan.failures),
            seconds=round(time.perf_counter() - started, 6),
        )
        summary.plan_failures = plan.failures
        summary.warnings = plan.warnings
        summary.notes = plan.notes
        summary.duplicates = plan.duplicates
        for label, reason in plan.failures:
            self.log.warning("input.rejected", input=label, reason=reason)
            self._bookkeeping(
                self.ledger.mark_failed, input_chunk(label), self.run_id, self.request.name, reason
            )
        if plan.inputs:
            self._bookkeeping(self.ledger.forget_failures, [input_chunk(label).key for label in plan.inputs])
        if self.progress:
            self.progress.plan(plan.chunks)
        self._bookkeeping(self.ledger.plan_chunks, plan.chunks, self.request.name)
        self._bookkeeping(self.ledger.record_symbology, plan.symbology)
        try:
            # Inside: a signal as the run's row is written still finds it finished.
            self._bookkeeping(self.ledger.start_run, self.run_id, self.request.name)
            self._run_chunks(plan.chunks, summary, force)
            summary.seconds = time.perf_counter() - started
            status = (
                RunStatus.STOPPED
                if summary.stopped
                else RunStatus.PARTIAL
                if summary.failed
                else RunStatus.DONE
            )
            self._record_quietly(
                self.ledger.finish_run, self.run_id, status, summary.totals(), len(summary.failed)
            )
        except KeyboardInterrupt:
            # A signal can land between a chunk's commit and the run's count of it (a chunk
            # the main thread ran), or while the run's end is being recorded: the ledger's rows
            # of the run are the count.
            try:
                counts = self._bookkeeping(self.ledger.run_counts, self.run_id)
            except StoreError:
                counts = summary.totals()
            self._record_quietly(
                self.ledger.finish_run, self.run_id, RunStatus.INTERRUPTED, counts, len(summary.failed)
            )
            raise
        return summary

    def _run_chunks(self, chunks: list[Chunk], summary: RunSummary, force: bool) -> None:
        """Every planned chunk not done yet, in plan order, up to ``settings.writers`` at once
        where the store takes concurrent writers; a store gone for good stops the run."""
        results: dict[str, ChunkResult] = {}
        current: list[Chunk] = []  # the chunk the run is at, for the error that stops it
        inflight: dict[Future[ChunkResult], tuple[Chunk, _Group]] = {}
        waiting = Counter(c.input for c in chunks)  # planned chunks of each input not stored yet

        def finished(result: ChunkResult, store_alive: bool = True) -> None:
            """A chunk's result; its input completed once all of it is stored (not where the
            store went away: the next run's skip of its chunks completes it)."""
            results[result.chunk.key] = result
            if store_alive and result.status in (ChunkStatus.DONE, ChunkStatus.SKIPPED):
                waiting[result.chunk.input] -= 1
                if waiting[result.chunk.input] == 0:
                    self._complete(result.chunk, force)
            if self.progress:
                self.progress.chunk_finished(result)

        def wanted() -> Iterator[Chunk]:
            for chunk in chunks:
                current[:] = [chunk]
                if self._done_before(chunk, force):
                    finished(ChunkResult(chunk, ChunkStatus.SKIPPED))
                else:
                    yield chunk

        def settle(done: set[Future[ChunkResult]]) -> None:
            for future in done:
                chunk, group = inflight.pop(future)
                current[:] = [chunk]
                group.absorb(future.result())  # a StoreError of the chunk stops the run here
                if group.waiting == 0:
                    finished(self._finish_group(group))

        lanes = self.lanes(self)
        try:
            with closing(lanes):
                # Whole chunks go out as planned; otherwise their data is fetched here first.
                chunks_in = wanted()
                if lanes.whole_chunks:
                    fetches: Iterator[Fetched] = (Fetched(c, [c]) for c in chunks_in)
                else:
                    fetches = self.source.fetch(chunks_in)
                for fetched in fetches:
                    current[:] = [fetched.chunk]
                    group = self._group(fetched, force)
                    if group.waiting == 0:
                        finished(self._finish_group(group))
                    for part in group.parts:
                        while len(inflight) >= lanes.size:
                            settle(wait(inflight, return_when=FIRST_COMPLETED).done)
                        inflight[lanes.submit(part, force)] = (part, group)
                        settle({f for f in inflight if f.done()})
                while inflight:
                    settle(wait(inflight, return_when=FIRST_COMPLETED).done)
        except StoreError as exc:
            [chunk] = current
            summary.stopped = str(exc)
            results[chunk.key] = ChunkResult(chunk, ChunkStatus.FAILED, error=str(exc))
            self.log.error("run.stopped", chunk=chunk.label, error=str(exc))
            self._record_quietly(self.ledger.mark_failed, chunk, self.run_id, self.request.name, str(exc))
            for future in inflight:  # finished by the other lanes meanwhile
                if not future.cancelled() and future.exception() is None:
                    finished(future.result(), store_alive=False)
        finally:
            # Interrupted too: the run's row then counts what its finished chunks stored, those
            # a lane committed as the run stopped included.
            for future in inflight:
                if future.done() and not future.cancelled() and future.exception() is None:
                    result = future.result()
                    results.setdefault(result.chunk.key, result)
            summary.results = [results[c.key] for c in chunks if c.key in results]

    def _group(self, fetched: Fetched, force: bool) -> _Group:
        """A fetched chunk and the parts of it still to write. Its data may turn out to hold
        several parts: the chunk is done once every part is, and a re-run skips those done."""
        chunk = fetched.chunk
        if fetched.error is not None:
            failed = self._failed(chunk, ChunkResult(chunk, ChunkStatus.RUNNING), fetched.error, self.store)
            return _Group(fetched, [], failed)
        if fetched.parts == [chunk]:
            return _Group(fetched, [chunk], ChunkResult(chunk, ChunkStatus.DONE))
        self._bookkeeping(self.ledger.plan_chunks, fetched.parts, self.request.name)
        parts = [p for p in fetched.parts if not self._done_before(p, force)]
        return _Group(fetched, parts, ChunkResult(chunk, ChunkStatus.DONE))

    def run_planned(self, chunk: Chunk, force: bool, lane: Lane) -> ChunkResult:
        """A planned chunk whole, where its data is fetched: its parts one after the other."""
        [fetched] = self.source.fetch([chunk])
        group = self._group(fetched, force)
        for part in group.parts:
            group.absorb(self.run_chunk(part, force, lane))
        return self._finish_group(group)

    def _finish_group(self, group: _Group) -> ChunkResult:
        chunk, merged = group.fetched.chunk, group.merged
        if group.fetched.error is None and group.fetched.parts != [chunk]:
            counts = ChunkCounts(
                merged.read, merged.stored, merged.quarantined, merged.seconds, merged.attempts
            )
            if merged.status is ChunkStatus.DONE:
                self._bookkeeping(self.ledger.mark_done, chunk, self.run_id, self.request.name, counts)
            else:
                error = merged.error or ""
                self._bookkeeping(self.ledger.mark_failed, chunk, self.run_id, self.request.name, error)
        self.source.finish(chunk, merged.status is ChunkStatus.DONE)
        return merged

    def _complete(self, chunk: Chunk, force: bool) -> None:
        """Every chunk of ``chunk``'s input is stored: its coverage replaces what other inputs
        stored there (once: an input whole before, and not forced again, is left as it is)."""
        if not force and self._bookkeeping(self.ledger.is_complete, chunk):
            return
        self._bookkeeping(self.store.complete_input, chunk)
        self.log.info("input.complete", input=chunk.input, complete=chunk.coverage.complete)

    def _done_before(self, chunk: Chunk, force: bool) -> bool:
        """Stored by an earlier run (and not forced again): skipped, and logged so."""
        if force or not self._bookkeeping(self.ledger.is_done, chunk):
            return False
        self.log.info("chunk.skipped", chunk=chunk.label, reason="done in an earlier run")
        return True

    def _bookkeeping(self, action: Callable[..., T], *args: object, store: Store | None = None) -> T:
        """A ledger call through ``store`` (the run's own by default): a transient fault (the
        server restarted or failed over, the session was terminated or timed out, the
        connection dropped) reconnects and calls it again, as a chunk's writer does. Each call
        is its own short transaction, so calling it again is safe."""
        store = store or self.store
        name = getattr(action, "__name__", "bookkeeping")
        # The first call outside tenacity: a Ctrl-C or SIGTERM landing inside its machinery
        # (each attempt's outcome is a concurrent Future) came out as CancelledError, a crash,
        # not the interrupt it was; the main thread spends most of a run here.
        try:
            return action(*args)
        except TransientStoreError as exc:
            if self.config.retries <= 1:
                raise
            self.log.warning("db.retry", action=name, attempt=1, reason=str(exc), wait=0.0)

        def log_retry(attempt: int, reason: str, wait: float) -> None:
            self.log.warning("db.retry", action=name, attempt=attempt + 1, reason=reason, wait=wait)

        for attempt in retrying(self.config.retries - 1, self.config.retry_wait, log_retry):
            with attempt:
                store.reconnect()
                return action(*args)
        raise AssertionError("unreachable")  # pragma: no cover

    def _record_quietly(self, action: Callable[..., None], *args: object) -> None:
        """Bookkeeping after the store failed: try, but a dead store must not hide the cause."""
        try:
            self._bookkeeping(action, *args)
        except StoreError as exc:
            self.log.warning("bookkeeping.skipped", error=str(exc))

    def run_chunk(self, chunk: Chunk, force: bool, lane: Lane) -> ChunkResult:
        """A transient store fault re-runs the whole chunk: its transaction is gone."""

        def log_retry(attempt: int, reason: str, wait: float) -> None:
            self.log.warning("chunk.retry", chunk=chunk.label, attempt=attempt, reason=reason, wait=wait)

        policy = retrying(self.config.retries, self.config.retry_wait, log_retry)
        for attempt in policy:
            with attempt:
                number = attempt.retry_state.attempt_number
                if number > 1:
                    lane.store.reconnect()
                result = self._run_chunk(chunk, force, lane, number)
                result.attempts = number
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_chunk(self, chunk: Chunk, force: bool, lane: Lane, attempt: int = 1) -> ChunkResult:
        log = self.log.bind(chunk=chunk.label, schema=chunk.schema, lane=lane.number)
        log.info("chunk.start")
        if self.progress:
            with self._progress_lock:
                self.progress.chunk_started(chunk)
        timer = _StageTimer()
        result = ChunkResult(chunk, ChunkStatus.RUNNING)
        started = time.perf_counter()
        try:
            # The data is opened (an API chunk is already downloaded) before the transaction.
            with timer("read"):
                batches = self.source.read(chunk, self.config.batch_size)
            with lane.store.write_chunk(chunk, self.run_id, self.request.name, force) as writer:
                for raw in self._timed_batches(batches, timer):
                    lane.check_stop()
                    self._process(chunk, raw, writer, timer, result, lane.validator)
                result.seconds = time.perf_counter() - started
                self._check_quarantine_ratio(chunk, result)
                if result.read != result.stored + result.quarantined:
                    raise CountMismatch(
                        f"{chunk.label}: read {result.read} != stored {result.stored}"
                        f" + quarantined {result.quarantined}"
                    )
                writer.commit(
                    ChunkCounts(result.read, result.stored, result.quarantined, result.seconds, attempt)
                )
        except ChunkAlreadyStored:
            log.info("chunk.skipped", reason="stored by another run while this one waited")
            return ChunkResult(chunk, ChunkStatus.SKIPPED)
        except SourceError as exc:
            return self._failed(chunk, result, str(exc), lane.store, log)
        except StoreError:
            raise  # retried, or it stops the run: other chunks would fail the same way
        except Exception as exc:  # a bug or a store fault: keep the traceback in the log file
            if interrupted_query(exc):  # a chunk run on the main thread (one writer) met a signal
                raise interruption() from None
            log.error("chunk.crashed", error=repr(exc), traceback=traceback.format_exc())
            return self._failed(chunk, result, f"{chunk.label}: {exc}", lane.store, log)
        result.status = ChunkStatus.DONE
        for stage in STAGES:
            log.info(
                "stage.end", stage=stage, records=timer.records[stage], seconds=round(timer.seconds[stage], 6)
            )
        log.info(
            "chunk.end",
            read=result.read,
            stored=result.stored,
            quarantined=result.quarantined,
            seconds=round(result.seconds, 6),
            rules=dict(result.rules),
        )
        return result

    def _check_quarantine_ratio(self, chunk: Chunk, result: ChunkResult) -> None:
        limit = self.config.max_quarantine_ratio
        if result.read and result.quarantined > limit * result.read:
            top = ", ".join(f"{rule} {n:,}" for rule, n in result.rules.most_common(3))
            raise QuarantineRatioExceeded(
                f"{chunk.label}: {result.quarantined:,} of {result.read:,} records "
                f"({result.quarantined / result.read:.1%}) broke rules ({top}), above the "
                f"{limit:.0%} limit (--max-quarantine-ratio): the data or a rule is likely broken;"
                " nothing of this chunk was stored"
            )

    def _failed(
        self,
        chunk: Chunk,
        result: ChunkResult,
        error: str,
        store: Store,
        log: structlog.BoundLogger | None = None,
    ) -> ChunkResult:
        """The chunk failed: recorded through ``store`` (the lane's, whose chunk it was)."""
        (log or self.log).warning("chunk.failed", chunk=chunk.label, error=error)
        self._bookkeeping(store.ledger.mark_failed, chunk, self.run_id, self.request.name, error, store=store)
        return ChunkResult(chunk, ChunkStatus.FAILED, read=result.read, error=error)

    def advance(self, records: int) -> None:
        """Records read, for the progress bar (from a lane's thread, or a worker's result)."""
        if self.progress:
            with self._progress_lock:
                self.progress.advance(records)

    def _timed_batches(self, batches: Iterator[RawBatch], timer: _StageTimer) -> Iterator[RawBatch]:
        while True:
            with timer("read"):
                raw = next(batches, None)
            if raw is None:
                return
            timer.records["read"] += len(raw.records)
            yield raw

    def _process(
        self,
        chunk: Chunk,
        raw: RawBatch,
        writer: ChunkWriter,
        timer: _StageTimer,
        result: ChunkResult,
        validator: Validator,
    ) -> None:
        family = self.model.family_of(chunk.schema)
        count = len(raw.records)
        result.read += count
        with timer("validate_initial"):
            first = validator.check("initial", family, chunk.schema, chunk, raw.records, None)
            if first.rejections:
                raw = RawBatch(raw.records[first.keep], raw.symbols.filter(pa.array(first.keep)))
        timer.records["validate_initial"] += len(raw.records)
        with timer("transform"):
            table = to_table(family, chunk.schema, raw)
        timer.records["transform"] += table.num_rows
        with timer("validate_post"):
            post = validator.check("post", family, chunk.schema, chunk, raw.records, table)
            if post.rejections:
                table = table.filter(pa.array(post.keep))
        rejected = first.rejections + post.rejections
        result.warnings.update(first.warnings + post.warnings)
        timer.records["validate_post"] += table.num_rows
        with timer("store"):
            if table.num_rows:
                writer.write(table)
            writer.quarantine(rejected)
        timer.records["store"] += table.num_rows
        result.stored += table.num_rows
        result.quarantined += len(rejected)
        result.rules.update(r.rule for r in rejected)
        self.advance(count)


class Lanes(Protocol):
    """What runs a run's chunks: ``size`` at a time, each to a future of its result.

    ``whole_chunks``: each planned chunk goes out as it is and the lane fetches its data and
    runs its parts itself (a cluster worker downloads its own chunks); otherwise this process
    fetches and the lanes take the parts."""

    size: int
    whole_chunks: bool

    def submit(self, chunk: Chunk, force: bool) -> Future[ChunkResult]: ...

    def close(self) -> None:
        """After the chunks in flight have ended (on an interrupt: rolled back)."""


LanesFactory = Callable[["Pipeline"], Lanes]


@dataclass
class _Group:
    """A fetched chunk, the parts of it being written, and its result so far."""

    fetched: Fetched
    parts: list[Chunk]
    merged: ChunkResult
    waiting: int = field(init=False)

    def __post_init__(self) -> None:
        self.waiting = len(self.parts)

    def absorb(self, result: ChunkResult) -> None:
        self.waiting -= 1
        if self.fetched.parts == [self.fetched.chunk]:
            self.merged = result  # the chunk itself
        else:
            self.merged.absorb(result)


@dataclass
class Lane:
    """What one writer thread writes a chunk through: its own store connection and rules."""

    number: int  # 0: the run's own store, on the caller's thread; 1 and up: writer threads
    store: Store
    validator: Validator
    stopping: threading.Event

    def check_stop(self) -> None:
        """The run is being interrupted: roll this chunk back rather than finish it."""
        if self.stopping.is_set():
            raise KeyboardInterrupt


class ThreadLanes:
    """Chunks written by up to ``writers`` threads at once, each through a lane of its own.

    One store connection loads rows at the speed of one server process; a server that takes
    concurrent writers (PostgreSQL) loads two chunks at once about 1.55 times as fast (2M
    trades into TimescaleDB, bare COPY, two connections). DuckDB inserts one chunk at a time,
    while the other lanes read and check theirs. Each chunk keeps its own transaction. With one
    writer (or a store that takes no writer threads), chunks run inline on the caller's thread
    through the run's own store."""

    whole_chunks = False

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._stopping = threading.Event()
        self._own = Lane(0, pipeline.store, pipeline.validator, self._stopping)
        store, writers = pipeline.store, pipeline.config.writers
        self.size = writers if writers > 1 and store.data.capabilities.threaded_writers else 1
        self._idle: queue.SimpleQueue[Lane] = queue.SimpleQueue()
        self._opened: list[Lane] = []
        self._opening = threading.Lock()
        self._executor = (
            ThreadPoolExecutor(self.size, thread_name_prefix="marketpipe-lane") if self.size > 1 else None
        )

    def submit(self, chunk: Chunk, force: bool) -> Future[ChunkResult]:
        if self._executor is not None:
            return self._executor.submit(self._in_a_lane, chunk, force)
        future: Future[ChunkResult] = Future()
        try:
            future.set_result(self._pipeline.run_chunk(chunk, force, self._own))
        except StoreError as exc:
            future.set_exception(exc)
        return future

    def _in_a_lane(self, chunk: Chunk, force: bool) -> ChunkResult:
        try:
            lane = self._idle.get_nowait()
        except queue.Empty:  # no more lanes than threads: each opens at most one
            with self._opening:
                number = len(self._opened) + 1
                store, validator = self._pipeline.store.another(), self._pipeline.validator.another()
                lane = Lane(number, store, validator, self._stopping)
                self._opened.append(lane)
        try:
            return self._pipeline.run_chunk(chunk, force, lane)
        finally:
            self._idle.put(lane)

    def close(self) -> None:
        """Waits for the chunks in flight; on an interrupt they roll back at their next batch."""
        if self._executor is not None:
            self._stopping.set()
            self._executor.shutdown(wait=True, cancel_futures=True)
        for lane in self._opened:
            with suppress(StoreError):
                lane.store.close()
