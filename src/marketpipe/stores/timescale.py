"""Everything TimescaleDB-specific, following its documented API (2.13+ ``create_hypertable``).

Event time is a BIGINT of nanoseconds since the epoch (``timestamptz`` stops at
microseconds), so each hypertable gets an explicit integer ``chunk_time_interval`` and an
``integer_now`` function, without which TimescaleDB's age-based policies cannot work on
integer time. Columnstore compression segments by instrument and orders by time; the
compression policy is opt-in (``MARKETPIPE_COMPRESS_AFTER_DAYS``).
"""

from __future__ import annotations

from typing import Any

import structlog

from marketpipe.model import Family, Model
from marketpipe.symbology import NS_PER_DAY

MIN_VERSION = (2, 13)

NOW_FUNCTION = """CREATE OR REPLACE FUNCTION marketpipe_now_ns() RETURNS BIGINT
LANGUAGE SQL STABLE AS $$ SELECT (extract(epoch FROM now()) * 1000000000)::BIGINT $$"""

log = structlog.get_logger("marketpipe.timescale")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("-")[0].split(".")[:2] if p.isdigit())


def detect(conn: Any) -> tuple[bool, str]:
    """Whether to use TimescaleDB here, and why (for the log line that says which mode).

    Everything that would fail is checked before ``CREATE EXTENSION`` runs: on a server where
    the library is installed but not in ``shared_preload_libraries``, that statement fails with
    FATAL and PostgreSQL closes the connection.
    """
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if not preloaded(conn):
        if row is not None:
            return False, "timescaledb is created in this database but not preloaded by the server"
        return False, "timescaledb is not in the server's shared_preload_libraries"
    if row is None:
        available = conn.execute(
            "SELECT v.trusted, r.rolsuper, has_database_privilege(current_database(), 'CREATE')"
            " FROM pg_available_extension_versions v, pg_roles r"
            " WHERE v.name = 'timescaledb' AND v.version = (SELECT default_version"
            " FROM pg_available_extensions WHERE name = 'timescaledb') AND r.rolname = current_user"
        ).fetchone()
        if available is None:
            return False, "the timescaledb extension is not installed on this server"
        trusted, superuser, may_create = available
        if not superuser and not (trusted and may_create):
            return False, "this role may not create the timescaledb extension in this database"
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except Exception as exc:  # anything else that refuses: plain PostgreSQL still works
            return False, f"CREATE EXTENSION timescaledb failed: {' '.join(str(exc).split())}"
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if _version(row[0]) < MIN_VERSION:
        return False, f"timescaledb {row[0]} is older than 2.13"
    return True, f"timescaledb {row[0]}"


def preloaded(conn: Any) -> bool:
    """Whether the server loaded TimescaleDB at start. ``shared_preload_libraries`` itself is
    readable by superusers only; the loader's postmaster-level setting is visible to every role
    and exists, typed, only when the library was preloaded (a mere placeholder would be text)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_settings WHERE name = 'timescaledb.max_background_workers'"
        " AND context = 'postmaster' AND vartype = 'integer'"
    ).fetchone()
    return bool(row[0])


def hypertable_statements(family: Family) -> list[tuple[str, tuple[Any, ...]]]:
    """Statements turning one family table into a compressed-capable hypertable (idempotent)."""
    table, time = family.table, family.time_column
    return [
        (
            "SELECT create_hypertable(%s::regclass, by_range(%s::name, %s::BIGINT),"
            " create_default_indexes => FALSE, if_not_exists => TRUE, migrate_data => TRUE)",
            (table, time, family.chunk_interval_ns),
        ),
        (
            "SELECT set_integer_now_func(%s::regclass, 'marketpipe_now_ns'::regproc,"
            " replace_if_exists => TRUE)",
            (table,),
        ),
        (
            f'ALTER TABLE "{table}" SET (timescaledb.compress,'
            f" timescaledb.compress_segmentby = 'instrument_id',"
            f" timescaledb.compress_orderby = '{time} DESC')",
            (),
        ),
    ]


def create_hypertables(conn: Any, model: Model) -> None:
    conn.execute(NOW_FUNCTION)
    for family in model.families.values():
        for statement, params in hypertable_statements(family):
            conn.execute(statement, params)


def add_compression_policies(conn: Any, after_days: int, model: Model) -> None:
    """Compress chunks whose data is older than ``after_days`` (an integer age, in ns)."""
    for family in model.families.values():
        conn.execute(
            "SELECT add_compression_policy(%s::regclass, %s::BIGINT, if_not_exists => TRUE)",
            (family.table, after_days * NS_PER_DAY),
        )
    log.info("timescale.compression_policy", after_days=after_days)
