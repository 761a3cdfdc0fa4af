"""One ingest from its arguments to its summary: ``marketpipe.ingest`` for Python callers
(notebooks, Airflow, Dagster or Prefect tasks), and the body the CLI's ``ingest`` renders.

What to fetch comes from the arguments or from a job of the jobs file; where to store and how
from the settings (arguments override ``MARKETPIPE_*`` variables, ``.env`` and the defaults).
Bad arguments fail before any store is opened or created.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from marketpipe.config import (
    JOBS_FILE,
    RUN_OPTION,
    IngestRequest,
    Settings,
    config_file,
    load_jobs,
    load_settings,
    make_request,
)
from marketpipe.errors import MarketpipeError, UsageError
from marketpipe.logs import as_library
from marketpipe.model import Model
from marketpipe.parsing import utc_today
from marketpipe.pipeline import LanesFactory, Progress, RunSummary, prepare
from marketpipe.pipeline import estimate as quote_source
from marketpipe.pipeline import ingest as run_pipeline
from marketpipe.rules.transformation import load_model

Day = dt.date | str


class IngestFailed(MarketpipeError):
    """The run finished but not whole: an input or a chunk failed, or the store went away and
    the run stopped. What was stored stays stored (each chunk whole) and a re-run resumes;
    ``summary`` says what failed and why."""

    def __init__(self, summary: RunSummary) -> None:
        failed = summary.failed
        reason = summary.stopped or (f"{failed[0][0]}: {failed[0][1]}" if failed else "")
        count = f"{len(failed)} input(s) or chunk(s) failed" if failed else "the run stopped"
        super().__init__(f"run {summary.run_id}: {count}; first: {reason}")
        self.summary = summary


def ingest(
    from_file: str | os.PathLike[str] | None = None,
    *,
    job: str | None = None,
    dataset: str | None = None,
    schemas: str | Sequence[str] = (),
    symbols: str | Sequence[str] = (),
    stype_in: str | None = None,
    start_date: Day | None = None,
    end_date: Day | None = None,
    db: str | os.PathLike[str] | None = None,
    ledger: str | None = None,
    pg_schema: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    fill_gaps: bool = False,
    chunk_days: int | None = None,
    keep_raw: str | os.PathLike[str] | None = None,
    max_cost: float | None = None,
    batch_size: int | None = None,
    max_quarantine_ratio: float | None = None,
    workers: int | None = None,
    raise_on_failure: bool = True,
) -> RunSummary:
    """Ingest DBN files or a Databento Historical API request into the store.

    Give one of: ``from_file``; ``dataset`` with ``schemas`` (and ``symbols``, days); or
    ``job``. Chunks an earlier run stored are skipped, so calling it again resumes and never
    duplicates a record.

    Parameters
    ----------
    from_file : str or path-like, optional
        A DBN file (``.dbn`` or ``.dbn.zst``, DBN v1-v3), a directory (every DBN file below
        it), a glob, or an fsspec URL (``s3://...`` needs ``marketpipe[s3]``). Every record
        of the files is ingested: API selectors are refused with it.
    job : str, optional
        A job of the jobs file (the project's ``configs/databento.yaml`` or the packaged
        default); the job says what to fetch, run options given here apply to it.
    dataset : str, optional
        Databento dataset, e.g. ``"GLBX.MDP3"``.
    schemas, symbols : str or sequence of str
        Databento schemas (``"trades"``, ``"ohlcv-1d"``, ...) and symbols; a string is split
        at commas.
    stype_in : str, optional
        Symbology of ``symbols``: raw_symbol (default), instrument_id, parent, continuous or
        smart.
    start_date, end_date : datetime.date or str, optional
        First and last UTC day, both inclusive: a date, ``"YYYY-MM-DD"``, ``"today"``,
        ``"yesterday"``, ``"-Nd"`` (N days before today), and for ``start_date`` ``"last"``
        (the day after the last day the job fully stored).
    db : str or path-like, optional
        The store: a DuckDB file, a ``postgresql://`` URL or ``lake:DIR``; default
        ``MARKETPIPE_DB``, else ``data/marketpipe.duckdb`` in the working directory.
    ledger : str, optional
        A lake's ledger, where it is not ``DIR/_marketpipe/ledger.duckdb``.
    pg_schema : str, optional
        PostgreSQL: the schema for marketpipe's tables, views and ledger (made if missing);
        default ``MARKETPIPE_PG_SCHEMA``, else the connection's (public).
    force : bool
        Ingest chunks an earlier run stored again (their rows are replaced, not added).
    dry_run : bool
        API requests only: quote records, billable bytes and cost (free metadata calls) into
        ``RunSummary.estimate``; nothing is downloaded or stored.
    fill_gaps : bool
        API requests only: fetch only the sessions ``coverage`` finds not done.
    chunk_days : int, optional
        Days per API download (default 1).
    keep_raw : str or path-like, optional
        Keep each downloaded DBN file in this directory.
    max_cost : float, optional
        Refuse an API plan quoted above this many USD, before anything is downloaded.
    batch_size : int, optional
        Records per batch (default 250,000): bounds memory.
    max_quarantine_ratio : float, optional
        A chunk quarantining a larger share of its records (default 0.05) fails whole.
    workers : int, optional
        Run the chunks on a local Dask cluster of this many processes (``marketpipe[cluster]``).
    raise_on_failure : bool
        Raise ``IngestFailed`` when an input or chunk failed or the run stopped (default);
        False returns the summary and ``exit_code`` tells.

    Returns
    -------
    RunSummary
        ``run_id``, ``store``, ``seconds``, ``schemas()`` (per schema: records read, stored
        and quarantined, chunks skipped and failed), ``totals()``, ``failed`` (input, reason),
        ``warnings`` and ``notes``; ``estimate`` for a dry run.

    Raises
    ------
    UsageError
        Bad arguments or settings, an unknown job, bad config files, a store that cannot be
        opened (``StoreRejected``), a cost above ``max_cost``: nothing was read or stored.
    IngestFailed
        Some input or chunk failed (the rest is stored), with the summary attached.
    StoreError
        The store failed in a way retrying does not fix.
    ApiRejected
        Databento refused the request (bad key, unknown dataset or symbols).
    """
    settings = load_settings(
        db=None if db is None else os.fspath(db),
        ledger=ledger,
        pg_schema=pg_schema,
        batch_size=batch_size,
        max_quarantine_ratio=max_quarantine_ratio,
    )
    key = settings.databento_api_key
    as_library([key.get_secret_value()] if key else [])
    request = build_request(
        settings,
        job,
        from_file=None if from_file is None else os.fspath(from_file),
        dataset=dataset,
        schemas=schemas or None,
        symbols=symbols or None,
        stype_in=stype_in,
        start_date=start_date,
        end_date=end_date,
        chunk_days=chunk_days,
        keep_raw=None if keep_raw is None else Path(keep_raw),
        max_cost=max_cost,
        fill_gaps=fill_gaps or None,
    )
    summary = run(request, settings, force=force, dry_run=dry_run, workers=workers)
    if raise_on_failure and summary.exit_code:
        raise IngestFailed(summary)
    return summary


def build_request(settings: Settings, job: str | None, **fields: object) -> IngestRequest:
    """The request of a job (with the run options given) or of the fields; None is unset.
    A field is named as its flag (``--start-date``) in errors, which the CLI and Python share."""
    if job is not None:
        jobs_file = config_file(settings.jobs_file, JOBS_FILE)
        jobs = load_jobs(jobs_file)
        if job not in jobs:
            known = ", ".join(jobs) or "none"
            raise UsageError(f"unknown job {job!r} in {jobs_file}; known jobs: {known}")
        given = {k: v for k, v in fields.items() if v is not None and k != "api"}
        # Options of a run a job takes from the command line; what to fetch comes from the job.
        run_options = IngestRequest.fields_of(RUN_OPTION)
        selectors = [k for k in given if k not in run_options]
        if selectors:
            flag = IngestRequest.flag(selectors[0])
            raise UsageError(f"--job {job} takes what to ingest from {jobs_file}; drop {flag}")
        options = {k: v for k, v in given.items() if k in run_options}
        return make_request(**{**jobs[job].model_dump(exclude_unset=True), **options})
    request = make_request(**fields)
    if not request.from_file and not (request.dataset and request.schemas):
        raise UsageError("nothing to ingest: give --from-file PATH, --job NAME, or --dataset and --schema")
    return request


def run(
    request: IngestRequest,
    settings: Settings,
    progress: Progress | None = None,
    model: Model | None = None,
    force: bool = False,
    dry_run: bool = False,
    workers: int | None = None,
    cluster: str | None = None,
) -> RunSummary:
    """The request run (or, ``dry_run``, quoted) in this process's writer threads, or on a
    local Dask cluster of ``workers`` processes, or on the scheduler at ``cluster``."""
    model = model or load_model(settings.transformation_file)
    if dry_run:
        return _quote(request, settings, model, force)
    with _lanes(request, settings, workers, cluster) as lanes:
        return run_pipeline(request, settings, progress, model, force=force, lanes=lanes)


def _quote(request: IngestRequest, settings: Settings, model: Model, force: bool) -> RunSummary:
    """What an API plan would download and cost, from the free metadata calls only."""
    if request.from_file:
        raise UsageError("--dry-run quotes API downloads; it does not apply to --from-file")
    from marketpipe.sources import make_source
    from marketpipe.sources.base import Quoting

    resolved, current = prepare(request, settings, model, utc_today())
    if current is not None:
        return RunSummary("", resolved.name, settings.db, request=resolved, notes=[current])
    source = make_source(resolved, settings.api)
    try:
        if not isinstance(source, Quoting):
            raise UsageError(f"--dry-run is not available for api type {resolved.api!r}")
        estimate = quote_source(source, settings, model, force)
    finally:
        source.close()
    return RunSummary("", resolved.name, settings.db, request=resolved, estimate=estimate)


@contextmanager
def _lanes(
    request: IngestRequest, settings: Settings, workers: int | None, address: str | None
) -> Iterator[LanesFactory | None]:
    """The chunks' runner: this process's writer threads, or a Dask cluster's workers."""
    if workers is None and address is None:
        yield None
        return
    if workers is not None and address is not None:
        raise UsageError("--workers starts a local cluster, --cluster joins one: give one of them")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: a local cluster needs at least 1 worker process")
    try:
        from marketpipe import cluster
    except ImportError:
        raise UsageError("--workers/--cluster need Dask: pip install 'marketpipe[cluster]'") from None
    cluster.check(request, settings)
    with cluster.connect(workers, address) as client:
        yield cluster.lanes(client, settings)
