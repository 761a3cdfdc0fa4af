"""A contract's own symbol finds its rows whatever stype the data was ingested with.

Databento's symbology: ``instrument_id`` resolves to ``raw_symbol`` over a date range (a valid
combination of symbology.resolve, docs "api-historical/symbology"); a definition record names
its instrument's ``raw_symbol`` from ``activation`` to ``expiration`` (schemas "Instrument
definitions")."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import databento_dbn as dbn
import numpy as np
import pyarrow.parquet as pq
import pytest

import marketpipe
from marketpipe.config import IngestRequest, load_settings
from marketpipe.pipeline import ingest
from marketpipe.samples import Interval, metadata_bytes, synthetic_trades, write_dbn
from marketpipe.symbology import day_ns

from databento_server import DatabentoServer
from dbn_reference import MODEL
from pg import SERVER

DAY = dt.date(2024, 1, 2)


def test_read_and_export_by_contract_after_a_parent_ingest(api: DatabentoServer, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "store.duckdb")
    request = IngestRequest(
        dataset="GLBX.MDP3", schemas=["trades"], symbols=["ES.FUT"], stype_in="parent",
        start_date=DAY, end_date=DAY + dt.timedelta(days=1),
    )  # fmt: skip
    assert ingest(request, load_settings(db=db), model=MODEL).exit_code == 0
    with marketpipe.open(db) as reader:
        everything = reader.read("trades")
        esh4 = reader.read("trades", symbols=["ESH4"])
    # The server's ES.FUT holds ESH4 (instrument 2001) and ESM4 (2002); rows keep ES.FUT.
    assert set(everything["instrument_id"].to_pylist()) == {2001, 2002}
    assert set(esh4["symbol"].to_pylist()) == {"ES.FUT"}
    assert esh4["instrument_id"].to_pylist() == [
        i for i in everything["instrument_id"].to_pylist() if i == 2001
    ]
    assert esh4.num_rows > 0
    out = tmp_path / "esh4.parquet"
    result = cli("export", "--schema", "trades", "--symbols", "ESH4", "--out", str(out), "--db", db)
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).equals(esh4.replace_schema_metadata(None))
    # The requested symbol still finds every contract it stands for.
    with marketpipe.open(db) as reader:
        assert reader.read("trades", symbols=["ES.FUT"]).num_rows == everything.num_rows
    # Coverage by contract counts the contract's rows under its own name.
    report = cli("coverage", "--schema", "trades", "--symbols", "ESH4,ES.FUT", "--db", db, "--json")
    assert report.exit_code == 0, report.output
    rows = {s: v["rows"] for s, v in json.loads(report.stdout)["symbols"].items()}
    assert rows == {"ESH4": esh4.num_rows, "ES.FUT": everything.num_rows}


@pytest.mark.parametrize(
    "on_postgres", [False, pytest.param(True, marks=SERVER)], ids=["duckdb", "postgresql"]
)
def test_definitions_name_contracts_for_files_ingested_by_parent(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, on_postgres: bool, request: pytest.FixtureRequest
) -> None:
    """Files mapped by parent symbol: a definition file tells which instrument is ESH4."""
    trades = synthetic_trades(300, DAY, instruments=2, seed=3)
    end = day_ns(DAY + dt.timedelta(days=1))
    parent = {
        "ES.FUT": [
            Interval(DAY, DAY + dt.timedelta(days=1), "1"),
            Interval(DAY, DAY + dt.timedelta(days=1), "2"),
        ]
    }
    write_dbn(
        tmp_path / "in" / "t.dbn",
        metadata_bytes("GLBX.MDP3", "trades", day_ns(DAY), end, "parent", parent),
        [trades.tobytes()],
    )
    definition = dbn.InstrumentDefMsg(
        publisher_id=1, instrument_id=2, ts_event=day_ns(DAY), ts_recv=day_ns(DAY) + 1,
        min_price_increment=250_000_000,
        display_factor=10**9, raw_symbol="ESH4", group="ES", exchange="XCME", asset="ES", security_type="FUT",
        instrument_class=dbn.InstrumentClass.FUTURE, security_update_action=dbn.SecurityUpdateAction.ADD,
        activation=day_ns(DAY) - 86_400 * 10**9 * 90, expiration=day_ns(DAY) + 86_400 * 10**9 * 80,
    )  # fmt: skip
    raw = {"ESH4": [Interval(DAY, DAY + dt.timedelta(days=1), "2")]}
    meta = metadata_bytes("GLBX.MDP3", "definition", day_ns(DAY), end, "raw_symbol", raw)
    write_dbn(tmp_path / "in" / "d.dbn", meta, [bytes(definition)])
    db = str(request.getfixturevalue("pg_url")) if on_postgres else str(tmp_path / "store.duckdb")
    assert cli("ingest", "--from-file", str(tmp_path / "in"), "--db", db).exit_code == 0
    with marketpipe.open(db) as reader:
        esh4 = reader.read("trades", symbols=["ESH4"])
    assert esh4.num_rows == int(np.count_nonzero(trades["instrument_id"] == 2)) > 0
    assert set(esh4["instrument_id"].to_pylist()) == {2}
