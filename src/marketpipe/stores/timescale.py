"""Everything TimescaleDB-specific, following its documented API (2.13+ ``create_hypertable``).

Event time is a BIGINT of nanoseconds since the epoch (``timestamptz`` stops at
microseconds), so each hypertable gets an explicit integer ``chunk_time_interval`` and an
``integer_now`` function, without which TimescaleDB's age-based policies cannot work on
integer time. Columnstore compression segments by instrument and orders by time; the
compression policy is opt-in (``MARKETPIPE_COMPRESS_AFTER_DAYS``).
"""

from __future__ import annotations

import json
import threading
from contextlib import suppress
from typing import Any

import psycopg
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


class ChunksAhead:
    """The TimescaleDB chunks a COPY is about to fill, made first on a connection of their own
    that commits at once.

    A transaction that creates a chunk holds it locked until it ends ("Chunk creation does take
    heavier locks than normal INSERTs into already created chunks", TimescaleDB's docs): a second
    writer into the same day waits for the first writer's whole part. Made ahead by
    ``_timescaledb_functions.create_chunk`` (TimescaleDB's API reference), the chunk exists and
    both COPY at once (2M trades of one day, `marketpipe ingest`: 2.45 s -> 2.04 s). Best effort:
    after a failure (a hypertable whose chunks were laid out otherwise collides) the COPY creates
    its chunks itself, as it would without this. A transaction that rolls back leaves the chunk
    it had made ahead, empty, as TimescaleDB leaves a chunk whose rows were deleted.
    """

    # A batch over more chunks than this is sparse (daily bars): its writers rarely meet, and
    # each chunk made ahead would cost a round trip.
    SPAN = 2

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self._url = url
        self._options = options
        self._conn: psycopg.Connection[Any] | None = None
        self._made: set[tuple[str, int]] = set()
        self._lock = threading.Lock()  # the writer threads share one
        self._off = False

    def make(self, family: Family, first_ns: int, last_ns: int) -> None:
        """The chunks of the family's hypertable that hold ``first_ns`` .. ``last_ns``."""
        interval = family.chunk_interval_ns
        first, last = first_ns // interval, last_ns // interval
        if self._off or last - first >= self.SPAN:
            return
        with self._lock:
            for index in range(first, last + 1):
                if self._off or (family.table, index) in self._made:
                    continue
                slices = {family.time_column: [index * interval, (index + 1) * interval]}
                try:
                    if self._conn is None:
                        self._conn = psycopg.connect(self._url, autocommit=True, **self._options)
                    self._conn.execute(
                        "SELECT FROM _timescaledb_functions.create_chunk(%s::regclass, %s::jsonb)",
                        (family.table, json.dumps(slices)),
                    )
                except psycopg.Error as exc:
                    self._off = True
                    self._close()
                    log.info("timescale.chunks_ahead_off", reason=" ".join(str(exc).split()))
                    return
                self._made.add((family.table, index))

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
