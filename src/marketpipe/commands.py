"""What each CLI command does, once ``cli`` has parsed its flags: kept apart so that parsing
(and ``--help``, ``version``) never imports the pipeline, Arrow or the database drivers."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

import pyarrow as pa

from marketpipe import console
from marketpipe.config import (
    JOBS_FILE,
    VALIDATION_FILE,
    Settings,
    config_file,
    load_calendars,
    load_jobs,
    load_settings,
    write_project,
)
from marketpipe.coverage import coverage as coverage_report
from marketpipe.defaults import READ_DAY_FORMS
from marketpipe.errors import NothingMatched, UsageError
from marketpipe.exporting import FORMATS, as_text, check_output, write_file
from marketpipe.exporting import export as export_records
from marketpipe.logs import configure
from marketpipe.model import check_schema
from marketpipe.parsing import LAST, day_flag, resolve_day, split_list, utc_today
from marketpipe.registry import embedded_file
from marketpipe.rules.transformation import load_model
from marketpipe.rules.validation import read_rules
from marketpipe.samples import make_sample as write_sample
from marketpipe.stores import open_store
from marketpipe.stores.base import QuarantineQuery, Querying, Store
from marketpipe.symbology import NS_PER_DAY, day_ns

QUERY_FORMATS = ("table", "csv", "json", "parquet")


def _settings(**overrides: object) -> Settings:
    settings = load_settings(**overrides)
    key = settings.databento_api_key
    configure(settings.log_file, settings.log_level, [key.get_secret_value()] if key else [])
    return settings


def _read_only_store(settings: Settings) -> Store:
    """The store for a command that only reads: nothing is created, migrated or converted."""
    return open_store(settings.store, load_model(settings.transformation_file), read_only=True)


def ingest(
    *,
    api: str,
    from_file: str | None,
    job: str | None,
    dataset: str | None,
    schema: str | None,
    symbols: str | None,
    stype_in: str | None,
    start_date: str | None,
    end_date: str | None,
    db: str | None,
    ledger: str | None,
    pg_schema: str | None,
    force: bool,
    batch_size: int | None,
    max_quarantine_ratio: float | None,
    gateway: str | None,
    chunk_days: int | None,
    keep_raw: Path | None,
    max_cost: float | None,
    dry_run: bool,
    fill_gaps: bool,
    as_json: bool,
    wide: bool = False,
    workers: int | None = None,
    max_concurrent_downloads: int | None = None,
    cluster: str | None = None,
) -> int:
    """The exit code: 1 when an input or a chunk failed."""
    from marketpipe.ingesting import build_request, run  # the pipeline and sources: an ingest's only

    settings = _settings(
        db=db,
        ledger=ledger,
        pg_schema=pg_schema,
        batch_size=batch_size,
        max_quarantine_ratio=max_quarantine_ratio,
        max_concurrent_downloads=max_concurrent_downloads,
        DATABENTO_GATEWAY=gateway,
    )
    request = build_request(
        settings,
        job,
        api=api,
        from_file=from_file,
        dataset=dataset,
        schemas=schema,
        symbols=symbols,
        stype_in=stype_in,
        start_date=day_flag("--start-date", start_date),
        end_date=day_flag("--end-date", end_date),
        chunk_days=chunk_days,
        keep_raw=keep_raw,
        max_cost=max_cost,
        fill_gaps=fill_gaps or None,
    )
    model = load_model(settings.transformation_file)
    if dry_run:
        summary = run(request, settings, model=model, dry_run=True)
        if summary.estimate is None or summary.request is None:
            console.out().print(*summary.notes)
        else:
            console.render_quote(summary.request, summary.estimate)
        return 0
    if as_json:
        summary = run(request, settings, None, model, force, workers=workers, cluster=cluster)
        console.print_json(console.summary_document(summary))
        return summary.exit_code
    with console.RichProgress() as progress:
        summary = run(request, settings, progress, model, force, workers=workers, cluster=cluster)
    console.render_summary(summary, wide)
    return summary.exit_code


def query(
    statement: str,
    db: str | None,
    ledger: str | None,
    pg_schema: str | None,
    format: str,
    out: Path | None,
    overwrite: bool,
    limit: int,
    expanded: bool | None = None,
    columns: str | None = None,
    wide: bool = False,
) -> None:
    settings = _settings(db=db, ledger=ledger, pg_schema=pg_schema)
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
        reader = store.data.query(statement, settings.batch_size, settings.query_memory_limit)
        if format == "table":
            console.render_rows(reader, limit, expanded, split_list(columns) or None, wide)
        elif out is not None and format != "json":
            rows = write_file(reader, reader.schema, format, out)
            console.err().print(f"wrote {rows:,} rows to {out}")
        else:
            _write_stream(reader, format, out)
    finally:
        store.close()


def _write_stream(reader: pa.RecordBatchReader, format: str, out: Path | None) -> None:
    """CSV or JSON to standard output, or JSON to ``out`` (written whole, then renamed)."""
    if format == "csv":
        import pyarrow.csv as pacsv  # only a query that prints CSV writes one

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
    """The embedded store's own files (a DuckDB store, a lake's DuckDB ledger): an output must
    never be one of them."""
    embedded = embedded_file(settings.store)
    files = [] if embedded is None else [Path(embedded).expanduser()]
    return [p.with_name(p.name + suffix) for p in files for suffix in ("", ".wal")]


def export(
    schema: str,
    out: Path,
    format: str,
    db: str | None,
    ledger: str | None,
    pg_schema: str | None,
    symbols: str | None,
    start_date: str | None,
    end_date: str | None,
    overwrite: bool,
) -> None:
    settings = _settings(db=db, ledger=ledger, pg_schema=pg_schema)
    start, end = _report_days(start_date, end_date)
    if start and end and end < start:
        raise UsageError(f"end date {end} is before start date {start}")
    check_schema(schema)  # bad arguments fail before the store is opened
    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    check_output(out, overwrite, _store_files(settings))
    store = _read_only_store(settings)
    try:
        rows = export_records(
            store, schema, format, out, split_list(symbols), start, end, settings.batch_size, empty=False
        )
    finally:
        store.close()
    if not rows:
        picked = f" of {symbols}" if symbols else ""
        days = f" from {start or 'the first day'} to {end or 'the last'}" if start or end else ""
        raise NothingMatched(
            f"no {schema} records{picked}{days} in {store.location}: nothing written to {out}"
        )
    console.out().print(f"wrote {rows:,} {schema} records to {out}")


def list_jobs(as_json: bool = False, wide: bool = False) -> None:
    jobs_file = config_file(_settings().jobs_file, JOBS_FILE)
    jobs = load_jobs(jobs_file)
    if as_json:
        console.print_json(
            {"jobs_file": str(jobs_file), "jobs": {n: j.model_dump(mode="json") for n, j in jobs.items()}}
        )
    else:
        console.render_jobs(jobs, jobs_file, wide)


def coverage(
    schema: str,
    db: str | None,
    ledger: str | None,
    pg_schema: str | None,
    dataset: str | None,
    symbols: str | None,
    start_date: str | None,
    end_date: str | None,
    as_json: bool,
    strict: bool = False,
    wide: bool = False,
) -> int:
    """The exit code: 1 with ``strict`` when coverage is not complete."""
    settings = _settings(db=db, ledger=ledger, pg_schema=pg_schema)
    start, end = _report_days(start_date, end_date)
    check_schema(schema)
    calendars = load_calendars(settings.calendars_file)
    store = _read_only_store(settings)
    try:
        report = coverage_report(store, calendars, schema, dataset, split_list(symbols) or None, start, end)
    finally:
        store.close()
    if as_json:
        console.print_json(report.document())
    else:
        console.render_coverage(report, wide)
    return 1 if strict and not report.complete() else 0


def _report_days(start_date: str | None, end_date: str | None) -> tuple[dt.date | None, dt.date | None]:
    """The days a report or an export covers: dates or relative days, resolved now (UTC)."""
    days = []
    for flag, value in (("--start-date", start_date), ("--end-date", end_date)):
        day = day_flag(flag, value, READ_DAY_FORMS)
        if day == LAST:
            raise UsageError(f"{flag}: last names where a job's next ingest starts, not a day to read")
        days.append(None if day is None else resolve_day(day, utc_today()))
    return days[0], days[1]


def status(
    db: str | None, ledger: str | None, pg_schema: str | None, as_json: bool, wide: bool = False
) -> None:
    settings = _settings(db=db, ledger=ledger, pg_schema=pg_schema)
    store = _read_only_store(settings)
    try:
        report = store.status()
    finally:
        store.close()
    if as_json:
        console.print_json(console.status_document(report))
    else:
        console.render_status(report, wide)


def runs(
    run_id: str | None,
    db: str | None,
    ledger: str | None,
    pg_schema: str | None,
    limit: int,
    as_json: bool,
    wide: bool,
) -> None:
    settings = _settings(db=db, ledger=ledger, pg_schema=pg_schema)
    store = _read_only_store(settings)
    try:
        found = store.ledger.runs(limit if run_id is None else 1, run_id)
        if run_id is not None and not found:
            raise UsageError(f"no run {run_id} in {store.location} (marketpipe runs lists them)")
        chunks = store.ledger.run_chunks(run_id) if run_id is not None else []
    finally:
        store.close()
    if as_json:
        runs_ = [console.run_document(r) for r in found]
        console.print_json({"run": runs_[0], "chunks": chunks} if run_id is not None else {"runs": runs_})
    elif run_id is None:
        console.render_runs(found, wide)
    else:
        console.render_run(found[0], chunks, wide)


def delete(
    schema: str,
    db: str | None,
    ledger: str | None,
    pg_schema: str | None,
    dataset: str | None,
    symbols: str | None,
    start_date: str | None,
    end_date: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Count, confirm, delete: a refused or dry run changes nothing."""
    settings = _settings(db=db, ledger=ledger, pg_schema=pg_schema)
    start, end = _report_days(start_date, end_date)
    if start and end and end < start:
        raise UsageError(f"end date {end} is before start date {start}")
    check_schema(schema)
    start_ns = 0 if start is None else day_ns(start)
    end_ns = 2**63 - 1 if end is None else day_ns(end) + NS_PER_DAY
    picked = split_list(symbols)
    # Counting reads; deleting writes (a store's migrations with it) a store that must exist:
    # a mistyped --db is refused, never made.
    store = _read_only_store(settings)
    try:
        deletion, rows = store.deletion(schema, dataset, picked, start_ns, end_ns)
    finally:
        store.close()
    what = (
        f"{rows:,} {schema} rows of {', '.join(picked) or 'every symbol'}"
        f" from {start or 'the first day'} to {end or 'the last day'} in {store.location}"
    )
    if dry_run:
        if as_json:
            console.print_json({"dry_run": True, "rows": rows, "location": store.location})
        else:
            console.out().print(
                f"dry run: would delete {what}", markup=False, highlight=False, soft_wrap=True
            )
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"delete {what}: give --yes to delete without a terminal to confirm on")
        if input(f"delete {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            raise UsageError("nothing deleted")
    store = open_store(settings.store, load_model(settings.transformation_file))
    try:
        deleted, forgotten, unfinished = store.delete(deletion)
    finally:
        store.close()
    if as_json:
        console.print_json(
            {
                "dry_run": False,
                "rows": deleted,
                "chunks_forgotten": forgotten,
                "chunks_pending": unfinished,
                "location": store.location,
            }
        )
    else:
        console.out().print(
            f"deleted {deleted:,} {schema} rows; {console.plural(forgotten, 'chunk')} forgotten (their days"
            f" show as never requested), {console.plural(unfinished, 'chunk')} partly deleted (pending: the"
            " next run of its input stores it whole again)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def forget_failures(
    db: str | None, ledger: str | None, pg_schema: str | None, every: bool, dry_run: bool, as_json: bool
) -> None:
    """Failed chunks whose input file is gone (all of them with ``every``) leave the ledger."""
    settings = _settings(db=db, ledger=ledger, pg_schema=pg_schema)
    store = _read_only_store(settings)
    try:
        failed = store.ledger.failed_chunks()
    finally:
        store.close()
    gone = [f for f in failed if every or _input_gone(f[2])]
    forgotten = 0
    if gone and not dry_run:
        store = open_store(settings.store, load_model(settings.transformation_file))
        try:
            forgotten = store.ledger.forget_failures([key for key, *_ in gone])
        finally:
            store.close()
    if as_json:
        console.print_json(
            {
                "dry_run": dry_run,
                "forgotten": [{"job": j, "input": lb, "error": e} for _, j, lb, e in gone],
                "kept": len(failed) - len(gone),
            }
        )
        return
    word = "would forget" if dry_run else "forgot"
    console.out().print(
        f"{word} {console.plural(len(gone) if dry_run else forgotten, 'failed chunk')}"
        + ("" if every else " whose input is gone")
        + (
            f"; kept {len(failed) - len(gone):,} whose input is there (--all forgets them too)"
            if len(failed) > len(gone)
            else ""
        ),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _input_gone(label: str) -> bool:
    """Whether a failed chunk's label names a local file that is not there: its path, maybe
    followed by `` [records a-b]`` (a part) or `` (schema)`` (a live recording's). A remote
    input (``s3://``) is never taken for gone."""
    path = label.split(" [records ", 1)[0]
    if path.endswith(")") and " (" in path:
        path = path.rsplit(" (", 1)[0]
    return "://" not in path and not Path(path).expanduser().exists()


def verify(db: str | None, ledger: str | None, pg_schema: str | None, repair: bool, as_json: bool) -> int:
    """Every done chunk's rows against the ledger; the exit code: 1 when any is damaged."""
    settings = _settings(db=db, ledger=ledger, pg_schema=pg_schema)
    # Reading opens the store read-only; marking damage is a write (a store's migrations with
    # it), of a store that must exist: a mistyped --db is refused, never made.
    store = _read_only_store(settings)
    if repair:
        store.close()
        store = open_store(settings.store, load_model(settings.transformation_file))
    try:
        report = store.verify(repair)
    finally:
        store.close()
    if as_json:
        console.print_json(
            {
                "location": report.location,
                "chunks": report.chunks,
                "damaged": [
                    {"chunk_id": i, "input": label, "reason": why} for i, label, why in report.damaged
                ],
                "repaired": report.repaired,
            }
        )
    else:
        console.render_verification(report)
    return 1 if report.damaged else 0


def quarantine(
    db: str | None,
    ledger: str | None,
    pg_schema: str | None,
    run: str | None,
    schema: str | None,
    rule: str | None,
    limit: int,
    show: int | None,
    as_json: bool = False,
    wide: bool = False,
) -> None:
    settings = _settings(db=db, ledger=ledger, pg_schema=pg_schema)
    if schema is not None:
        check_schema(schema)
    query = QuarantineQuery(run, schema, rule, limit)
    store = _read_only_store(settings)
    try:
        ledger_ = store.ledger
        if run is not None and not ledger_.runs(1, run):
            raise UsageError(f"--run {run}: no such run in {store.location} (marketpipe runs lists them)")
        if rule is not None:
            # A rule of the validation file that quarantined nothing is known; a name neither
            # it nor any quarantined record has is a typo.
            configured = [r.name for r in read_rules(config_file(settings.validation_file, VALIDATION_FILE))]
            known = sorted({*configured, *ledger_.quarantine_rules()})
            if rule not in known:
                raise UsageError(f"--rule {rule}: no such rule; known: {', '.join(known)}")
        records, total = ledger_.quarantined(query), ledger_.quarantine_count(query)
    finally:
        store.close()
    if as_json:
        console.print_json(
            {
                "total": total,
                "shown": len(records),
                "records": [console.quarantined_document(r) for r in records],
            }
        )
    elif not total:
        console.out().print("no quarantined records" + (" match" if run or schema or rule else ""))
    else:
        console.render_quarantine(records, show, f"{len(records):,} of {total:,} shown", wide)


def make_sample(out: Path) -> None:
    _settings()  # logging as every command has it
    try:
        paths = write_sample(out)
    except OSError as exc:
        raise UsageError(f"cannot write the sample to {out}: {exc.strerror or exc}") from None
    for path in paths:
        console.out().print(f"wrote {path}")


def init(directory: Path, force: bool) -> None:
    _settings()  # logging as every command has it
    for path in write_project(directory, force):
        console.out().print(f"wrote {path}")
    console.out().print(f"a project in {directory}: every marketpipe command run there reads its configs/")
