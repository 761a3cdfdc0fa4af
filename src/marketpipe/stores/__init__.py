"""Stores by kind: a new store is one new module with an ``open_store`` function and one entry
here (and its scheme in ``config.store_kind``).

``postgresql://`` (or ``postgres://``) URLs open PostgreSQL/TimescaleDB, ``lake:`` a Parquet
lake; a location without a scheme is a DuckDB file (settings refuse other schemes before
anything opens). Modules are imported when their store is opened, so a command never pays for
a driver it does not use.
"""

from __future__ import annotations

from importlib import import_module

from marketpipe.config import Settings, store_kind
from marketpipe.model import Model
from marketpipe.stores.base import Store

# Store kind (``config.store_kind``) -> its module, and whether writers in several processes
# may share it (a server orders them; DuckDB lets one process open a file to write; a lake
# takes its ledger's word).
STORES: dict[str, str] = {
    "postgresql": "marketpipe.stores.postgres",
    "lake": "marketpipe.stores.lake",
    "duckdb": "marketpipe.stores.duckdb",
}
_PROCESSES = {"postgresql": True, "duckdb": False}


def many_processes(location: str, ledger: str | None = None) -> bool:
    """Whether the store at ``location`` (a lake: with its ``ledger``, by default a DuckDB file
    under it) takes writers from several processes at once, as a cluster run needs."""
    kind = store_kind(location)
    if kind == "lake":
        return ledger is not None and _PROCESSES[store_kind(ledger)]
    return _PROCESSES[kind]


def embedded_file(location: str, ledger: str | None = None) -> str | None:
    """The local file an embedded store keeps (a DuckDB store, a lake's DuckDB ledger), if any."""
    kind = store_kind(location)
    held = ledger if kind == "lake" else location
    return held if held is not None and store_kind(held) == "duckdb" else None


def open_store(settings: Settings, model: Model, read_only: bool = False) -> Store:
    """``read_only`` for commands that only read: they never create, migrate or convert."""
    module = import_module(STORES[store_kind(settings.db)])
    store: Store = module.open_store(settings, model, read_only)
    return store
