"""Stores by location scheme: a new store is one new module with an ``open_store`` function and
one entry here.

``postgresql://`` (or ``postgres://``) URLs open PostgreSQL/TimescaleDB, ``lake:`` a Parquet
lake; a location without a scheme is a DuckDB file (settings refuse other schemes before
anything opens). Modules are imported when their store is opened, so a command never pays for
a driver it does not use.
"""

from __future__ import annotations

from importlib import import_module

from marketpipe.config import LAKE_PREFIX, Settings
from marketpipe.model import Model
from marketpipe.stores.base import Store

STORES: dict[str, str] = {
    "postgresql": "marketpipe.stores.postgres",
    "postgres": "marketpipe.stores.postgres",
    "lake": "marketpipe.stores.lake",
    "": "marketpipe.stores.duckdb",  # a file path
}


def open_store(settings: Settings, model: Model, read_only: bool = False) -> Store:
    """``read_only`` for commands that only read: they never create, migrate or convert."""
    scheme, separator, _ = settings.db.partition("://")
    kind = "lake" if settings.db.startswith(LAKE_PREFIX) else scheme if separator else ""
    module = import_module(STORES[kind])
    store: Store = module.open_store(settings, model, read_only)
    return store
