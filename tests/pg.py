"""Real PostgreSQL for tests: a fresh database per test, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ADMIN_URL = os.environ.get("MARKETPIPE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# A second cluster that preloads TimescaleDB (scripts/test.sh starts one); unset: no such server.
TIMESCALE_ADMIN_URL = os.environ.get("MARKETPIPE_TEST_TIMESCALE")


def admin_url(url: str) -> str:
    """The server's maintenance database, for creating and dropping test databases."""
    return url.rpartition("/")[0] + "/postgres"


@contextmanager
def fresh_database(admin: str = ADMIN_URL) -> Iterator[str]:
    name = f"marketpipe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rpartition("/")[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fingerprint(url: str, table: str) -> tuple[int, int]:
    """Row count and an order-free hash of every row (chunk_id included)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f'SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM "{table}" t'
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
