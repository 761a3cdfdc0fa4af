"""Stores by location: a ``postgresql://`` URL, else a DuckDB file path."""

from __future__ import annotations

from marketpipe.stores.base import Store


def open_store(location: str) -> Store:
    if location.startswith(("postgresql://", "postgres://")):
        from marketpipe.stores.postgres import PostgresStore

        return PostgresStore(location)
    from marketpipe.stores.duckdb import DuckDBStore

    return DuckDBStore(location)
