"""Real PostgreSQL for tests: a fresh database per test, dropped afterwards.

Tests that need a server are marked ``postgres`` (TimescaleDB's also ``timescale``), by the
fixtures they use (conftest) or by these parameters, so ``pytest -m "not postgres"`` runs the
rest on a machine without one. Nothing here connects until a test asks for a database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

ADMIN_URL = os.environ.get("MARKETPIPE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# A second cluster that preloads TimescaleDB (scripts/test.sh starts one); unset: no such server.
TIMESCALE_ADMIN_URL = os.environ.get("MARKETPIPE_TEST_TIMESCALE")

SERVER = pytest.mark.postgres
# Store parameters of the fixtures that run a test in each mode.
POSTGRES = pytest.param("postgresql", marks=SERVER)
TIMESCALE = pytest.param("timescaledb", marks=[SERVER, pytest.mark.timescale])


def reachable(admin: str) -> str | None:
    """Why the server at ``admin`` cannot be used, or None when it answers."""
    try:
        psycopg.connect(admin, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        where = admin.split("@")[-1]
        return f"PostgreSQL at {where} is not reachable ({str(exc).strip().splitlines()[0]})"
    return None


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
