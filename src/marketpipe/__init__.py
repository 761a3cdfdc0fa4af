"""marketpipe: Databento market data into exact, queryable tables.

Read what is stored: ``with marketpipe.open("marketpipe.duckdb") as db: db.read("trades")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from marketpipe.version import __version__

if TYPE_CHECKING:
    from marketpipe.reading import Reader

__all__ = ["__version__", "open"]


def open(db: str | None = None, ledger: str | None = None) -> Reader:
    """The store at ``db`` (a DuckDB file, a postgresql:// URL or lake:DIR; default: the
    settings' db, MARKETPIPE_DB) opened read-only: nothing is created, migrated or changed.
    ``ledger``: a lake's, where it is not in the lake's directory."""
    from marketpipe.reading import open_reader  # the heavy libraries only when reading

    return open_reader(db, ledger)
