"""Each component's own configuration, built from the settings (``config.Settings``: its
``store`` and ``api``) and handed to the component: no store or source reads the settings,
and each configuration holds what its component uses and nothing more."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from marketpipe import defaults


@dataclass(frozen=True)
class StoreConfig:
    """What opening a store takes, and nothing else of the settings (``Settings.store``)."""

    location: str  # canonical (``stores.normalized``): a file path is absolute
    ledger: str | None = None  # a lake's ledger; None: a DuckDB file under a local lake
    pg_schema: str | None = None  # PostgreSQL: the schema of marketpipe's tables; None: public
    memory_limit: str = defaults.DUCKDB_MEMORY_LIMIT  # DuckDB's cap, in its units (128MB)
    retries: int = 5  # a server's faults: attempts per connect and per chunk
    retry_wait: float = 0.5  # first back-off, seconds
    compress_after_days: int | None = None  # TimescaleDB compression policy (opt-in)

    def at(self, location: str) -> StoreConfig:
        """The same configuration for another location (a lake's ledger)."""
        return replace(self, location=location, ledger=None)


@dataclass(frozen=True)
class RunConfig:
    """What a run's orchestration uses: how it batches, checks and retries."""

    batch_size: int = defaults.BATCH_SIZE  # records per batch read, checked and written
    writers: int = 2  # chunks loaded at once, where the store takes writer threads
    max_quarantine_ratio: float = defaults.MAX_QUARANTINE_RATIO  # a chunk above it fails
    retries: int = 5  # a store's transient faults: attempts per chunk
    retry_wait: float = 0.5  # first back-off, seconds


@dataclass(frozen=True)
class ApiConfig:
    """The Databento client's configuration, and the only holder of the API key. It pickles
    (a planned source on its way to a cluster worker) without the key: unpickled, it reads the
    key where it is (``reload_key``: the worker's environment or .env), so no task, plugin or
    dashboard ever holds it."""

    key: str | None = field(repr=False)
    gateway: str  # https://hist.databento.com; a host without a scheme is https
    timeout: int  # the client's socket timeout, seconds
    retries: int  # attempts per request (429, 5xx, resets, truncation)
    retry_wait: float  # first back-off, seconds
    retry_max_wait: float  # longest back-off, seconds
    # A module-level function (it pickles by name): the key as this process finds it.
    reload_key: Callable[[], str | None] = field(repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "key": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, key=state["reload_key"]())
