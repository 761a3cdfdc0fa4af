"""What the CLI shows: Rich progress while ingesting, and the tables after."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from marketpipe.config import IngestRequest
from marketpipe.errors import UsageError
from marketpipe.exporting import as_text
from marketpipe.stores.base import RUN_FIELDS, QuarantinedRecord, StoreStatus, Verification
from marketpipe.types import Chunk, ChunkStatus, Estimate

if TYPE_CHECKING:  # types only: the pipeline is imported by the commands that run it
    from marketpipe.coverage import Coverage
    from marketpipe.pipeline import ChunkResult, RunSummary

out = Console()
err = Console(stderr=True)


class RichProgress:
    """Chunks done out of planned, and records read so far."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[records]:,} records"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self._task = self._progress.add_task("ingest", total=0, records=0)
        self._records = 0
        self._started = False

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._progress.stop()

    def plan(self, chunks: int) -> None:
        """Shown from here: errors found before planning print nothing but their line."""
        self._progress.update(self._task, total=chunks)
        self._progress.start()
        self._started = True

    def chunk_started(self, chunk: Chunk) -> None:
        self._progress.update(self._task, description=chunk.schema)

    def advance(self, records: int) -> None:
        self._records += records
        self._progress.update(self._task, records=self._records)

    def chunk_finished(self, result: ChunkResult) -> None:
        self._progress.advance(self._task)


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
    out.print(table)
    for warning in estimate.warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    for note in estimate.notes:
        err.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    out.print("dry run: nothing was downloaded")


def _size(count: int) -> str:
    return f"{count / 2**20:,.1f} MB"


_DUPLICATES_SHOWN = 5


def print_json(document: object) -> None:
    """One JSON document on standard output (dataclasses and timestamps included)."""
    if dataclasses.is_dataclass(document) and not isinstance(document, type):
        document = dataclasses.asdict(document)
    print(json.dumps(document, default=str, indent=2))


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


def render_summary(summary: RunSummary) -> None:
    out.print(f"store: {summary.store}", markup=False, highlight=False, soft_wrap=True)
    table = Table(title=f"run {summary.run_id} ({summary.job})")
    for name in ("schema", "read", "stored", "rejected", "seconds", "records/s", "skipped", "failed"):
        table.add_column(name, justify="left" if name == "schema" else "right")
    for schema, row in summary.schemas().items():
        rate = f"{row.read / row.seconds:,.0f}" if row.seconds > 0 else "-"
        table.add_row(
            schema,
            f"{row.read:,}",
            f"{row.stored:,}",
            f"{row.quarantined:,}",
            f"{row.seconds:.2f}",
            rate,
            f"{row.skipped}",
            f"{row.failed}",
        )
    if summary.results:  # a run of nothing (all stored already) has its notes to say so
        out.print(table)
    rules: Counter[str] = Counter()
    for r in summary.results:
        rules.update(r.rules)
    warnings: Counter[str] = Counter()
    for r in summary.results:
        warnings.update(r.warnings)
    for rule, count in sorted(rules.items()):
        out.print(f"quarantined by {rule}: {count:,}")
    for rule, count in sorted(warnings.items()):
        out.print(f"warned by {rule} (stored): {count:,}")
    skipped = sum(r.status is ChunkStatus.SKIPPED for r in summary.results)
    if skipped:
        out.print(f"skipped {skipped:,} chunks already stored by an earlier run (--force redoes them)")
    for path, same_as in summary.duplicates[:_DUPLICATES_SHOWN]:
        out.print(
            f"skipped {path}: the same records as {same_as}", markup=False, highlight=False, soft_wrap=True
        )
    if len(summary.duplicates) > _DUPLICATES_SHOWN:
        out.print(
            f"skipped {len(summary.duplicates):,} inputs in all that hold the same records as another"
            " input of this run (each is named in the log: input.duplicate)"
        )
    for note in summary.notes:
        out.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    for warning in summary.warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    if summary.stopped:
        err.print(
            f"stopped: {summary.stopped}; run again to resume", markup=False, highlight=False, soft_wrap=True
        )
    for label, reason in summary.failed:
        err.print(
            f"failed: {reason if label in reason else f'{label}: {reason}'}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def render_jobs(jobs: dict[str, IngestRequest], jobs_file: Path) -> None:
    table = Table(title="jobs", caption=f"from {jobs_file}")
    for name in ("name", "source", "schemas", "symbols", "dates", "description"):
        table.add_column(name, no_wrap=name == "name")
    for name, job in jobs.items():
        source = f"files: {job.from_file}" if job.from_file else f"{job.api}: {job.dataset}"
        dates = f"{job.start_date or ''} .. {job.end_date or ''}" if job.start_date or job.end_date else ""
        table.add_row(name, source, ", ".join(job.schemas), ", ".join(job.symbols), dates, job.description)
    out.print(table)


def render_verification(report: Verification) -> None:
    """The damaged chunks, one line each (labels and reasons whole), then the count."""
    for _, label, reason in report.damaged:
        out.print(f"damaged: {label}: {reason}", markup=False, highlight=False, soft_wrap=True)
    out.print(
        f"verified {report.chunks:,} chunks of {report.location}: {len(report.damaged):,} damaged",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if report.damaged:
        out.print(
            "marked failed: run the same ingest again to store them"
            if report.repaired
            else "verify --repair marks them failed, so the next run stores them again",
            markup=False,
            highlight=False,
        )


def render_quarantine(records: list[QuarantinedRecord], show: int | None) -> None:
    if show is not None:
        if not 1 <= show <= len(records):
            raise UsageError(f"--show {show}: the listing has {len(records)} records")
        chosen = records[show - 1]
        for name in ("run_id", "schema", "stage", "rule", "message", "quarantined_at", "chunk_key"):
            out.print(f"{name}: {getattr(chosen, name)}", markup=False, highlight=False)
        out.print_json(chosen.record)
        return
    table = Table(title=f"quarantined records ({len(records)} shown)")
    for name in ("#", "run_id", "schema", "stage", "rule", "message", "index time", "quarantined_at"):
        table.add_column(name, overflow="fold")
    for i, r in enumerate(records, start=1):
        fields = json.loads(r.record)
        ts = fields.get("ts_recv", fields.get("ts_event"))
        table.add_row(
            str(i), r.run_id, r.schema, r.stage, r.rule, r.message, _ns_text(ts), str(r.quarantined_at)
        )
    out.print(table)


def _ns_text(ns: int | None) -> str:
    """UTC ISO-8601 with all nine fractional digits (datetime stops at microseconds)."""
    if ns is None or not 0 <= ns < 2**63:
        return "" if ns is None else str(ns)
    seconds, fraction = divmod(ns, 10**9)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}Z"


def render_status(status: StoreStatus) -> None:
    out.print(f"store: {status.location} ({status.mode})")
    tables = Table(title="tables")
    for name in ("table", "rows", "time column", "first", "last"):
        tables.add_column(name, justify="right" if name == "rows" else "left")
    for t in status.tables:
        tables.add_row(t.table, f"{t.rows:,}", t.time_column, _ns_text(t.first_ns), _ns_text(t.last_ns))
    out.print(tables)
    chunks = Table(title="chunks")
    for name in ("job", "status", "chunks"):
        chunks.add_column(name)
    for job, state, count in status.chunks:
        chunks.add_row(job, state, str(count))
    out.print(chunks)
    for job, label, error in status.failed:
        out.print(f"failed chunk ({job}) {label}: {error}", markup=False, highlight=False, soft_wrap=True)
    runs = Table(title="last runs")
    for name in RUN_FIELDS:
        runs.add_column(name)
    for run in status.runs:
        runs.add_row(*("" if v is None else str(v) for v in run.values()))
    out.print(runs)


def render_rows(reader: pa.RecordBatchReader, limit: int) -> None:
    """The first ``limit`` rows of a query as a table, and how many there were in all."""
    table = Table(*reader.schema.names, show_lines=False)
    total = 0
    for batch in reader:
        if total < limit:
            for row in as_text(batch.slice(0, limit - total)):
                table.add_row(*("NULL" if v is None else str(v) for v in row.values()))
        total += batch.num_rows
    out.print(table)
    shown = f"first {limit:,} of " if total > limit else ""
    out.print(f"{shown}{total:,} row{'s' if total != 1 else ''}")


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


def render_coverage(report: Coverage) -> None:
    """One line per symbol, one cell per session (or per group of sessions on a long range),
    then totals and the gaps."""
    sessions = report.sessions
    per_cell = max(1, -(-len(sessions) // _GRID_WIDTH))
    out.print(
        f"{report.schema} · {report.dataset or 'no dataset'} · calendar {report.calendar} ·"
        f" {report.start}..{report.end}: {len(sessions):,} sessions"
        + (f" ({per_cell} per cell)" if per_cell > 1 else "")
    )
    width = max([len(s) for s in report.rows] + [6])
    for symbol, days in sorted(report.rows.items()):
        cells = []
        for i in range(0, len(sessions), per_cell):
            kinds = []
            for session in sessions[i : i + per_cell]:
                state = report.states[session]
                kinds.append(("stored" if days.get(session) else "empty") if state == "done" else state)
            char, style = _CELL[min(kinds, key=_WORST.index)]
            cells.append(f"[{style}]{char}[/]")
        out.print(f"{symbol:<{width}} " + "".join(cells), highlight=False)
    out.print(
        "[green]█[/] rows  [dim]·[/] done, no rows  [yellow]?[/] pending  [red]x[/] failed"
        "  [red]-[/] never requested"
    )
    table = Table("symbol", "sessions with rows", "rows", "done, no rows")
    for symbol, days in sorted(report.rows.items()):
        with_rows = sum(1 for s in sessions if days.get(s))
        table.add_row(
            symbol,
            f"{with_rows:,} / {len(sessions):,}",
            f"{sum(days.values()):,}",
            f"{len(report.empty(symbol)):,}",
        )
    out.print(table)
    gaps = report.gaps()
    if not gaps:
        out.print("complete: every session's chunks are done")
        return
    words = {"failed": "failed", "pending": "pending or interrupted", "never": "never requested"}
    for state, word in words.items():
        missing = [s for s in gaps if report.states[s] == state]
        if missing:
            out.print(f"{len(missing):,} sessions {word}: {_ranges(missing, sessions)}")
    out.print(f"{len(gaps):,} sessions to fetch: ingest ... --fill-gaps")
