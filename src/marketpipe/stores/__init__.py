"""Stores by location scheme: a new store is one new module and one entry here.

``postgresql://`` (or ``postgres://``) URLs open PostgreSQL/TimescaleDB; a location without a
scheme is a DuckDB file (settings refuse other schemes before anything opens).
"""

from __future__ import annotations

from collections.abc import Callable

from marketpipe.config import Settings
from marketpipe.model import Model
from marketpipe.stores.base import Store


def _postgres(settings: Settings, model: Model, read_only: bool) -> Store:
    from marketpipe.stores.postgres import PostgresStore

    return PostgresStore(
        settings.db,
        settings.db_retries,
        settings.db_retry_wait,
        settings.compress_after_days,
        read_only,
        model=model,
    )


def _duckdb(settings: Settings, model: Model, read_only: bool) -> Store:
    from marketpipe.stores.duckdb import DuckDBStore

    return DuckDBStore(settings.db, settings.duckdb_memory_limit, read_only, model=model)


STORES: dict[str, Callable[[Settings, Model, bool], Store]] = {
    "postgresql": _postgres,
    "postgres": _postgres,
    "": _duckdb,  # a file path
}


def open_store(settings: Settings, model: Model, read_only: bool = False) -> Store:
    """``read_only`` for commands that only read: they never create, migrate or convert."""
    scheme, separator, _ = settings.db.partition("://")
    return STORES[scheme if separator else ""](settings, model, read_only)
