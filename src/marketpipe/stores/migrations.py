"""One migration runner for every store (DuckDB, PostgreSQL/TimescaleDB, a lake's ledger).

A store lists its steps (``Migration``: a version and what applying it does); the runner
applies, in version order, those the database has not recorded, inside the caller's
transaction and under its schema lock (``LedgerDatabase.lock_schema``: concurrent starts of
one server's store migrate once), and records each in ``marketpipe_migrations``. A store opened
read-only applies nothing: ``pending`` names what its next write will apply.

Every version any release ever recorded is named in ``VERSIONS``, in one place: a version keeps
its number and name for good (a store made by an earlier release holds them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import structlog

from marketpipe.errors import StoreRejected
from marketpipe.stores.base import MIGRATIONS_TABLE, LedgerDatabase

log = structlog.get_logger("marketpipe.migrations")

# The layout this release writes. 1 and 2 were the first release's: tables partitioned and
# filtered by ts_event, no ts_out column (refused: ``check_release``).
MODEL = 3
TIMESCALE = 4
CHUNK_RANGES = 5
INSTRUMENTS = 6
TIMESCALE_TIME_BRIN_DROPPED = 7
BRIN_INDEX = 8
LAKE_FILES = 9
COVERAGE = 10
ATTEMPTS = 11

VERSIONS = {
    1: "first release: tables on ts_event",
    2: "first release: timescaledb hypertables",
    MODEL: "standardized model on Databento's index timestamp, bookkeeping",
    TIMESCALE: "timescaledb hypertables",
    CHUNK_RANGES: "chunk dataset and requested range, for coverage",
    INSTRUMENTS: "instruments: raw symbols behind requested symbols",
    TIMESCALE_TIME_BRIN_DROPPED: "timescaledb: time BRIN dropped (BRIN_INDEX does it too)",
    BRIN_INDEX: "instrument and time by one BRIN, in place of a B-tree and a time BRIN",
    LAKE_FILES: "lake: the files of each chunk",
    COVERAGE: "coverage of each input, chunks by input, point-in-time symbology",
    ATTEMPTS: "chunk attempts",
}

MIGRATIONS_DDL = f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
  version INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""
RECORD = f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (%s, %s) ON CONFLICT DO NOTHING"


@dataclass(frozen=True)
class Migration:
    """One step: its version (a key of ``VERSIONS``) and what applying it does."""

    version: int
    apply: Callable[[], None]

    @property
    def name(self) -> str:
        return VERSIONS[self.version]

    def __str__(self) -> str:
        return f"{self.version} ({self.name})"


def statements(db: LedgerDatabase, *ddl: str) -> Callable[[], None]:
    """A step that executes these statements."""

    def apply() -> None:
        for statement in ddl:
            db.execute(statement)

    return apply


def recorded(db: LedgerDatabase, relations: Iterable[str]) -> set[int]:
    """The versions the database has recorded (none: it holds no migrations table)."""
    if MIGRATIONS_TABLE not in set(relations):
        return set()
    return {int(v) for (v,) in db.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")}


def check_release(location: str, applied: set[int]) -> None:
    """Refuse a database an earlier release made: its tables have another time axis."""
    if applied and MODEL not in applied:
        raise StoreRejected(
            f"{location} was made by an earlier marketpipe release, whose tables are partitioned"
            " and filtered by ts_event; this release uses Databento's index timestamp (ts_recv;"
            " ts_event for OHLCV) and keeps ts_out: ingest into a new database (export what you"
            " need from this one with the earlier release first)"
        )


def pending(steps: Sequence[Migration], applied: set[int]) -> list[Migration]:
    """The steps not applied, in version order."""
    return sorted((s for s in steps if s.version not in applied), key=lambda s: s.version)


def migrate(db: LedgerDatabase, steps: Sequence[Migration], applied: set[int]) -> list[Migration]:
    """Apply and record the steps ``applied`` lacks, in the caller's transaction (which holds
    the schema lock); the steps applied. Nothing to apply: not a statement is run."""
    todo = pending(steps, applied)
    if todo:
        db.execute(MIGRATIONS_DDL)
    for step in todo:
        step.apply()
        db.execute(RECORD, [step.version, step.name])
        log.info("db.migrated", version=step.version, name=step.name, location=db.location)
    return todo
