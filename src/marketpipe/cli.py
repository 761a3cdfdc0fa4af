"""The Typer app: parse the flags and call the command's body in ``commands``.

Only Typer and the standard library are imported here, so ``--help`` and ``version`` start
fast; a command's body imports the pipeline, Arrow and the drivers when it runs. User errors
print one line, never a traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, TypeVar

import typer

from marketpipe.errors import MarketpipeError
from marketpipe.version import __version__

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Databento market data (DBN files, Historical API) into exact, queryable tables.",
)

T = TypeVar("T")

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="DuckDB file, postgresql:// URL or lake:DIR (Parquet) (env MARKETPIPE_DB)"),
]
LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        help="A lake's ledger: DuckDB file or postgresql:// URL (default DIR/_marketpipe/ledger.duckdb)"
        " (env MARKETPIPE_LEDGER)",
    ),
]
SymbolsOption = Annotated[str | None, typer.Option("--symbols", help="Comma-separated symbols")]
StartOption = Annotated[str | None, typer.Option("--start-date", help="First day, YYYY-MM-DD (inclusive)")]
EndOption = Annotated[str | None, typer.Option("--end-date", help="Last day, YYYY-MM-DD (inclusive)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON, for monitoring")]


def _commands() -> ModuleType:
    from marketpipe import commands

    return commands


def _error(text: str) -> None:
    typer.echo(text, err=True)


def _guarded(action: Callable[[], T]) -> T:
    """Run a command body: user errors become one line and their exit code."""
    try:
        return action()
    except MarketpipeError as exc:
        _error(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _error("interrupted: finished chunks are kept; run again to resume")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # The reader went away (`status --json | head`): nothing left to tell it. Point stdout
        # at /dev/null so the interpreter's own flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141) from None
    except Exception as exc:
        import structlog

        structlog.get_logger("marketpipe").error("crash", error=repr(exc), traceback=traceback.format_exc())
        _error(f"internal error: {exc!r} (details in the log file)")
        raise typer.Exit(1) from None


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
    ledger: LedgerOption = None,
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
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Run the chunks on a local Dask cluster of this many processes"),
    ] = None,
    max_concurrent_downloads: Annotated[
        int | None,
        typer.Option("--max-concurrent-downloads", help="API downloads at once on a cluster"),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster", help="Run the chunks on the Dask scheduler at this address (tcp://host:8786)"
        ),
    ] = None,
) -> None:
    """Ingest DBN files or API data through every pipeline stage into the store."""
    flags = dict(locals())
    code = _guarded(lambda: _commands().ingest(**flags))
    raise typer.Exit(code)


@app.command()
def query(
    statement: Annotated[
        str, typer.Argument(help="SQL to run read-only, e.g. 'SELECT count(*) FROM trades'")
    ],
    db: DbOption = None,
    ledger: LedgerOption = None,
    format: Annotated[str, typer.Option("--format", help="table, csv, json or parquet")] = "table",
    out: Annotated[Path | None, typer.Option(help="Write to this file (needed for parquet)")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it is an existing file")] = False,
    limit: Annotated[int, typer.Option(help="Rows shown by --format table")] = 50,
) -> None:
    """Run your own read-only SQL against the store (the <table>_v views included)."""
    _guarded(lambda: _commands().query(statement, db, ledger, format, out, overwrite, limit))


@app.command()
def export(
    schema: Annotated[str, typer.Option(help="Schema to export, e.g. trades")],
    out: Annotated[Path, typer.Option(help="Output file")],
    format: Annotated[str, typer.Option("--format", help="parquet or csv")] = "parquet",
    db: DbOption = None,
    ledger: LedgerOption = None,
    symbols: SymbolsOption = None,
    start_date: StartOption = None,
    end_date: EndOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it is an existing file")] = False,
) -> None:
    """Write stored records of one schema to Parquet or CSV, exactly."""
    _guarded(
        lambda: _commands().export(schema, out, format, db, ledger, symbols, start_date, end_date, overwrite)
    )


@app.command("list-jobs")
def list_jobs() -> None:
    """Show the jobs defined in the jobs file (configs/databento.yaml)."""
    _guarded(lambda: _commands().list_jobs())


@app.command("coverage")
def coverage_command(
    schema: Annotated[str, typer.Option(help="Schema, e.g. trades")],
    db: DbOption = None,
    ledger: LedgerOption = None,
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
    _guarded(
        lambda: _commands().coverage(schema, db, ledger, dataset, symbols, start_date, end_date, as_json)
    )


@app.command()
def status(db: DbOption = None, ledger: LedgerOption = None, as_json: JsonOption = False) -> None:
    """What is stored: tables, row counts, time ranges, chunks and last runs."""
    _guarded(lambda: _commands().status(db, ledger, as_json))


@app.command("quarantine")
def quarantine_command(
    db: DbOption = None,
    ledger: LedgerOption = None,
    run: Annotated[str | None, typer.Option(help="Only this run id")] = None,
    schema: Annotated[str | None, typer.Option(help="Only this schema")] = None,
    rule: Annotated[str | None, typer.Option(help="Only this rule")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many records")] = 50,
    show: Annotated[int | None, typer.Option(help="Print record N of the listing in full")] = None,
) -> None:
    """List quarantined records (by run, schema, rule), or show one in full."""
    _guarded(lambda: _commands().quarantine(db, ledger, run, schema, rule, limit, show))


@app.command("make-sample")
def make_sample_command(
    out: Annotated[Path, typer.Option(help="Directory for the sample DBN files")] = Path("data/sample"),
) -> None:
    """Write a small DBN sample (CL and ES, 2024 Q1: daily bars and trades) for a first run."""
    _guarded(lambda: _commands().make_sample(out))


@app.command()
def version() -> None:
    """Print the marketpipe version."""
    typer.echo(f"marketpipe {__version__}")


def main() -> None:
    app()
