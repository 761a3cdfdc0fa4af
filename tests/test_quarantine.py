"""Log & Quarantine: bad records land in quarantine with their rule, good ones are stored."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from marketpipe.config import load_settings
from marketpipe.rules.validation import rebuild
from marketpipe.samples import metadata_bytes, write_dbn
from marketpipe.stores import open_store
from marketpipe.stores.base import QuarantineQuery
from test_validation_rules import UNDEF_PRICE, UNDEF_TS, record

from dbn_reference import MODEL
from pg import POSTGRES

BROKEN = {
    "rtype_matches_schema": {"rtype": 160},
    "ts_event_defined": {"ts_event": UNDEF_TS},
    "trade_size_positive": {"size": 0},
    "trade_price_defined": {"price": UNDEF_PRICE},
}


@pytest.fixture(params=["duckdb", POSTGRES])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "duckdb":
        yield str(tmp_path / "q.duckdb")
    else:
        yield str(request.getfixturevalue("pg_url"))


def _mixed_file(path: Path, good: int, bad_each: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    goods = np.concatenate([record("trades", sequence=i) for i in range(good)])
    bads = {
        rule: np.concatenate([record("trades", sequence=10_000 + i, **fields) for i in range(bad_each)])
        for rule, fields in BROKEN.items()
        if bad_each
    }
    everything = np.concatenate([goods, *bads.values()])
    rng = np.random.default_rng(3)
    everything = everything[rng.permutation(len(everything))]
    start = int(goods["ts_event"][0])
    write_dbn(
        path,
        metadata_bytes("GLBX.MDP3", "trades", start, start + 10**12, "raw_symbol", {}),
        [everything.tobytes()],
    )
    return goods, bads


def test_bad_records_are_quarantined_and_the_count_closes(cli, db: str, tmp_path: Path) -> None:
    goods, bads = _mixed_file(tmp_path / "mixed.dbn", good=300, bad_each=3)  # 12 of 312 broken: 3.8%
    result = cli("ingest", "--from-file", str(tmp_path / "mixed.dbn"), "--db", db)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "│ trades" in line)
    read, stored, rejected = (int(v.replace(",", "")) for v in re.findall(r"│\s*([\d,]+)\s*", row)[:3])
    assert (read, stored, rejected) == (312, 300, 12)
    for rule in BROKEN:
        assert f"quarantined by {rule}: 3" in result.output

    store = open_store(load_settings(db=db).store, MODEL)
    try:
        quarantined = store.ledger.quarantined(QuarantineQuery(limit=1000))
    finally:
        store.close()
    dtype = MODEL.family_of("trades").record_dtype
    by_rule: dict[str, set[bytes]] = {}
    for q in quarantined:
        by_rule.setdefault(q.rule, set()).add(rebuild(q.record, dtype))
    assert by_rule == {rule: {r.tobytes() for r in records} for rule, records in bads.items()}

    listing = cli("quarantine", "--db", db, "--rule", "trade_size_positive")
    assert listing.exit_code == 0 and "quarantined records (3 of 3 shown)" in listing.output
    # A rule of the validation file that quarantined nothing here is known; a typo is not.
    quiet = cli("quarantine", "--db", db, "--rule", "quote_not_crossed")
    assert quiet.exit_code == 0 and quiet.output.strip() == "no quarantined records match"
    typo = cli("quarantine", "--db", db, "--rule", "trade_size_positiv")
    assert typo.exit_code == 2 and "--rule trade_size_positiv: no such rule; known: " in typo.output
    shown = cli("quarantine", "--db", db, "--rule", "trade_price_defined", "--show", "2")
    assert shown.exit_code == 0 and '"price": 9223372036854775807' in shown.output
    assert cli("quarantine", "--db", db, "--show", "99").exit_code == 2

    # Re-running the same file replaces its quarantine rows too: nothing doubles.
    assert cli("ingest", "--from-file", str(tmp_path / "mixed.dbn"), "--db", db, "--force").exit_code == 0
    store = open_store(load_settings(db=db).store, MODEL)
    try:
        assert len(store.ledger.quarantined(QuarantineQuery(limit=1000))) == 12
    finally:
        store.close()


def test_too_many_rejections_fail_the_chunk_and_store_nothing(cli, db: str, tmp_path: Path) -> None:
    _mixed_file(tmp_path / "mixed.dbn", good=100, bad_each=3)  # 12 of 112 broken: 10.7%
    result = cli("ingest", "--from-file", str(tmp_path / "mixed.dbn"), "--db", db)
    assert result.exit_code == 1
    assert "above the 5% limit (--max-quarantine-ratio): the data or a rule is likely broken" in result.output
    store = open_store(load_settings(db=db).store, MODEL)
    try:
        assert store.ledger.quarantined(QuarantineQuery(limit=1000)) == []
        assert next(t.rows for t in store.status().tables if t.table == "trades") == 0
        assert ("adhoc", "failed", 1) in store.status().chunks
    finally:
        store.close()
    assert (
        cli(
            "ingest", "--from-file", str(tmp_path / "mixed.dbn"), "--db", db, "--max-quarantine-ratio", "0.2"
        ).exit_code
        == 0
    )


def test_broken_rule_file_stops_before_reading(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: x, stage: post, severity: error, check: 'prize > 0', message: m}\n")
    monkeypatch.setenv("MARKETPIPE_VALIDATION_FILE", str(rules))
    _mixed_file(tmp_path / "mixed.dbn", good=5, bad_each=0)
    result = cli("ingest", "--from-file", str(tmp_path / "mixed.dbn"))
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {rules}: rule x (table")
    assert not (tmp_path / "store.duckdb").exists()
