"""The transformation rule engine: broken files fail at start; every operation does what it says."""

from __future__ import annotations

import copy
import datetime as dt
import re
from pathlib import Path

import duckdb
import pytest
import yaml

from marketpipe.config import TRANSFORMATION_FILE, packaged
from marketpipe.errors import ConfigError
from marketpipe.rules.transformation import load_transformations
from marketpipe.samples import metadata_bytes, synthetic_trades, write_dbn

from pg import SERVER

SHIPPED = packaged(TRANSFORMATION_FILE)


def _shipped() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(SHIPPED.read_text())


def _write(tmp_path: Path, document: dict) -> Path:  # type: ignore[type-arg]
    path = tmp_path / "transform.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _trades(document: dict) -> dict:  # type: ignore[type-arg]
    return document["tables"]["trades"]


def _edit(change: str) -> dict:  # type: ignore[type-arg]
    """The shipped file with one mistake, named by ``change``."""
    doc = _shipped()
    trades = _trades(doc)
    columns = trades["columns"]
    if change == "unknown field":
        columns["price"] = {"op": "price", "from": "prize"}
    elif change == "unknown operation":
        columns["price"] = "dollars"
    elif change == "type mismatch":
        columns["size"] = "price"
    elif change == "missing schema":
        del doc["tables"]["trades"]
    elif change == "unknown schema":
        trades["schemas"] = ["trade"]
    elif change == "schema twice":
        doc["tables"]["trades_again"] = copy.deepcopy(trades)
    elif change == "mixed layouts":
        trades["schemas"] = ["trades", "mbp-1"]
    elif change == "field forgotten":
        del columns["sequence"]
    elif change == "unknown drop":
        trades["drop"] = ["length", "volume"]
    elif change == "bad column name":
        columns["Price; DROP TABLE x"] = columns.pop("price")
    elif change == "time column not a timestamp":
        columns["ts_recv"] = "integer"
    elif change == "time column missing":
        trades["time_column"] = "ts_sent"
    elif change == "bad chunk interval":
        trades["chunk_interval"] = "1w"
    elif change == "symbol with source":
        columns["symbol"] = {"op": "symbol", "from": "instrument_id"}
    elif change == "enum without values":
        columns["side"] = "enum"
    elif change == "enum key type":
        columns["side"] = {"op": "enum", "values": {1: "bid"}}
    elif change == "null_if on price":
        columns["price"] = {"op": "price", "null_if": "max"}
    elif change == "unknown key":
        columns["price"] = {"op": "price", "scale": 2}
    return doc


BROKEN = {
    "unknown field": "table trades (trades): column price: unknown field 'prize' of TradeMsg",
    "unknown operation": "table trades (trades): column price: unknown operation 'dollars'",
    "type mismatch": "column size: price needs an int64 fixed-point field, but size is uint32",
    "missing schema": "missing schema trades",
    "unknown schema": "table trades: unknown schema 'trade'",
    "schema twice": "table trades_again: schema trades is already in table trades",
    "mixed layouts": "table trades: schemas trades, mbp-1 have different record layouts",
    "field forgotten": "table trades (trades): field sequence is neither stored nor dropped",
    "unknown drop": "table trades (trades): drop: unknown field 'volume' of TradeMsg",
    "bad column name": "column Price; DROP TABLE x: not a usable column name",
    "time column not a timestamp": "table trades (trades): time_column 'ts_recv' is not a nanoseconds column",
    "time column missing": "table trades (trades): time_column 'ts_sent' is not a nanoseconds column",
    "bad chunk interval": "table trades (trades): chunk_interval '1w' is not like 6h or 7d",
    "symbol with source": "column symbol: symbol takes no 'from' field",
    "enum without values": "column side: enum needs 'values'",
    "enum key type": "column side: enum value 1 is not a str like side",
    "null_if on price": "column price: price takes no 'null_if'",
    "unknown key": "tables.trades.columns.price",
}


@pytest.mark.parametrize("change", sorted(BROKEN))
def test_broken_transformation_file_names_file_table_and_rule(tmp_path: Path, change: str) -> None:
    path = _write(tmp_path, _edit(change))
    with pytest.raises(ConfigError) as info:
        load_transformations(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert BROKEN[change] in message
    assert "\n" not in message


def test_column_declared_twice_is_rejected(tmp_path: Path) -> None:
    text = SHIPPED.read_text().replace("      price: price\n", "      price: price\n      price: text\n", 1)
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="'price' is declared twice"):
        load_transformations(path)


def test_missing_and_unparsable_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read transformation rules"):
        load_transformations(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_transformations(bad)


def test_broken_file_stops_ingest_before_anything_is_read(tmp_path: Path, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MARKETPIPE_TRANSFORMATION_FILE", str(_write(tmp_path, _edit("type mismatch"))))
    data = tmp_path / "t.dbn"
    _trades_file(data, 10)
    result = cli("ingest", "--from-file", str(data))
    assert result.exit_code == 2
    assert "column size: price needs an int64" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert not (tmp_path / "store.duckdb").exists()


def _trades_file(path: Path, count: int) -> None:
    day = dt.date(2024, 3, 4)
    records = synthetic_trades(count, day)
    records["side"][::2] = b"B"
    records["side"][1::4] = b"N"
    start = int(records["ts_event"].min())
    metadata = metadata_bytes("XNAS.ITCH", "trades", start, start + 86_400 * 10**9, "instrument_id", {})
    write_dbn(path, metadata, [records.tobytes()])


def test_rename_enum_constant_and_drop_reach_the_store(tmp_path: Path, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    doc = _shipped()
    trades = _trades(doc)
    trades["drop"] = ["length", "ts_in_delta", "flags"]
    columns = {
        "ts_event": "nanoseconds",
        "instrument_id": "integer",
        "px": {"op": "price", "from": "price"},
        "qty": {"op": "integer", "from": "size"},
        "aggressor": {"op": "enum", "from": "side", "values": {"A": "sell", "B": "buy"}},
        "trade_action": {"op": "text", "from": "action"},
        "venue": {"op": "constant", "value": "XNAS"},
        "received": {"op": "nanoseconds", "from": "ts_recv"},
    }
    columns.update({n: "integer" for n in ("rtype", "publisher_id", "depth", "sequence")})
    trades["columns"] = columns
    trades["time_column"] = "received"
    monkeypatch.setenv("MARKETPIPE_TRANSFORMATION_FILE", str(_write(tmp_path, doc)))
    data = tmp_path / "t.dbn"
    _trades_file(data, 400)
    # The shipped post rules name ts_recv, which this model renames: caught before reading.
    result = cli("ingest", "--from-file", str(data))
    assert result.exit_code == 2
    assert "rule ts_recv_not_before_ts_event (table trades): Binder Error" in result.stderr
    (tmp_path / "no_rules.yaml").write_text("rules: []\n")
    monkeypatch.setenv("MARKETPIPE_VALIDATION_FILE", str(tmp_path / "no_rules.yaml"))
    result = cli("ingest", "--from-file", str(data))
    assert result.exit_code == 0, result.output + result.stderr
    records = synthetic_trades(400, dt.date(2024, 3, 4))
    records["side"][::2] = b"B"
    records["side"][1::4] = b"N"
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        names = [r[0] for r in con.execute("DESCRIBE trades").fetchall()]
        rows = con.execute(
            "SELECT px::VARCHAR, qty, aggressor, venue, epoch_ns(received) FROM trades ORDER BY sequence"
        ).fetchall()
    assert names == [*columns, "chunk_id"]
    order = records[records["sequence"].argsort(kind="stable")]
    label = {b"A": "sell", b"B": "buy", b"N": "N"}
    expected = [
        (
            f"{int(r['price']) // 10**9}.{int(r['price']) % 10**9:09d}",
            int(r["size"]),
            label[r["side"]],
            "XNAS",
            int(r["ts_recv"]),
        )
        for r in order
    ]
    assert rows == expected


@pytest.mark.parametrize("store", ["duckdb", pytest.param("postgres", marks=SERVER)])
def test_changed_model_against_an_existing_database_fails_in_one_line(  # type: ignore[no-untyped-def]
    tmp_path: Path, cli, monkeypatch, request, store: str
) -> None:
    if store == "postgres":
        monkeypatch.setenv("MARKETPIPE_DB", request.getfixturevalue("pg_url"))
    data = tmp_path / "t.dbn"
    _trades_file(data, 10)
    assert cli("ingest", "--from-file", str(data)).exit_code == 0
    doc = _shipped()
    del _trades(doc)["columns"]["sequence"]
    _trades(doc)["drop"].append("sequence")
    monkeypatch.setenv("MARKETPIPE_TRANSFORMATION_FILE", str(_write(tmp_path, doc)))
    result = cli("ingest", "--from-file", str(data), "--force")
    assert result.exit_code == 2
    assert re.search(
        r"table trades in .* was made by another transformation file"
        r" \(columns .* in the store, .* declared\)",
        result.stderr,
    )
    assert "Traceback" not in result.output + result.stderr
