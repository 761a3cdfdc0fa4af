"""Opening a store: its kind (``registry.kind_of``) names the module that opens it, imported
then, so a command never pays for a driver it does not use."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from marketpipe.components import StoreConfig
from marketpipe.errors import UsageError
from marketpipe.model import Model
from marketpipe.registry import kind_of
from marketpipe.stores.base import Store

if TYPE_CHECKING:
    from marketpipe.stores.sql import SqlLedger


def open_store(config: StoreConfig, model: Model, read_only: bool = False) -> Store:
    """``read_only`` for commands that only read: they never create, migrate or convert."""
    try:
        kind = kind_of(config.location)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    store: Store = import_module(kind.module).open_store(config, model, read_only)
    return store


def open_ledger(config: StoreConfig, read_only: bool) -> SqlLedger:
    """A ledger alone, for a data side that keeps none (a lake), of a kind that holds one."""
    kind = kind_of(config.location)
    if not kind.holds_ledger:
        raise UsageError(f"{config.location}: a {kind.name} store holds no ledger")
    ledger: SqlLedger = import_module(kind.module).open_ledger(config, read_only)
    return ledger
