"""Stores by location: a ``postgresql://`` URL, else a DuckDB file path."""

from __future__ import annotations

from marketpipe.config import Settings
from marketpipe.model import Model
from marketpipe.stores.base import Store


def open_store(settings: Settings, model: Model, read_only: bool = False) -> Store:
    """``read_only`` for commands that only read: they never create, migrate or convert."""
    location = settings.db
    if location.startswith(("postgresql://", "postgres://")):
        from marketpipe.stores.postgres import PostgresStore

        return PostgresStore(
            location,
            settings.db_retries,
            settings.db_retry_wait,
            settings.compress_after_days,
            read_only,
            model=model,
        )
    from marketpipe.stores.duckdb import DuckDBStore

    return DuckDBStore(location, settings.duckdb_memory_limit, read_only, model=model)
