"""What the CLI shows: Rich progress while ingesting, and the tables after."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from marketpipe import tables
from marketpipe.config import IngestRequest
from marketpipe.errors import UsageError
from marketpipe.exporting import as_text
from marketpipe.stores.base import QuarantinedRecord, StoreStatus, Verification
from marketpipe.tables import Cell, Col
from marketpipe.types import Chunk, ChunkStatus, Estimate

if TYPE_CHECKING:  # types only: the pipeline is imported by the commands that run it
    from marketpipe.coverage import Coverage
    from marketpipe.pipeline import ChunkResult, RunSummary


def out() -> Console:
    """Standard output's console, made when used: it takes the terminal's width (or
    ``COLUMNS``) as it is when the command prints, not when marketpipe was imported."""
    return Console()


def err() -> Console:
    """Standard error's console (progress, warnings), made when used."""
    return Console(stderr=True)


class RichProgress:
    """Chunks done of planned, records read, records per second and the time left: from the
    planned records where the plan knows them (files), else from the chunks. Without a
    terminal (cron, a pipe) nothing redraws: one line per finished chunk goes to standard
    error as it finishes, so a log shows progress before the summary."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = err()
        self._lines = not console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[chunks]}"),
            TextColumn("{task.fields[records]:,} records"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=self._lines,
        )
        self._task = self._progress.add_task("ingest", total=None, records=0, chunks="", rate="")
        self._records = 0
        self._done = 0
        self._planned = 0
        self._by_records = False
        self._started = False
        self._clock = time.monotonic()

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._progress.stop()

    def plan(self, chunks: Sequence[Chunk]) -> None:
        """Shown from here: errors found before planning print nothing but their line."""
        counts = [c.record_count for c in chunks]
        self._planned = len(chunks)
        self._by_records = bool(counts) and all(n is not None for n in counts)
        total = sum(n or 0 for n in counts) if self._by_records else len(chunks)
        self._progress.update(self._task, total=total, chunks=f"0/{len(chunks):,} chunks")
        self._progress.start()
        self._started = True
        self._clock = time.monotonic()

    def chunk_started(self, chunk: Chunk) -> None:
        self._progress.update(self._task, description=chunk.schema)

    def advance(self, records: int) -> None:
        self._records += records
        self._progress.update(
            self._task,
            records=self._records,
            rate=f"{self._rate():,.0f} records/s",
            advance=records if self._by_records else 0,
        )

    def chunk_finished(self, result: ChunkResult) -> None:
        self._done += 1
        skipped = result.status is ChunkStatus.SKIPPED
        if self._by_records and skipped:  # what a skipped chunk holds is not read: not to wait for
            task = self._progress.tasks[0]
            self._progress.update(self._task, total=(task.total or 0) - (result.chunk.record_count or 0))
        self._progress.update(
            self._task,
            chunks=f"{self._done:,}/{self._planned:,} chunks",
            advance=0 if self._by_records else 1,
        )
        if self._lines and not skipped:
            counts = f"read {result.read:,}, stored {result.stored:,}, quarantined {result.quarantined:,}"
            print(
                f"[{self._done:,}/{self._planned:,}] {result.status} {result.chunk.label}: {counts}"
                f" in {result.seconds:.2f} s; {self._records:,} records so far,"
                f" {self._rate():,.0f} records/s",
                file=sys.stderr,
                flush=True,
            )

    def _rate(self) -> float:
        elapsed = time.monotonic() - self._clock
        return self._records / elapsed if elapsed > 0 else 0.0


def render_quote(request: IngestRequest, estimate: Estimate) -> None:
    days = f"{request.start_date} to {request.end_date}"
    quotes = estimate.quotes
    table = Table(
        title=f"dry run: {request.dataset} {days}, {len(request.symbols)} symbol(s),"
        f" {estimate.requests} chunk(s)"
    )
    for name in ("schema", "records", "billable size", "cost (USD)"):
        table.add_column(name, justify="left" if name == "schema" else "right")
    for q in quotes:
        table.add_row(q.schema, f"{q.records:,}", _size(q.billable_bytes), f"{q.cost_usd:,.2f}")
    table.add_row(
        "total",
        f"{sum(q.records for q in quotes):,}",
        _size(sum(q.billable_bytes for q in quotes)),
        f"{sum(q.cost_usd for q in quotes):,.2f}",
    )
    out().print(table)
    for warning in estimate.warnings:
        err().print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    for note in estimate.notes:
        err().print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    out().print("dry run: nothing was downloaded")


def _size(count: int) -> str:
    return f"{count / 2**20:,.1f} MB"


_DUPLICATES_SHOWN = 5
_FAILED_SHOWN = 5


def print_json(document: object) -> None:
    """One JSON document on standard output (dataclasses included; timestamps in ISO 8601)."""
    if dataclasses.is_dataclass(document) and not isinstance(document, type):
        document = dataclasses.asdict(document)
    print(json.dumps(document, default=_json_value, indent=2))


def _json_value(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _index_ns(fields: dict[str, int | str]) -> int | None:
    """A quarantined record's index timestamp: ts_recv where its schema has one, else ts_event."""
    ts = fields.get("ts_recv", fields.get("ts_event"))
    return ts if isinstance(ts, int) else None


def quarantined_document(record: QuarantinedRecord) -> dict[str, object]:
    """A quarantined record as data: the raw DBN fields as an object, its index time as
    nanoseconds and ISO 8601."""
    fields = json.loads(record.record)
    ts = _index_ns(fields)
    return {
        "run_id": record.run_id,
        "chunk_key": record.chunk_key,
        "schema": record.schema,
        "stage": record.stage,
        "rule": record.rule,
        "message": record.message,
        "index_time_ns": ts,
        "index_time": tables.iso_ns(ts),
        "quarantined_at": record.quarantined_at,
        "record": fields,
    }


def summary_document(summary: RunSummary) -> dict[str, object]:
    """The run summary as data: per schema and in total, what failed and why."""
    totals = summary.totals()
    return {
        "run_id": summary.run_id,
        "job": summary.job,
        "store": summary.store,
        "exit_code": summary.exit_code,
        "totals": {"read": totals.read, "stored": totals.stored, "quarantined": totals.quarantined},
        "schemas": {schema: dataclasses.asdict(row) for schema, row in summary.schemas().items()},
        "quarantined_by_rule": dict(sum((r.rules for r in summary.results), Counter())),
        "failed": [{"input": label, "error": error} for label, error in summary.failed],
        "stopped": summary.stopped,
        "duplicates": [{"input": p, "same_records_as": s} for p, s in summary.duplicates],
        "warnings": summary.warnings,
        "notes": summary.notes,
    }


SUMMARY_COLUMNS = (
    Col("schema"),
    Col("read", right=True),
    Col("stored", right=True),
    Col("quarantined", right=True),
    Col("seconds", right=True, drop=2),
    Col("records/s", right=True, drop=3),
    Col("skipped", right=True, drop=1),
    Col("failed", right=True),
)


def rate(records: int, seconds: float | None) -> Cell:
    """Records per second, compact from a million up."""
    return tables.count(round(records / seconds)) if seconds else "-"


def render_summary(summary: RunSummary, wide: bool = False) -> None:
    out().print(f"store: {summary.store}", markup=False, highlight=False, soft_wrap=True)
    rows = [
        [
            schema,
            f"{row.read:,}",
            f"{row.stored:,}",
            f"{row.quarantined:,}",
            tables.seconds(row.seconds),
            rate(row.read, row.seconds),
            f"{row.skipped:,}",
            f"{row.failed:,}",
        ]
        for schema, row in summary.schemas().items()
    ]
    if summary.results:  # a run of nothing (all stored already) has its notes to say so
        tables.print_table(
            out(), SUMMARY_COLUMNS, rows, title=f"run {summary.run_id} ({summary.job})", wide=wide
        )
    rules: Counter[str] = Counter()
    for r in summary.results:
        rules.update(r.rules)
    warnings: Counter[str] = Counter()
    for r in summary.results:
        warnings.update(r.warnings)
    for rule, count in sorted(rules.items()):
        out().print(f"quarantined by {rule}: {count:,}")
    for rule, count in sorted(warnings.items()):
        out().print(f"warned by {rule} (stored): {count:,}")
    skipped = sum(r.status is ChunkStatus.SKIPPED for r in summary.results)
    if skipped:
        out().print(
            f"skipped {plural(skipped, 'chunk')} already stored by an earlier run (--force redoes them)"
        )
    for path, same_as in summary.duplicates[:_DUPLICATES_SHOWN]:
        out().print(
            f"skipped {path}: the same records as {same_as}", markup=False, highlight=False, soft_wrap=True
        )
    if len(summary.duplicates) > _DUPLICATES_SHOWN:
        out().print(
            f"skipped {len(summary.duplicates):,} inputs in all that hold the same records as another"
            " input of this run (each is named in the log: input.duplicate)"
        )
    for note in summary.notes:
        out().print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    for warning in summary.warnings:
        err().print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    if summary.stopped:
        err().print(
            f"stopped: {summary.stopped}; run again to resume", markup=False, highlight=False, soft_wrap=True
        )
    for label, reason in summary.failed:
        err().print(
            f"failed: {reason if label in reason else f'{label}: {reason}'}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def render_jobs(jobs: dict[str, IngestRequest], jobs_file: Path, wide: bool = False) -> None:
    rows = []
    for name, job in jobs.items():
        source = f"files: {job.from_file}" if job.from_file else f"{job.api}: {job.dataset}"
        dates = f"{job.start_date or ''} .. {job.end_date or ''}" if job.start_date or job.end_date else ""
        rows.append([name, source, ", ".join(job.schemas), ", ".join(job.symbols), dates, job.description])
    tables.print_table(out(), JOB_COLUMNS, rows, title="jobs", wide=wide)
    out().print(f"from {jobs_file}", markup=False, highlight=False, soft_wrap=True)


JOB_COLUMNS = (
    Col("name"),
    Col("source", wrap=True),
    Col("schemas", wrap=True),
    Col("symbols", wrap=True),
    Col("dates", drop=1),
    Col("description", wrap=True, drop=2),
)


def render_verification(report: Verification) -> None:
    """The damaged chunks, one line each (labels and reasons whole), then the count."""
    for _, label, reason in report.damaged:
        out().print(f"damaged: {label}: {reason}", markup=False, highlight=False, soft_wrap=True)
    out().print(
        f"verified {report.chunks:,} chunks of {report.location}: {len(report.damaged):,} damaged",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if report.damaged:
        out().print(
            "marked failed: run the same ingest again to store them"
            if report.repaired
            else "verify --repair marks them failed, so the next run stores them again",
            markup=False,
            highlight=False,
        )


def render_quarantine(
    records: list[QuarantinedRecord], show: int | None, shown: str, wide: bool = False
) -> None:
    if show is not None:
        if not 1 <= show <= len(records):
            raise UsageError(f"--show {show}: the listing has {len(records)} records")
        chosen = records[show - 1]
        for name in ("run_id", "schema", "stage", "rule", "message", "quarantined_at", "chunk_key"):
            out().print(f"{name}: {getattr(chosen, name)}", markup=False, highlight=False)
        out().print_json(chosen.record)
        return
    rows = []
    for i, r in enumerate(records, start=1):
        ts = _index_ns(json.loads(r.record))
        rows.append(
            [
                str(i),
                r.run_id,
                r.schema,
                r.stage,
                r.rule,
                r.message,
                tables.ns_time(ts),
                _time(r.quarantined_at),
            ]
        )
    tables.print_table(out(), QUARANTINE_COLUMNS, rows, title=f"quarantined records ({shown})", wide=wide)


QUARANTINE_COLUMNS = (
    Col("#", right=True),
    Col("run_id"),
    Col("schema", drop=2),
    Col("stage", drop=4),
    Col("rule"),
    Col("message", wrap=True),
    Col("index time", drop=1),
    Col("quarantined_at", drop=3),
)


def _time(value: object) -> Cell:
    """A database timestamp in ISO 8601 (UTC), compact to the second."""
    if not isinstance(value, dt.datetime):
        return "" if value is None else str(value)
    value = value.astimezone(dt.UTC)
    return value.isoformat(), value.strftime("%Y-%m-%dT%H:%M:%SZ")


def status_document(status: StoreStatus) -> dict[str, object]:
    """What status shows, as objects; times as nanoseconds and ISO 8601 side by side."""
    return {
        "location": status.location,
        "mode": status.mode,
        "tables": [
            {
                "table": t.table,
                "rows": t.rows,
                "time_column": t.time_column,
                "first_ns": t.first_ns,
                "first": tables.iso_ns(t.first_ns),
                "last_ns": t.last_ns,
                "last": tables.iso_ns(t.last_ns),
            }
            for t in status.tables
        ],
        "chunks": [{"job": job, "status": state, "chunks": n} for job, state, n in status.chunks],
        "failed": [{"job": job, "input": label, "error": error} for job, label, error in status.failed],
        "runs": [run_document(run) for run in status.runs],
        "pending_migrations": status.pending_migrations,
    }


def run_document(run: dict[str, object]) -> dict[str, object]:
    """A run as data, with its duration in seconds."""
    return {**run, "seconds": _took(run)}


def _took(run: dict[str, object]) -> float | None:
    started, finished = run["started_at"], run["finished_at"]
    if isinstance(started, dt.datetime) and isinstance(finished, dt.datetime):
        return (finished - started).total_seconds()
    return None


def render_status(status: StoreStatus, wide: bool = False) -> None:
    out().print(f"store: {status.location} ({status.mode})", markup=False, highlight=False, soft_wrap=True)
    rows = [
        [t.table, f"{t.rows:,}", t.time_column, tables.ns_time(t.first_ns), tables.ns_time(t.last_ns)]
        for t in status.tables
    ]
    tables.print_table(out(), TABLE_COLUMNS, rows, title="tables", wide=wide)
    chunks = [[job, state, f"{count:,}"] for job, state, count in status.chunks]
    tables.print_table(out(), CHUNK_COLUMNS, chunks, title="chunks", wide=wide)
    failed = sum(n for _, state, n in status.chunks if state == ChunkStatus.FAILED)
    for job, label, error in status.failed[:_FAILED_SHOWN]:
        reason = error if label in error else f"{label}: {error}"
        out().print(f"failed ({job}): {reason}", markup=False, highlight=False, soft_wrap=True)
    if failed > _FAILED_SHOWN:
        out().print(
            f"{failed:,} failed chunks in all (the latest {_FAILED_SHOWN} above): status --json lists"
            f" {len(status.failed)}; forget-failures clears those whose input is gone",
            markup=False,
            highlight=False,
        )
    render_runs(status.runs, wide, title="last runs")
    if status.pending_migrations:
        out().print(
            f"pending migrations (the next write applies them): {', '.join(status.pending_migrations)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


TABLE_COLUMNS = (
    Col("table"),
    Col("rows", right=True),
    Col("time column", drop=1),
    Col("first"),
    Col("last"),
)
CHUNK_COLUMNS = (Col("job"), Col("status"), Col("chunks", right=True))
RUN_COLUMNS = (
    Col("run_id"),
    Col("job", drop=4),
    Col("started", drop=2),
    Col("seconds", right=True, drop=3),
    Col("status"),
    Col("read", right=True, drop=5),  # stored + quarantined
    Col("stored", right=True),
    Col("quarantined", right=True),
    Col("failed", right=True),
)


def render_runs(runs: list[dict[str, object]], wide: bool = False, title: str = "runs") -> None:
    rows = []
    for run in runs:
        rows.append(
            [
                str(run["run_id"]),
                str(run["job"]),
                _time(run["started_at"]),
                tables.seconds(_took(run)),
                str(run["status"]),
                *(_number(run[name]) for name in ("read", "stored", "quarantined", "failed")),
            ]
        )
    tables.print_table(out(), RUN_COLUMNS, rows, title=title, wide=wide)


def render_run(run: dict[str, object], chunks: list[dict[str, object]], wide: bool = False) -> None:
    """One run: its line, then each chunk it ran (errors whole, below the table)."""
    render_runs([run], wide, title=f"run {run['run_id']}")
    rows = [
        [
            str(c["label"]),
            str(c["schema"]),
            str(c["status"]),
            _number(c["records_read"]),
            _number(c["stored"]),
            _number(c["quarantined"]),
            tables.seconds(None if c["seconds"] is None else float(c["seconds"])),  # type: ignore[arg-type]
            "" if c["attempts"] is None else f"{int(c['attempts']) - 1:,}",  # type: ignore[call-overload]
            _time(c["updated_at"]),
        ]
        for c in chunks
    ]
    tables.print_table(out(), RUN_CHUNK_COLUMNS, rows, title=f"{len(chunks):,} chunks", wide=wide)
    for c in chunks:
        if c["error"]:
            out().print(
                f"{c['status']}: {c['label']}: {c['error']}", markup=False, highlight=False, soft_wrap=True
            )


RUN_CHUNK_COLUMNS = (
    Col("input", wrap=True),
    Col("schema", drop=3),
    Col("status"),
    Col("read", right=True, drop=4),
    Col("stored", right=True),
    Col("quarantined", right=True),
    Col("seconds", right=True, drop=2),
    Col("retries", right=True, drop=5),
    Col("ended", drop=1),
)


def _number(value: object) -> str:
    return "" if value is None else f"{int(value):,}"  # type: ignore[call-overload]


def render_rows(
    reader: pa.RecordBatchReader,
    limit: int,
    expanded: bool | None = None,
    columns: list[str] | None = None,
    wide: bool = False,
) -> None:
    """The first ``limit`` rows of a query, then how many there were in all: a table, or one
    block per row (psql's expanded mode: ``expanded`` None chooses it when the table would
    not fit the terminal). ``columns``: only these, in this order."""
    names = reader.schema.names
    missing = [c for c in columns or () if c not in names]
    if missing:
        raise UsageError(
            f"--columns: no column {', '.join(missing)} in the result; it has {', '.join(names)}"
        )
    chosen = columns or names
    rows: list[list[str]] = []
    total = 0
    for batch in reader:
        if total < limit:
            shown = batch.slice(0, limit - total).select(chosen)
            rows += [["NULL" if v is None else str(v) for v in row.values()] for row in as_text(shown)]
        total += batch.num_rows
    console = out()
    cols = [tables.Col(name) for name in chosen]
    if expanded is None:
        expanded = not wide and tables.need(cols, rows) > console.width
    if expanded:
        width = max((len(n) for n in chosen), default=0)
        for i, row in enumerate(rows, start=1):
            header = f"-[ RECORD {i} ]"
            console.print(header + "-" * max(0, width + 3 - len(header)), markup=False, highlight=False)
            for name, value in zip(chosen, row, strict=True):
                console.print(f"{name:<{width}} | {value}", markup=False, highlight=False, soft_wrap=True)
    else:
        tables.print_table(console, cols, rows, wide=wide)
    first = f"first {limit:,} of " if total > limit else ""
    console.print(f"{first}{total:,} row{'s' if total != 1 else ''}")


COVERAGE_COLUMNS = (
    Col("symbol"),
    Col("sessions with rows", right=True),
    Col("rows", right=True),
    Col("done, no rows", right=True, drop=2),
    Col("rows off-session", right=True, drop=1),
)


def plural(n: int, word: str) -> str:
    """``1 chunk``, ``2 chunks``, with thousands separators."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


_CELL = {"stored": ("█", "green"), "empty": ("·", "dim"), "pending": ("?", "yellow"),
         "failed": ("x", "red"), "never": ("-", "red")}  # fmt: skip
_WORST = ("never", "failed", "pending", "empty", "stored")
_GRID_WIDTH = 100


def _ranges(days: list[dt.date], sessions: list[dt.date]) -> str:
    """Runs of consecutive sessions as first..last."""
    index = {day: i for i, day in enumerate(sessions)}
    runs: list[list[dt.date]] = []
    for day in days:
        if runs and index[day] == index[runs[-1][-1]] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs)


def render_coverage(report: Coverage, wide: bool = False) -> None:
    """One line per symbol, one cell per session (or per group of sessions where the range has
    more sessions than the line has room), then totals and the gaps."""
    console = out()
    sessions = report.sessions
    width = max([len(s) for s in report.rows] + [6])
    room = max(10, min(_GRID_WIDTH, console.width - width - 1))
    per_cell = max(1, -(-len(sessions) // room))
    console.print(
        f"{report.schema} · {report.dataset or 'no dataset'} · calendar {report.calendar} ·"
        f" {report.start}..{report.end}: {plural(len(sessions), 'session')}"
        + (f" ({per_cell} per cell)" if per_cell > 1 else ""),
        markup=False,
        highlight=False,
    )
    for symbol, days in sorted(report.rows.items()):
        cells = []
        for i in range(0, len(sessions), per_cell):
            kinds = []
            for session in sessions[i : i + per_cell]:
                state = report.state(symbol, session)
                kinds.append(("stored" if days.get(session) else "empty") if state == "done" else state)
            char, style = _CELL[min(kinds, key=_WORST.index)]
            cells.append(f"[{style}]{char}[/]")
        console.print(f"{symbol:<{width}} " + "".join(cells), highlight=False, soft_wrap=True)
    out().print(
        "[green]█[/] rows  [dim]·[/] done, no rows  [yellow]?[/] pending  [red]x[/] failed"
        "  [red]-[/] never requested"
    )
    rows = [
        [
            symbol,
            f"{sum(1 for s in sessions if days.get(s)):,} / {len(sessions):,}",
            f"{report.total(symbol):,}",
            f"{len(report.empty(symbol)):,}",
            f"{sum(report.off_session.get(symbol, {}).values()):,}",
        ]
        for symbol, days in sorted(report.rows.items())
    ]
    tables.print_table(console, COVERAGE_COLUMNS, rows, wide=wide)
    off = sorted({day for days in report.off_session.values() for day in days})
    if off:
        out().print(
            f"rows on {plural(len(off), 'day')} that are not {report.calendar} sessions (counted above):"
            f" {', '.join(str(d) for d in off)}"
        )
    for symbol in report.unknown:
        out().print(f"{symbol}: never stored (no instrument or row of {report.schema} under that name)")
    gaps = report.gaps()
    if report.complete():
        out().print("complete: every session's chunks are done")
        return
    words = {"failed": "failed", "pending": "pending or interrupted", "never": "never requested"}
    for state, word in words.items():
        missing = [s for s in gaps if report.states[s] == state]
        if missing:
            console.print(f"{plural(len(missing), 'session')} {word}: {_ranges(missing, sessions)}")
    for symbol, lacking in sorted(report.missing.items()):
        console.print(
            f"{symbol}: {plural(len(lacking), 'session')} without all its instruments (deleted, or never"
            f" requested): {_ranges(lacking, sessions)}",
            markup=False,
            highlight=False,
        )
    if gaps:
        console.print(f"{plural(len(gaps), 'session')} to fetch: ingest ... --fill-gaps")
    out().print("not complete")
