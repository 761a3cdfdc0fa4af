"""A store is checked before it is touched: someone else's database that holds a table of one
of marketpipe's names, and a marketpipe table another transformation file made, are refused in
one line, with the DuckDB file byte for byte and the PostgreSQL/TimescaleDB catalog and data as
they were (no table, view, index, hypertable or migration row made)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml

import marketpipe
from marketpipe.config import TRANSFORMATION_FILE, packaged
from marketpipe.samples import make_sample

from pg import POSTGRES, TIMESCALE


def _snapshot(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every relation outside the system schemas (name, kind, owner schema) and every user
    table's rows (an order-free hash): what a refused run must leave as it was."""
    with psycopg.connect(url) as conn:
        relations = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
            " AND n.nspname NOT LIKE '\\_timescaledb%' AND n.nspname NOT LIKE 'timescaledb%'"
            " ORDER BY 1, 2"
        ).fetchall()
        data = [
            (table, *conn.execute(
                f'SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM "{table}" t'
            ).fetchone())  # type: ignore[misc]
            for (schema, table, kind) in relations
            if kind == "r" and schema == "public"
        ]  # fmt: skip
    return relations, data


def _one_line(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_someone_elses_duckdb_file_is_refused_byte_for_byte_unchanged(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_sample(tmp_path / "s")
    theirs = tmp_path / "theirs.duckdb"
    with duckdb.connect(str(theirs)) as con:
        con.execute("CREATE TABLE trades (a INTEGER, b INTEGER)")
        con.execute("INSERT INTO trades VALUES (1, 2), (3, 4)")
    before = _digest(theirs)
    for args in (["ingest", "--from-file", str(tmp_path / "s")], ["status"], ["export", "--schema", "trades",
                 "--out", str(tmp_path / "x.parquet")]):  # fmt: skip
        _one_line(
            cli(*args, "--db", str(theirs)), "holds a relation named trades that marketpipe did not make"
        )
        assert _digest(theirs) == before and not (tmp_path / "theirs.duckdb.wal").exists()
    assert not (tmp_path / "x.parquet").exists()
    # Tables of other names are no clash: marketpipe shares the file with them.
    with duckdb.connect(str(theirs)) as con:
        con.execute("ALTER TABLE trades RENAME TO my_notes")
    assert cli("ingest", "--from-file", str(tmp_path / "s"), "--db", str(theirs)).exit_code == 0
    with duckdb.connect(str(theirs), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM my_notes").fetchone() == (2,)


@pytest.mark.parametrize("mode", [POSTGRES, TIMESCALE])
def test_someone_elses_postgresql_database_is_refused_unchanged(
    cli, tmp_path: Path, request, mode: str
) -> None:  # type: ignore[no-untyped-def]
    """Their ``trades`` has no ts_out: refused as someone else's before any migration (which
    would have failed on the column, or, in TimescaleDB, made it a hypertable)."""
    url = str(request.getfixturevalue("pg_url" if mode == "postgresql" else "timescale_url"))
    make_sample(tmp_path / "s")
    with psycopg.connect(url, autocommit=True) as conn:
        if mode == "timescaledb":  # a user's TimescaleDB database: the extension is there
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        conn.execute("CREATE TABLE trades (ts_recv timestamptz NOT NULL, price numeric, note text)")
        conn.execute("INSERT INTO trades VALUES (now(), 1.5, 'mine'), (now(), 2.5, 'mine too')")
        conn.execute("CREATE VIEW my_view AS SELECT count(*) FROM trades")
    before = _snapshot(url)
    _one_line(cli("ingest", "--from-file", str(tmp_path / "s"), "--db", url),
              "holds a relation named trades that marketpipe did not make", "--pg-schema")  # fmt: skip
    _one_line(cli("status", "--db", url), "holds a relation named trades")
    assert _snapshot(url) == before
    if mode == "timescaledb":
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM timescaledb_information.hypertables").fetchone() == (0,)


def _changed(tmp_path: Path, change: str) -> Path:
    document = yaml.safe_load(packaged(TRANSFORMATION_FILE).read_text())
    trades = document["tables"]["trades"]
    if change == "time column":
        trades["time_column"] = "ts_event"
    elif change == "price operation":
        trades["columns"]["price"] = "integer"
    elif change == "enum":
        trades["columns"]["side"] = {"op": "enum", "values": {"A": "ask", "B": "bid", "N": "none"}}
    path = tmp_path / f"{change.replace(' ', '_')}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


CHANGES = {
    "time column": "time column ts_recv in the store, ts_event in the transformation file",
    "price operation": "column price: operation 'price' in the store, 'integer' declared",
    "enum": "column side: operation 'text' in the store, 'enum' declared",
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("store", ["duckdb", POSTGRES, TIMESCALE, "lake"])
def test_a_table_made_by_another_transformation_file_is_refused_at_start_with_nothing_changed(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request, store: str, change: str
) -> None:
    make_sample(tmp_path / "s")
    db = {
        "duckdb": str(tmp_path / "store.duckdb"),
        "postgresql": request.getfixturevalue("pg_url") if store == "postgresql" else "",
        "timescaledb": request.getfixturevalue("timescale_url") if store == "timescaledb" else "",
        "lake": f"lake:{tmp_path / 'lake'}",
    }[store]
    assert cli("ingest", "--from-file", str(tmp_path / "s"), "--db", db).exit_code == 0

    def state() -> object:
        if store == "duckdb":
            return _digest(tmp_path / "store.duckdb")
        if store == "lake":
            files = sorted((tmp_path / "lake").rglob("*"))
            return [(str(p), p.stat().st_size) for p in files], _digest(
                tmp_path / "lake" / "_marketpipe" / "ledger.duckdb"
            )
        return _snapshot(db)

    before = state()
    monkeypatch.setenv("MARKETPIPE_TRANSFORMATION_FILE", str(_changed(tmp_path, change)))
    for args in (["ingest", "--from-file", str(tmp_path / "s"), "--force"], ["status"]):
        _one_line(
            cli(*args, "--db", db),
            "table trades in",
            "was made by another transformation file",
            CHANGES[change],
        )
        assert state() == before


def test_an_enum_whose_labels_change_is_refused(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Same operation, other labels: `A` stored as `ask` would sit beside `sell`."""
    make_sample(tmp_path / "s")
    enum = _changed(tmp_path, "enum")
    monkeypatch.setenv("MARKETPIPE_TRANSFORMATION_FILE", str(enum))
    assert cli("ingest", "--from-file", str(tmp_path / "s")).exit_code == 0
    document = yaml.safe_load(enum.read_text())
    document["tables"]["trades"]["columns"]["side"]["values"]["A"] = "sell"
    enum.write_text(yaml.safe_dump(document, sort_keys=False))
    stored, declared = "{'A': 'ask', 'B': 'bid', 'N': 'none'}", "{'A': 'sell', 'B': 'bid', 'N': 'none'}"
    result = cli("ingest", "--from-file", str(tmp_path / "s"), "--force")
    _one_line(result, f"column side: values {stored} in the store, {declared} declared")


def test_a_store_made_before_definitions_were_kept_records_them_on_its_next_write(
    cli, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The current release's stores have no marketpipe_tables: their first write records the
    file's definitions (their columns match by name), and from then on a change is refused."""
    make_sample(tmp_path / "s")
    store = tmp_path / "store.duckdb"
    assert cli("ingest", "--from-file", str(tmp_path / "s")).exit_code == 0
    with duckdb.connect(str(store)) as con:
        con.execute("DROP TABLE marketpipe_tables")
    assert cli("status").exit_code == 0  # a reader records nothing
    with duckdb.connect(str(store), read_only=True) as con:
        assert not con.execute(
            "SELECT * FROM information_schema.tables WHERE table_name = 'marketpipe_tables'"
        ).fetchall()
    assert cli("ingest", "--from-file", str(tmp_path / "s")).exit_code == 0
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM marketpipe_tables").fetchone()[0] >= 10  # type: ignore[index]
    monkeypatch.setenv("MARKETPIPE_TRANSFORMATION_FILE", str(_changed(tmp_path, "time column")))
    _one_line(cli("ingest", "--from-file", str(tmp_path / "s")), CHANGES["time column"])


@pytest.mark.parametrize("mode", [POSTGRES, TIMESCALE])
def test_pg_schema_keeps_marketpipe_apart_beside_someone_elses_tables(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, request, mode: str
) -> None:
    """With --pg-schema, everything marketpipe makes lives in that schema; a database whose
    public ``trades`` is someone else's stays as it was, and reads find the schema's rows."""
    url = str(request.getfixturevalue("pg_url" if mode == "postgresql" else "timescale_url"))
    make_sample(tmp_path / "s")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE trades (a int, b int)")
        conn.execute("INSERT INTO trades VALUES (1, 2)")
    public = [r for r in _snapshot(url)[0] if r[0] == "public"]
    result = cli("ingest", "--from-file", str(tmp_path / "s"), "--db", url, "--pg-schema", "market")
    assert result.exit_code == 0, result.output
    assert "(schema market)" in result.output
    relations, data = _snapshot(url)
    assert [r for r in relations if r[0] == "public"] == public  # nothing new in public
    made = {name for schema, name, _ in relations if schema == "market"}
    assert {"trades", "trades_v", "ohlcv", "marketpipe_chunks", "marketpipe_tables"} <= made
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM market.trades").fetchone() == (2560,)
        assert conn.execute("SELECT * FROM public.trades").fetchall() == [(1, 2)]
        if mode == "timescaledb":
            hypertables = conn.execute("SELECT hypertable_schema FROM timescaledb_information.hypertables")
            assert {s for (s,) in hypertables} == {"market"}
    status = cli("status", "--db", url, "--pg-schema", "market", "--json")
    assert status.exit_code == 0, status.output
    assert {t["table"]: t["rows"] for t in json.loads(status.stdout)["tables"]}["trades"] == 2560
    _one_line(cli("status", "--db", url, "--pg-schema", "nowhere"), "no schema nowhere in")
    _one_line(cli("status", "--db", url, "--pg-schema", "Bad-Name"), "pg_schema")
    with marketpipe.open(url, pg_schema="market") as reader:
        assert reader.read("trades").num_rows == 2560
