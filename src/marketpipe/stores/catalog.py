"""What a database holds, checked before marketpipe changes anything in it.

Two refusals, each one line naming the table, made before any table, view, index, hypertable
or migration row is created, so a refused run leaves the database byte for byte as it was:

- a relation with one of marketpipe's names (a model table, its ``_v`` view, a ledger table)
  in a database marketpipe did not make (no ledger there): someone else's table;
- a marketpipe table whose definition (its schemas, time column, chunk interval, and each
  column's operation, type, source field, sentinel and enum labels) differs from the
  transformation file's: the same column names may mean something else (``price`` as an
  integer, ``side`` as an enum), and rows of both meanings would end up in one column.

The definition each table was made with is kept in ``marketpipe_tables``; a store made before
that table existed records the current file's definitions the first time it is opened for
writing, once its columns match by name (what such a store can still be checked against).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from marketpipe.errors import StoreRejected
from marketpipe.model import Family, Model
from marketpipe.stores.base import (
    CHUNKS_TABLE,
    COVERAGE_TABLE,
    INSTRUMENTS_TABLE,
    MIGRATIONS_TABLE,
    QUARANTINE_TABLE,
    RUNS_TABLE,
    SYMBOLOGY_TABLE,
)

DEFINITIONS_TABLE = "marketpipe_tables"
DEFINITIONS_DDL = f"""CREATE TABLE IF NOT EXISTS {DEFINITIONS_TABLE} (
  table_name TEXT PRIMARY KEY,
  definition TEXT NOT NULL
)"""
RECORD_DEFINITION = (
    f"INSERT INTO {DEFINITIONS_TABLE} (table_name, definition) VALUES (%s, %s) ON CONFLICT DO NOTHING"
)
LEDGER_TABLES = (
    CHUNKS_TABLE,
    RUNS_TABLE,
    QUARANTINE_TABLE,
    MIGRATIONS_TABLE,
    INSTRUMENTS_TABLE,
    SYMBOLOGY_TABLE,
    COVERAGE_TABLE,
)


def definition(family: Family) -> dict[str, Any]:
    """What a table means, as the transformation file declares it (JSON-able)."""
    return {
        "schemas": list(family.schemas),
        "time_column": family.time_column,
        "chunk_interval_ns": family.chunk_interval_ns,
        "columns": {
            c.name: {
                "operation": c.kind.value,
                "type": str(c.arrow_type),
                "from": c.source,
                "null_if": c.sentinel,
                "values": {str(raw): label for raw, label in c.labels},
                "value": c.value,
            }
            for c in family.columns
        },
    }


def difference(stored: Mapping[str, Any], declared: Mapping[str, Any]) -> str | None:
    """The first way the declared definition differs from the stored one, in words."""
    for key, words in (("time_column", "time column"), ("chunk_interval_ns", "chunk interval (ns)")):
        if stored[key] != declared[key]:
            return f"{words} {stored[key]} in the store, {declared[key]} in the transformation file"
    if stored["schemas"] != declared["schemas"]:
        have, want = ", ".join(stored["schemas"]), ", ".join(declared["schemas"])
        return f"schemas {have} in the store, {want} declared"
    have, want = stored["columns"], declared["columns"]
    if list(have) != list(want):
        return f"columns {', '.join(have)} in the store, {', '.join(want)} declared"
    for name, column in want.items():
        for key, value in column.items():
            if have[name].get(key) != value:
                return f"column {name}: {key} {have[name].get(key)!r} in the store, {value!r} declared"
    return None


def marketpipe_names(model: Model) -> set[str]:
    """The relations marketpipe makes for ``model``: tables, their views, the ledger's."""
    tables = {f.table for f in model.families.values()}
    return tables | {f"{t}_v" for t in tables} | {*LEDGER_TABLES, DEFINITIONS_TABLE}


def refuse_foreign(location: str, relations: Iterable[str], model: Model) -> None:
    """A database without marketpipe's ledger that holds one of marketpipe's names is someone
    else's: nothing of it may be touched (``relations``: every relation of the schema)."""
    found = set(relations)
    if MIGRATIONS_TABLE in found or CHUNKS_TABLE in found:
        return
    clash = sorted(found & marketpipe_names(model))
    if clash:
        raise StoreRejected(
            f"{location} holds a relation named {clash[0]} that marketpipe did not make (the"
            " database has no marketpipe ledger): nothing was changed; give marketpipe a database"
            " (or, in PostgreSQL, a --pg-schema) of its own"
        )


def check(location: str, model: Model, stored: Mapping[str, str]) -> list[Family]:
    """Refuse a table recorded with another definition; the families not recorded yet
    (``stored``: table -> recorded definition, as JSON)."""
    pending = []
    for family in model.families.values():
        recorded = stored.get(family.table)
        if recorded is None:
            pending.append(family)
            continue
        found = difference(json.loads(recorded), definition(family))
        if found is not None:
            raise StoreRejected(
                f"table {family.table} in {location} was made by another transformation file"
                f" ({found}): nothing was changed; use a new database for this file, or the file"
                " the store was made with"
            )
    return pending


def rows(families: Iterable[Family]) -> list[tuple[str, str]]:
    """``RECORD_DEFINITION``'s parameters for these families."""
    return [(f.table, json.dumps(definition(f), sort_keys=False)) for f in families]
