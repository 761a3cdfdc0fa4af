"""marketpipe: Databento market data into exact, queryable tables.

Ingest: ``marketpipe.ingest(from_file="data/sample")`` or
``marketpipe.ingest(dataset="GLBX.MDP3", schemas="trades", symbols="ES.FUT", stype_in="parent",
start_date="2024-01-02", end_date="2024-01-05")``, returning a ``RunSummary``.
Read what is stored: ``with marketpipe.open("marketpipe.duckdb") as db: db.read("trades")``.

Errors a caller can act on are ``MarketpipeError`` subclasses: ``UsageError`` (bad arguments,
settings or config files; nothing was read or stored), ``IngestFailed`` (inputs or chunks
failed, the rest is stored), ``StoreError`` and ``SourceError``. Importing the package is
cheap: the pipeline, Arrow and the drivers load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from marketpipe.errors import (
    ApiRejected,
    ConfigError,
    MarketpipeError,
    SourceError,
    StoreError,
    StoreRejected,
    UsageError,
)
from marketpipe.version import __version__

if TYPE_CHECKING:
    from marketpipe.ingesting import IngestFailed, ingest
    from marketpipe.pipeline import RunSummary, SchemaCounts
    from marketpipe.reading import Reader

__all__ = [
    "ApiRejected",
    "ConfigError",
    "IngestFailed",
    "MarketpipeError",
    "Reader",
    "RunSummary",
    "SchemaCounts",
    "SourceError",
    "StoreError",
    "StoreRejected",
    "UsageError",
    "__version__",
    "ingest",
    "open",
]

# Names of the Python API that live in the heavier modules, loaded when first used (PEP 562).
_LAZY = {
    "ingest": "marketpipe.ingesting",
    "IngestFailed": "marketpipe.ingesting",
    "RunSummary": "marketpipe.pipeline",
    "SchemaCounts": "marketpipe.pipeline",
    "Reader": "marketpipe.reading",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'marketpipe' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


def open(db: str | None = None, ledger: str | None = None, pg_schema: str | None = None) -> Reader:
    """The store at ``db`` opened read-only: nothing is created, migrated or changed.

    Parameters
    ----------
    db : str, optional
        A DuckDB file, a ``postgresql://`` URL or ``lake:DIR``; default ``MARKETPIPE_DB``,
        else ``data/marketpipe.duckdb`` in the working directory.
    ledger : str, optional
        A lake's ledger, where it is not ``DIR/_marketpipe/ledger.duckdb``.
    pg_schema : str, optional
        PostgreSQL: the schema the store is in (default ``MARKETPIPE_PG_SCHEMA``, else public).

    Raises
    ------
    StoreRejected
        No store there (a missing file or database), or it cannot be opened.
    """
    from marketpipe.logs import as_library
    from marketpipe.reading import open_reader  # the heavy libraries only when reading

    as_library()
    return open_reader(db, ledger, pg_schema)
