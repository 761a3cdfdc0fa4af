"""The one migration runner (``stores/migrations.py``), on a real DuckDB ledger: steps in
version order, each recorded once under its name, nothing run when nothing is pending, and a
failing step taking the whole transaction with it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from marketpipe.components import StoreConfig
from marketpipe.stores import migrations, open_ledger


def _versions(path: Path) -> list[tuple[int, str]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return [
            (int(v), str(n))
            for v, n in con.execute("SELECT version, name FROM marketpipe_migrations").fetchall()
        ]


def test_steps_apply_in_version_order_once_each(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    ledger = open_ledger(StoreConfig(str(path)), read_only=False)
    order: list[int] = []
    steps = [
        migrations.Migration(migrations.LAKE_FILES, lambda: order.append(migrations.LAKE_FILES)),
        migrations.Migration(migrations.BRIN_INDEX, lambda: order.append(migrations.BRIN_INDEX)),
    ]
    applied = migrations.recorded(ledger, {"marketpipe_migrations"})
    assert migrations.migrate(ledger, steps, applied) == sorted(steps, key=lambda s: s.version)
    assert order == [migrations.BRIN_INDEX, migrations.LAKE_FILES]
    again = migrations.recorded(ledger, {"marketpipe_migrations"})
    assert migrations.pending(steps, again) == []
    assert migrations.migrate(ledger, steps, again) == [] and len(order) == 2
    ledger.close()
    recorded = dict(_versions(path))
    assert recorded[migrations.LAKE_FILES] == "lake: the files of each chunk"
    # The ledger's own steps, applied as it opened, are there too, each under its name.
    assert {migrations.MODEL, migrations.COVERAGE, migrations.ATTEMPTS} <= recorded.keys()
    assert all(recorded[v] == migrations.VERSIONS[v] for v in recorded)


def test_a_failing_step_leaves_nothing_of_the_transaction(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    ledger = open_ledger(StoreConfig(str(path)), read_only=False)
    made = migrations.statements(ledger, "CREATE TABLE made_by_a_step (x INTEGER)")

    def fails() -> None:
        raise RuntimeError("a step that fails")

    steps = [
        migrations.Migration(migrations.BRIN_INDEX, made),
        migrations.Migration(migrations.LAKE_FILES, fails),
    ]
    ledger.begin()
    with pytest.raises(RuntimeError, match="a step that fails"):
        migrations.migrate(ledger, steps, migrations.recorded(ledger, {"marketpipe_migrations"}))
    ledger.rollback()
    ledger.close()
    with duckdb.connect(str(path), read_only=True) as con:
        tables = {t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert "made_by_a_step" not in tables
    assert migrations.BRIN_INDEX not in dict(_versions(path))


def test_every_step_of_every_store_has_a_name() -> None:
    """A version a store lists is one the registry of versions names (a number is never
    reused: the retired ones keep theirs)."""
    assert sorted(migrations.VERSIONS) == list(range(1, max(migrations.VERSIONS) + 1))
    ledger_steps = {migrations.MODEL, migrations.CHUNK_RANGES, migrations.INSTRUMENTS}
    assert ledger_steps <= migrations.VERSIONS.keys()
