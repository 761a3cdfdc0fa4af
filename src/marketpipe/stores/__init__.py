"""Stores by location: a ``postgresql://`` URL, else a DuckDB file path."""

from __future__ import annotations

from marketpipe.config import Settings
from marketpipe.stores.base import Store


def open_store(settings: Settings) -> Store:
    location = settings.db
    if location.startswith(("postgresql://", "postgres://")):
        from marketpipe.stores.postgres import PostgresStore

        return PostgresStore(
            location, settings.db_retries, settings.db_retry_wait, settings.compress_after_days
        )
    from marketpipe.stores.duckdb import DuckDBStore

    return DuckDBStore(location, settings.duckdb_memory_limit)
