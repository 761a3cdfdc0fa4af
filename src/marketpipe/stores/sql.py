"""SQL shared by the SQL stores: bookkeeping tables and statements, family table DDL.

Written once in the dialect PostgreSQL and DuckDB share, with ``%s`` placeholders
(psycopg's); DuckDB's store swaps them for ``?``. Identifiers only ever come from the
model, never from user input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marketpipe.model import Column, Family
from marketpipe.stores.base import CHUNKS_TABLE, QUARANTINE_TABLE, RUNS_TABLE, ExportQuery


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_family_table(family: Family, type_of: Callable[[Column], str]) -> str:
    columns = [f"{quote(c.name)} {type_of(c)}" for c in family.columns]
    columns.append("chunk_id BIGINT NOT NULL")
    return f"CREATE TABLE IF NOT EXISTS {quote(family.table)} (\n  " + ",\n  ".join(columns) + "\n)"


BOOKKEEPING_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {CHUNKS_TABLE} (
  chunk_key TEXT PRIMARY KEY,
  chunk_id BIGINT NOT NULL,
  job TEXT NOT NULL,
  schema TEXT NOT NULL,
  label TEXT NOT NULL,
  status TEXT NOT NULL,
  records_read BIGINT,
  stored BIGINT,
  quarantined BIGINT,
  seconds DOUBLE PRECISION,
  run_id TEXT,
  updated_at TIMESTAMPTZ NOT NULL,
  error TEXT
)""",
    f"""CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (
  run_id TEXT PRIMARY KEY,
  job TEXT NOT NULL,
  started_at TIMESTAMPTZ NOT NULL,
  finished_at TIMESTAMPTZ,
  status TEXT NOT NULL,
  records_read BIGINT,
  stored BIGINT,
  quarantined BIGINT
)""",
    f"""CREATE TABLE IF NOT EXISTS {QUARANTINE_TABLE} (
  run_id TEXT NOT NULL,
  chunk_id BIGINT NOT NULL,
  chunk_key TEXT NOT NULL,
  schema TEXT NOT NULL,
  stage TEXT NOT NULL,
  rule TEXT NOT NULL,
  message TEXT NOT NULL,
  record TEXT NOT NULL,
  quarantined_at TIMESTAMPTZ NOT NULL
)""",
)

UPSERT_CHUNK = f"""INSERT INTO {CHUNKS_TABLE}
  (chunk_key, chunk_id, job, schema, label, status, records_read, stored, quarantined,
   seconds, run_id, updated_at, error)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), %s)
ON CONFLICT (chunk_key) DO UPDATE SET
  job = excluded.job, label = excluded.label, status = excluded.status,
  records_read = excluded.records_read, stored = excluded.stored,
  quarantined = excluded.quarantined, seconds = excluded.seconds,
  run_id = excluded.run_id, updated_at = excluded.updated_at, error = excluded.error"""

CHUNK_STATUS = f"SELECT status FROM {CHUNKS_TABLE} WHERE chunk_key = %s"

INSERT_RUN = f"""INSERT INTO {RUNS_TABLE} (run_id, job, started_at, status)
VALUES (%s, %s, now(), 'running')"""

FINISH_RUN = f"""UPDATE {RUNS_TABLE} SET finished_at = now(), status = %s,
  records_read = %s, stored = %s, quarantined = %s WHERE run_id = %s"""

DELETE_QUARANTINE = f"DELETE FROM {QUARANTINE_TABLE} WHERE chunk_id = %s"

INSERT_QUARANTINE = f"""INSERT INTO {QUARANTINE_TABLE}
  (run_id, chunk_id, chunk_key, schema, stage, rule, message, record, quarantined_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())"""

CHUNK_COUNTS = f"SELECT job, status, count(*) FROM {CHUNKS_TABLE} GROUP BY job, status ORDER BY job, status"

FAILED_CHUNKS = f"""SELECT job, label, coalesce(error, '') FROM {CHUNKS_TABLE}
WHERE status = 'failed' ORDER BY updated_at DESC LIMIT 20"""

LAST_RUNS = f"""SELECT run_id, job, started_at, finished_at, status, records_read, stored, quarantined
FROM {RUNS_TABLE} ORDER BY started_at DESC LIMIT 5"""


def delete_chunk(family: Family) -> str:
    return f"DELETE FROM {quote(family.table)} WHERE chunk_id = %s"


def table_summary(family: Family, time_ns: str) -> str:
    """Row count and first/last event time in nanoseconds."""
    return f"SELECT count(*), min({time_ns}), max({time_ns}) FROM {quote(family.table)}"


def export_select(
    family: Family, columns: list[str], time_ns: str, *, symbols: bool, start: bool, end: bool
) -> str:
    """SELECT of an export filtered by schema, symbols and time (parameters in that order).

    ``time_ns`` is the store's expression for event time in nanoseconds since the epoch.
    """
    where = []
    if "schema" in family.column_names:
        where.append("schema = %s")
    if symbols:
        where.append("symbol = ANY(%s)")
    if start:
        where.append(f"{time_ns} >= %s")
    if end:
        where.append(f"{time_ns} < %s")
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    return (
        f"SELECT {', '.join(columns)} FROM {quote(family.table)}{clause} ORDER BY {quote(family.time_column)}"
    )


def export_statement(query: ExportQuery, time_ns: str) -> tuple[str, list[Any]]:
    family: Family = query.family
    statement = export_select(
        family,
        [quote(n) for n in family.column_names],
        time_ns,
        symbols=bool(query.symbols),
        start=query.start_ns is not None,
        end=query.end_ns is not None,
    )
    params: list[Any] = []
    if "schema" in family.column_names:
        params.append(query.schema)
    if query.symbols:
        params.append(list(query.symbols))
    params.extend(v for v in (query.start_ns, query.end_ns) if v is not None)
    return statement, params
