"""The Typer app: parse the flags and call the command's body in ``commands``.

Only Typer and the standard library are imported here, so ``--help`` and ``version`` start
fast; a command's body imports the pipeline, Arrow and the drivers when it runs. User errors
print one line, never a traceback. Help is Click's plain text (Typer's Rich panels cut long
option names at 80 columns), which wraps at the terminal's width.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from typer._click.exceptions import UsageError  # Typer's own copy of Click (0.2x)
from typer.core import TyperCommand

from marketpipe import defaults
from marketpipe.errors import MarketpipeError, Terminated, interrupted_query
from marketpipe.version import __version__

if TYPE_CHECKING:
    # Typer ships its own copy of Click; its types, for the overrides below.
    from typer._click import Context, HelpFormatter

LOG_LEVEL_VARIABLE = "MARKETPIPE_LOG_LEVEL"


class Command(TyperCommand):
    """A command that also takes its options spelled with underscores (``--start_date``), as
    older orchestration docs and habits type them; the help shows the dashed names only."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        names = {name for param in self.params for name in param.opts if name.startswith("--")}
        spelled = []
        for arg in args:
            name, equals, value = arg.partition("=")
            dashed = name.replace("_", "-")
            if name.startswith("--") and "_" in name and dashed in names:
                arg = dashed + equals + value
            spelled.append(arg)
        try:
            return super().parse_args(ctx, list(spelled))  # the parser consumes its list
        except UsageError as exc:
            if "--json" not in spelled:
                raise
            # Monitoring reads standard output: a usage error is a JSON document there too.
            _json_error(exc.format_message(), exc.exit_code)
            _error(f"error: {exc.format_message()}")
            raise typer.Exit(exc.exit_code) from None


class SchemaCommand(Command):
    """A command taking schemas: its help ends with the schemas there are (imported only when
    the help is shown: the model loads databento-dbn and numpy)."""

    def format_epilog(self, ctx: Context, formatter: HelpFormatter) -> None:
        from marketpipe.model import SCHEMAS

        with formatter.section("Schemas"):
            formatter.write_text(", ".join(SCHEMAS))
        super().format_epilog(ctx, formatter)


app = typer.Typer(
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

T = TypeVar("T")

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="DuckDB file, postgresql:// URL or lake:DIR (Parquet) [env MARKETPIPE_DB]",
        show_default=defaults.DB,
    ),
]
LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        help="A lake's ledger: DuckDB file or postgresql:// URL [env MARKETPIPE_LEDGER]",
        show_default="DIR/_marketpipe/ledger.duckdb",
    ),
]
PgSchemaOption = Annotated[
    str | None,
    typer.Option(
        "--pg-schema",
        help="PostgreSQL: the schema for marketpipe's tables and ledger [env MARKETPIPE_PG_SCHEMA]",
        show_default="public",
    ),
]
SymbolsOption = Annotated[str | None, typer.Option("--symbols", help="Comma-separated symbols")]
StartOption = Annotated[
    str | None, typer.Option("--start-date", help=f"First day, inclusive: {defaults.DAY_FORMS}")
]
EndOption = Annotated[
    str | None, typer.Option("--end-date", help=f"Last day, inclusive: {defaults.DAY_FORMS}")
]
ReadStartOption = Annotated[
    str | None, typer.Option("--start-date", help=f"First day, inclusive: {defaults.READ_DAY_FORMS}")
]
ReadEndOption = Annotated[
    str | None, typer.Option("--end-date", help=f"Last day, inclusive: {defaults.READ_DAY_FORMS}")
]
DatasetOption = Annotated[
    str | None, typer.Option("--dataset", help="Dataset, when the schema comes from several")
]
StoredStartOption = Annotated[
    str | None,
    typer.Option("--start-date", help=f"First day (default: the first requested): {defaults.READ_DAY_FORMS}"),
]
StoredEndOption = Annotated[
    str | None,
    typer.Option("--end-date", help=f"Last day (default: the last requested): {defaults.READ_DAY_FORMS}"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON, for monitoring")]
WideOption = Annotated[
    bool, typer.Option("--wide", help="Every column, however wide (else some are left out to fit)")
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace --out if it is an existing file")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"marketpipe {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit"),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Console logs: none, only errors' one line [CRITICAL]")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Console logs: every stage's start and end [INFO]")
    ] = False,
) -> None:
    """Databento market data (DBN files, Historical API) into exact, queryable tables.

    Settings come from flags, then MARKETPIPE_* environment variables, then .env, then a
    project's configs/ in the working directory (marketpipe init), then the defaults.
    """
    if quiet and verbose:
        raise typer.BadParameter("give one of them", param_hint="--quiet / --verbose")
    if quiet or verbose:
        _console_level(ctx, "CRITICAL" if quiet else "INFO")


def _console_level(ctx: typer.Context, level: str) -> None:
    """--quiet/--verbose as MARKETPIPE_LOG_LEVEL while the command runs (a flag outranks the
    environment; a cluster's local workers inherit it), as it was once the command ends."""
    before = os.environ.get(LOG_LEVEL_VARIABLE)
    os.environ[LOG_LEVEL_VARIABLE] = level

    def restore() -> None:
        if before is None:
            os.environ.pop(LOG_LEVEL_VARIABLE, None)
        else:
            os.environ[LOG_LEVEL_VARIABLE] = before

    ctx.call_on_close(restore)


def _commands() -> ModuleType:
    from marketpipe import commands

    return commands


def _error(text: str) -> None:
    typer.echo(text, err=True)


def _json_error(message: str, exit_code: int) -> None:
    """The error document ``--json`` prints on standard output: ``{"error": {...}}``."""
    import json

    typer.echo(json.dumps({"error": {"message": message, "exit_code": exit_code}}, indent=2))


def _stopped(terminated: bool) -> typer.Exit:
    """Ctrl-C or SIGTERM: one line, and the shell's code for the signal."""
    word = "terminated" if terminated else "interrupted"
    _error(f"{word}: finished chunks are kept; run again to resume")
    return typer.Exit(143 if terminated else 130)


def _guarded(action: Callable[[], T], as_json: bool = False) -> T:
    """Run a command body: user errors become one line and their exit code (and, under
    ``--json``, an error document on standard output)."""
    try:
        return action()
    except MarketpipeError as exc:
        if as_json:
            _json_error(str(exc), exc.exit_code)
        _error(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        raise _stopped(isinstance(exc, Terminated)) from None
    except BrokenPipeError:
        # The reader went away (`status --json | head`): nothing left to tell it. Point stdout
        # at /dev/null so the interpreter's own flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141) from None
    except Exception as exc:
        if interrupted_query(exc):  # DuckDB's word for a signal during its query (rules loading)
            raise _stopped(Terminated.requested) from None
        import structlog

        structlog.get_logger("marketpipe").error("crash", error=repr(exc), traceback=traceback.format_exc())
        _error(f"internal error: {exc!r} (details in the log file)")
        raise typer.Exit(1) from None


@app.command(cls=SchemaCommand)
def ingest(
    api: Annotated[str, typer.Option("--api", help="Source api type")] = "databento",
    from_file: Annotated[
        str | None, typer.Option("--from-file", help="DBN file, directory, glob or fsspec URL")
    ] = None,
    job: Annotated[str | None, typer.Option("--job", help="Run a job from the jobs file")] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Databento dataset, e.g. GLBX.MDP3")
    ] = None,
    schema: Annotated[
        str | None, typer.Option("--schema", help="Comma-separated schemas (listed below)")
    ] = None,
    symbols: SymbolsOption = None,
    stype_in: Annotated[
        str | None,
        typer.Option(
            "--stype-in",
            help=f"Symbology of --symbols: {', '.join(defaults.STYPES)}",
            show_default=defaults.STYPE_IN,
        ),
    ] = None,
    start_date: StartOption = None,
    end_date: EndOption = None,
    db: DbOption = None,
    ledger: LedgerOption = None,
    pg_schema: PgSchemaOption = None,
    force: Annotated[bool, typer.Option("--force", help="Re-ingest chunks already done")] = False,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Records per batch", show_default=str(defaults.BATCH_SIZE)),
    ] = None,
    max_quarantine_ratio: Annotated[
        float | None,
        typer.Option(
            "--max-quarantine-ratio",
            help="Fail a chunk with a larger share of quarantined records",
            show_default=str(defaults.MAX_QUARANTINE_RATIO),
        ),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            "--gateway",
            help="Databento API gateway URL, e.g. a proxy [env DATABENTO_GATEWAY]",
            show_default="https://hist.databento.com",
        ),
    ] = None,
    chunk_days: Annotated[
        int | None,
        typer.Option("--chunk-days", help="Days per API download", show_default=str(defaults.CHUNK_DAYS)),
    ] = None,
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
    wide: WideOption = False,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Run the chunks on a local Dask cluster of this many processes"),
    ] = None,
    max_concurrent_downloads: Annotated[
        int | None,
        typer.Option(
            "--max-concurrent-downloads",
            help="API downloads at once on a cluster",
            show_default=str(defaults.MAX_CONCURRENT_DOWNLOADS),
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster", help="Run the chunks on the Dask scheduler at this address (tcp://host:8786)"
        ),
    ] = None,
) -> None:
    """Ingest DBN files or Databento API data into the store.

    Every record goes through every stage: read, initial validation, transformation,
    post-transformation validation, store. Chunks done before are skipped (--force redoes
    them); a record that breaks a rule is quarantined and the run goes on."""
    flags = dict(locals())
    code = _guarded(lambda: _commands().ingest(**flags), as_json)
    raise typer.Exit(code)


@app.command(cls=Command)
def query(
    statement: Annotated[
        str, typer.Argument(help="SQL to run read-only, e.g. 'SELECT count(*) FROM trades'")
    ],
    db: DbOption = None,
    ledger: LedgerOption = None,
    pg_schema: PgSchemaOption = None,
    format: Annotated[str, typer.Option("--format", help="table, csv, json or parquet")] = "table",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file (needed for parquet)")] = None,
    overwrite: OverwriteOption = False,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Rows shown by --format table")] = 50,
    expanded: Annotated[
        bool | None,
        typer.Option(
            "--expanded/--no-expanded",
            "-x",
            help="One block per row, psql's expanded mode [default: when a row does not fit]",
            show_default=False,
        ),
    ] = None,
    columns: Annotated[
        str | None, typer.Option("--columns", help="Comma-separated columns of the result to show")
    ] = None,
    wide: WideOption = False,
) -> None:
    """Run your own read-only SQL against the store: one statement that returns rows.

    The <table>_v views add readable *_time columns. On DuckDB and a lake the statement reads
    the store and no other file, under MARKETPIPE_QUERY_MEMORY_LIMIT (default DuckDB's own);
    on PostgreSQL it runs READ ONLY, as pg_read_all_data where the URL's role has file access."""
    _guarded(
        lambda: _commands().query(
            statement, db, ledger, pg_schema, format, out, overwrite, limit, expanded, columns, wide
        )
    )


@app.command(cls=SchemaCommand)
def export(
    schema: Annotated[str, typer.Option("--schema", help="Schema to export, e.g. trades")],
    out: Annotated[Path, typer.Option("--out", help="Output file")],
    format: Annotated[str, typer.Option("--format", help="parquet or csv")] = "parquet",
    db: DbOption = None,
    ledger: LedgerOption = None,
    pg_schema: PgSchemaOption = None,
    symbols: SymbolsOption = None,
    start_date: ReadStartOption = None,
    end_date: ReadEndOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Write one schema's records to Parquet or CSV, exactly."""
    _guarded(
        lambda: _commands().export(
            schema, out, format, db, ledger, pg_schema, symbols, start_date, end_date, overwrite
        )
    )


@app.command("list-jobs", cls=Command)
def list_jobs(as_json: JsonOption = False, wide: WideOption = False) -> None:
    """Show the jobs of the jobs file.

    The project's configs/databento.yaml (marketpipe init), MARKETPIPE_JOBS_FILE, or the
    default that ships with marketpipe."""
    _guarded(lambda: _commands().list_jobs(as_json, wide), as_json)


class CoverageCommand(SchemaCommand):
    """Its help also lists the calendar of each dataset (the packaged calendars file)."""

    def format_epilog(self, ctx: Context, formatter: HelpFormatter) -> None:
        from marketpipe.config import load_calendars

        with formatter.section("Calendars"):
            formatter.write_text(", ".join(f"{d}: {c}" for d, c in load_calendars(None).items()))
        super().format_epilog(ctx, formatter)


@app.command("coverage", cls=CoverageCommand)
def coverage_command(
    schema: Annotated[str, typer.Option("--schema", help="Schema, e.g. trades")],
    db: DbOption = None,
    ledger: LedgerOption = None,
    pg_schema: PgSchemaOption = None,
    dataset: DatasetOption = None,
    symbols: SymbolsOption = None,
    start_date: StoredStartOption = None,
    end_date: StoredEndOption = None,
    as_json: JsonOption = False,
    wide: WideOption = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 unless complete: every session done, every symbol known"),
    ] = False,
) -> None:
    """Stored rows and chunk states per symbol and session.

    Sessions are the exchange calendar's trading days (configs/calendars.yaml, listed below;
    other datasets: every weekday). Rows on other days are counted and named."""
    code = _guarded(
        lambda: _commands().coverage(
            schema, db, ledger, pg_schema, dataset, symbols, start_date, end_date, as_json, strict, wide
        ),
        as_json,
    )
    raise typer.Exit(code)


@app.command(cls=Command)
def status(
    db: DbOption = None,
    ledger: LedgerOption = None,
    pg_schema: PgSchemaOption = None,
    as_json: JsonOption = False,
    wide: WideOption = False,
) -> None:
    """What is stored: tables, rows, time ranges, chunks, runs."""
    _guarded(lambda: _commands().status(db, ledger, pg_schema, as_json, wide), as_json)


@app.command(cls=SchemaCommand)
def delete(
    schema: Annotated[str, typer.Option("--schema", help="Schema whose rows go, e.g. trades")],
    db: DbOption = None,
    ledger: LedgerOption = None,
    pg_schema: PgSchemaOption = None,
    dataset: DatasetOption = None,
    symbols: Annotated[
        str | None, typer.Option("--symbols", help="Comma-separated symbols (default: every one)")
    ] = None,
    start_date: StoredStartOption = None,
    end_date: StoredEndOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count the rows; delete nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking (scripts)")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete a schema's rows (some symbols, some days) and the ledger's record of them.

    One transaction per store. Chunks left with no row are forgotten: coverage shows their
    days as never requested, and the next ingest of them stores them again. Asks first on a
    terminal; --yes for scripts."""
    _guarded(
        lambda: _commands().delete(
            schema, db, ledger, pg_schema, dataset, symbols, start_date, end_date, dry_run, yes, as_json
        ),
        as_json,
    )


@app.command("forget-failures", cls=Command)
def forget_failures(
    db: DbOption = None,
    ledger: LedgerOption = None,
    pg_schema: PgSchemaOption = None,
    every: Annotated[bool, typer.Option("--all", help="Every failed chunk, its input there or not")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say which; forget nothing")] = False,
    as_json: JsonOption = False,
) -> None:
    """Clear failed chunks whose input file no longer exists from status.

    A failed chunk holds no rows: forgetting it changes no data. A run of the same input
    later stores it as new."""
    _guarded(lambda: _commands().forget_failures(db, ledger, pg_schema, every, dry_run, as_json), as_json)


@app.command(cls=Command)
def runs(
    run_id: Annotated[str | None, typer.Argument(help="A run's id: its chunks", show_default=False)] = None,
    db: DbOption = None,
    ledger: LedgerOption = None,
    pg_schema: PgSchemaOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Runs listed")] = 20,
    as_json: JsonOption = False,
    wide: WideOption = False,
) -> None:
    """The last runs, latest first; with an id, what each of its chunks did.

    A chunk a later run redid is shown under that run (the ledger keeps its latest state)."""
    _guarded(lambda: _commands().runs(run_id, db, ledger, pg_schema, limit, as_json, wide), as_json)


@app.command(cls=Command)
def verify(
    db: DbOption = None,
    ledger: LedgerOption = None,
    pg_schema: PgSchemaOption = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Mark damaged chunks failed, so the next run stores them again")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check every done chunk's rows (and a lake's files) against the ledger; exit 1 if any is damaged."""
    code = _guarded(lambda: _commands().verify(db, ledger, pg_schema, repair, as_json), as_json)
    raise typer.Exit(code)


@app.command("quarantine", cls=SchemaCommand)
def quarantine_command(
    db: DbOption = None,
    ledger: LedgerOption = None,
    pg_schema: PgSchemaOption = None,
    run: Annotated[str | None, typer.Option("--run", help="Only this run id")] = None,
    schema: Annotated[str | None, typer.Option("--schema", help="Only this schema")] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="Only this rule")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many records")] = 50,
    show: Annotated[int | None, typer.Option("--show", help="Print record N of the listing in full")] = None,
    as_json: JsonOption = False,
    wide: WideOption = False,
) -> None:
    """List quarantined records (by run, schema, rule), or one."""
    _guarded(
        lambda: _commands().quarantine(db, ledger, pg_schema, run, schema, rule, limit, show, as_json, wide),
        as_json,
    )


@app.command("make-sample", cls=Command)
def make_sample_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for the sample DBN files")] = Path(
        "data/sample"
    ),
) -> None:
    """Write a small DBN sample for a first run.

    CL and ES futures, 2024 Q1: daily bars and trades (the `sample` job ingests it)."""
    _guarded(lambda: _commands().make_sample(out))


@app.command(cls=Command)
def init(
    directory: Annotated[
        Path, typer.Argument(help="The project's directory (made if missing)", show_default=".")
    ] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Replace the project files that exist")] = False,
) -> None:
    """Write a project to edit: configs, .env.example, README.

    Commands run in the project's directory read its configs/ instead of the defaults."""
    _guarded(lambda: _commands().init(directory, force))


@app.command(cls=Command)
def version() -> None:
    """Print the marketpipe version."""
    typer.echo(f"marketpipe {__version__}")


def _terminate(signum: int, frame: FrameType | None) -> None:
    Terminated.requested = True
    raise Terminated()


def main() -> None:
    """The console script: SIGTERM stops a run as Ctrl-C does (exit 143 instead of 130)."""
    signal.signal(signal.SIGTERM, _terminate)
    app()
