"""The Typer app: parse, call one function, render. User errors print one line, never a traceback."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import pyarrow as pa
import pyarrow.csv as pacsv
import structlog
import typer

from marketpipe import console, pipeline
from marketpipe.config import (
    LAST,
    IngestRequest,
    Settings,
    load_calendars,
    load_jobs,
    load_settings,
    make_request,
    parse_day,
    resolve_day,
)
from marketpipe.coverage import coverage
from marketpipe.errors import MarketpipeError, UsageError
from marketpipe.exporting import FORMATS, as_text, check_output, write_file
from marketpipe.exporting import export as export_records
from marketpipe.logs import configure
from marketpipe.model import check_schema
from marketpipe.rules.transformation import load_model
from marketpipe.samples import make_sample
from marketpipe.sources import make_source
from marketpipe.sources.base import Quoting
from marketpipe.stores import open_store
from marketpipe.stores.base import QuarantineQuery, Querying, Store
from marketpipe.version import __version__

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Databento market data (DBN files, Historical API) into exact, queryable tables.",
)

T = TypeVar("T")

DbOption = Annotated[
    str | None, typer.Option("--db", help="DuckDB file or postgresql:// URL [env MARKETPIPE_DB]")
]
SymbolsOption = Annotated[str | None, typer.Option("--symbols", help="Comma-separated symbols")]
StartOption = Annotated[str | None, typer.Option("--start-date", help="First day, YYYY-MM-DD (inclusive)")]
EndOption = Annotated[str | None, typer.Option("--end-date", help="Last day, YYYY-MM-DD (inclusive)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON, for monitoring")]


def _guarded(action: Callable[[], T]) -> T:
    """Run a command body: user errors become one line and their exit code."""
    try:
        return action()
    except MarketpipeError as exc:
        console.err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.err.print("interrupted: finished chunks are kept; run again to resume")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # The reader went away (`status --json | head`): nothing left to tell it. Point stdout
        # at /dev/null so the interpreter's own flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141) from None
    except Exception as exc:
        structlog.get_logger("marketpipe").error("crash", error=repr(exc), traceback=traceback.format_exc())
        console.err.print(
            f"internal error: {exc!r} (details in the log file)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _settings(**overrides: object) -> Settings:
    settings = load_settings(**overrides)
    key = settings.databento_api_key
    configure(settings.log_file, settings.log_level, [key.get_secret_value()] if key else [])
    return settings


def _read_only_store(settings: Settings) -> Store:
    """The store for a command that only reads: nothing is created, migrated or converted."""
    return open_store(settings, load_model(settings.transformation_file), read_only=True)


def _date(flag: str, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag}: {value!r} is not a date (expected YYYY-MM-DD)") from None


def _day(flag: str, value: str | None) -> dt.date | str | None:
    """A date or a relative day (today, yesterday, -Nd, last), resolved when the run starts."""
    if value is None:
        return None
    try:
        return parse_day(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _symbols(value: str | None) -> list[str]:
    return [s.strip() for s in (value or "").split(",") if s.strip()]


@app.command()
def ingest(
    api: Annotated[str, typer.Option(help="Source api type")] = "databento",
    from_file: Annotated[str | None, typer.Option("--from-file", help="DBN file, directory or glob")] = None,
    job: Annotated[str | None, typer.Option(help="Run a job from the jobs file")] = None,
    dataset: Annotated[str | None, typer.Option(help="Databento dataset, e.g. GLBX.MDP3")] = None,
    schema: Annotated[str | None, typer.Option(help="Comma-separated schemas")] = None,
    symbols: SymbolsOption = None,
    stype_in: Annotated[str | None, typer.Option("--stype-in", help="Symbology of --symbols")] = None,
    start_date: StartOption = None,
    end_date: EndOption = None,
    db: DbOption = None,
    force: Annotated[bool, typer.Option(help="Re-ingest chunks already done")] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Records per batch")] = None,
    max_quarantine_ratio: Annotated[
        float | None,
        typer.Option(
            "--max-quarantine-ratio", help="Fail a chunk with a larger share of quarantined records"
        ),
    ] = None,
    gateway: Annotated[
        str | None, typer.Option(help="Databento API gateway URL (DATABENTO_GATEWAY), e.g. a proxy")
    ] = None,
    chunk_days: Annotated[int | None, typer.Option("--chunk-days", help="Days per API download")] = None,
    keep_raw: Annotated[
        Path | None, typer.Option("--keep-raw", help="Keep the downloaded DBN files in this directory")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="Refuse an API plan quoted above this many USD")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Quote records, size and cost of an API plan; download nothing")
    ] = False,
    fill_gaps: Annotated[
        bool, typer.Option("--fill-gaps", help="Only the sessions `coverage` finds not done (API)")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Ingest DBN files or API data through every pipeline stage into the store."""

    def run() -> int:
        settings = _settings(
            db=db,
            batch_size=batch_size,
            max_quarantine_ratio=max_quarantine_ratio,
            DATABENTO_GATEWAY=gateway,
        )
        request = _request(
            settings,
            job,
            api=api,
            from_file=from_file,
            dataset=dataset,
            schemas=schema,
            symbols=symbols,
            stype_in=stype_in,
            start_date=_day("--start-date", start_date),
            end_date=_day("--end-date", end_date),
            chunk_days=chunk_days,
            keep_raw=keep_raw,
            max_cost=max_cost,
            fill_gaps=fill_gaps or None,
        )
        model = load_model(settings.transformation_file)
        if dry_run:
            resolved, current = pipeline.prepare(request, settings, model, pipeline.utc_today())
            if current is not None:
                console.out.print(current)
                return 0
            return _dry_run(resolved, settings)
        if as_json:
            summary = pipeline.ingest(request, settings, model=model, force=force)
            console.print_json(console.summary_document(summary))
            return summary.exit_code
        with console.RichProgress() as progress:
            summary = pipeline.ingest(request, settings, progress, model, force=force)
        console.render_summary(summary)
        return summary.exit_code

    code = _guarded(run)
    raise typer.Exit(code)


def _dry_run(request: IngestRequest, settings: Settings) -> int:
    """What an API plan would download and cost, from the free metadata calls only."""
    if request.from_file:
        raise UsageError("--dry-run quotes API downloads; it does not apply to --from-file")
    source = make_source(request, settings)
    try:
        if not isinstance(source, Quoting):
            raise UsageError(f"--dry-run is not available for api type {request.api!r}")
        console.render_quote(request, source.estimate())
    finally:
        source.close()
    return 0


_RUN_OPTIONS = ("keep_raw", "max_cost", "chunk_days", "fill_gaps")


def _request(settings: Settings, job: str | None, **flags: object) -> IngestRequest:
    if job is not None:
        jobs = load_jobs(settings.jobs_file)
        if job not in jobs:
            known = ", ".join(jobs) or "none"
            raise UsageError(f"unknown job {job!r} in {settings.jobs_file}; known jobs: {known}")
        # Run options given with --job apply to it; what to fetch comes from the job alone.
        given = {k: v for k, v in flags.items() if v is not None and k != "api"}
        selectors = [k for k in given if k not in _RUN_OPTIONS]
        if selectors:
            flag = "--schema" if selectors[0] == "schemas" else "--" + selectors[0].replace("_", "-")
            raise UsageError(f"--job {job} takes what to ingest from {settings.jobs_file}; drop {flag}")
        options = {k: v for k, v in given.items() if k in _RUN_OPTIONS}
        return make_request(**{**jobs[job].model_dump(exclude_unset=True), **options})
    request = make_request(**flags)
    if not request.from_file and not (request.dataset and request.schemas):
        raise UsageError("nothing to ingest: give --from-file PATH, --job NAME, or --dataset and --schema")
    return request


QUERY_FORMATS = ("table", "csv", "json", "parquet")


@app.command()
def query(
    statement: Annotated[
        str, typer.Argument(help="SQL to run read-only, e.g. 'SELECT count(*) FROM trades'")
    ],
    db: DbOption = None,
    format: Annotated[str, typer.Option("--format", help="table, csv, json or parquet")] = "table",
    out: Annotated[Path | None, typer.Option(help="Write to this file (needed for parquet)")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it is an existing file")] = False,
    limit: Annotated[int, typer.Option(help="Rows shown by --format table")] = 50,
) -> None:
    """Run your own read-only SQL against the store (the <table>_v views included)."""

    def run() -> None:
        settings = _settings(db=db)
        if format not in QUERY_FORMATS:
            raise UsageError(f"unknown format {format!r}; known: {', '.join(QUERY_FORMATS)}")
        if out is None and format == "parquet":
            raise UsageError("--format parquet writes a file: give --out")
        if out is not None:
            if format == "table":
                raise UsageError("--out takes --format csv, json or parquet")
            check_output(out, overwrite, _store_files(settings))
        store = _read_only_store(settings)
        try:
            if not isinstance(store.data, Querying):
                raise UsageError(f"{store.mode} stores do not run SQL")
            reader = store.data.query(statement, settings.batch_size)
            if format == "table":
                console.render_rows(reader, limit)
            elif out is not None and format != "json":
                rows = write_file(reader, reader.schema, format, out)
                console.err.print(f"wrote {rows:,} rows to {out}")
            else:
                _write_stream(reader, format, out)
        finally:
            store.close()

    _guarded(run)


def _write_stream(reader: pa.RecordBatchReader, format: str, out: Path | None) -> None:
    """CSV or JSON to standard output, or JSON to ``out`` (written whole, then renamed)."""
    if format == "csv":
        with pacsv.CSVWriter(sys.stdout.buffer, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
        return
    rows = [row for batch in reader for row in as_text(batch)]
    text = json.dumps(rows, indent=1) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    partial = out.with_name(out.name + ".partial")
    try:
        partial.write_text(text)
        os.replace(partial, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None


def _store_files(settings: Settings) -> list[Path]:
    """The embedded store's own files: an output must never be one of them."""
    files = [] if "://" in settings.db else [Path(settings.db).expanduser()]
    return [p.with_name(p.name + suffix) for p in files for suffix in ("", ".wal")]


@app.command()
def export(
    schema: Annotated[str, typer.Option(help="Schema to export, e.g. trades")],
    out: Annotated[Path, typer.Option(help="Output file")],
    format: Annotated[str, typer.Option("--format", help="parquet or csv")] = "parquet",
    db: DbOption = None,
    symbols: SymbolsOption = None,
    start_date: StartOption = None,
    end_date: EndOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it is an existing file")] = False,
) -> None:
    """Write stored records of one schema to Parquet or CSV, exactly."""

    def run() -> None:
        settings = _settings(db=db)
        start, end = _date("--start-date", start_date), _date("--end-date", end_date)
        if start and end and end < start:
            raise UsageError(f"end date {end} is before start date {start}")
        check_schema(schema)  # bad arguments fail before the store is opened
        if format not in FORMATS:
            raise UsageError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
        check_output(out, overwrite, _store_files(settings))
        store = _read_only_store(settings)
        try:
            rows = export_records(
                store, schema, format, out, _symbols(symbols), start, end, settings.batch_size
            )
        finally:
            store.close()
        console.out.print(f"wrote {rows:,} {schema} records to {out}")

    _guarded(run)


@app.command("list-jobs")
def list_jobs() -> None:
    """Show the jobs defined in the jobs file (configs/databento.yaml)."""

    def run() -> None:
        settings = _settings()
        console.render_jobs(load_jobs(settings.jobs_file))

    _guarded(run)


@app.command("coverage")
def coverage_command(
    schema: Annotated[str, typer.Option(help="Schema, e.g. trades")],
    db: DbOption = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset, when the schema comes from several")] = None,
    symbols: SymbolsOption = None,
    start_date: Annotated[
        str | None, typer.Option("--start-date", help="First day (default: first requested)")
    ] = None,
    end_date: Annotated[
        str | None, typer.Option("--end-date", help="Last day (default: last requested)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Stored rows and chunk states per symbol and session, against the exchange calendar."""

    def run() -> None:
        settings = _settings(db=db)
        today = pipeline.utc_today()
        start, end = (
            None if value is None else resolve_day(_relative(flag, value), today)
            for flag, value in (("--start-date", start_date), ("--end-date", end_date))
        )
        check_schema(schema)
        calendars = load_calendars(settings.calendars_file)
        store = _read_only_store(settings)
        try:
            report = coverage(store, calendars, schema, dataset, _symbols(symbols) or None, start, end)
        finally:
            store.close()
        if as_json:
            console.print_json(report.document())
        else:
            console.render_coverage(report)

    _guarded(run)


def _relative(flag: str, value: str) -> dt.date | str:
    day = _day(flag, value)
    if day == LAST:
        raise UsageError(f"{flag}: last names where a job's next ingest starts, not a day to report")
    assert day is not None
    return day


@app.command()
def status(db: DbOption = None, as_json: JsonOption = False) -> None:
    """What is stored: tables, row counts, time ranges, chunks and last runs."""

    def run() -> None:
        settings = _settings(db=db)
        store = _read_only_store(settings)
        try:
            report = store.status()
        finally:
            store.close()
        if as_json:
            console.print_json(report)
        else:
            console.render_status(report)

    _guarded(run)


@app.command("quarantine")
def quarantine_command(
    db: DbOption = None,
    run: Annotated[str | None, typer.Option(help="Only this run id")] = None,
    schema: Annotated[str | None, typer.Option(help="Only this schema")] = None,
    rule: Annotated[str | None, typer.Option(help="Only this rule")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many records")] = 50,
    show: Annotated[int | None, typer.Option(help="Print record N of the listing in full")] = None,
) -> None:
    """List quarantined records (by run, schema, rule), or show one in full."""

    def run_command() -> None:
        settings = _settings(db=db)
        if schema is not None:
            check_schema(schema)
        store = _read_only_store(settings)
        try:
            records = store.ledger.quarantined(QuarantineQuery(run, schema, rule, limit))
        finally:
            store.close()
        console.render_quarantine(records, show)

    _guarded(run_command)


@app.command("make-sample")
def make_sample_command(
    out: Annotated[Path, typer.Option(help="Directory for the sample DBN files")] = Path("data/sample"),
) -> None:
    """Write a small DBN sample (CL and ES, 2024 Q1: daily bars and trades) for a first run."""

    def run() -> None:
        _settings()  # logging as every command has it
        try:
            paths = make_sample(out)
        except OSError as exc:
            raise UsageError(f"cannot write the sample to {out}: {exc.strerror or exc}") from None
        for path in paths:
            console.out.print(f"wrote {path}")

    _guarded(run)


@app.command()
def version() -> None:
    """Print the marketpipe version."""
    console.out.print(f"marketpipe {__version__}")


def main() -> None:
    app()
