"""Each shipped validation rule: a record that breaks it and one that keeps it."""

from __future__ import annotations

from pathlib import Path

import databento_dbn
import numpy as np
import pyarrow as pa
import pytest
import yaml

from marketpipe.config import VALIDATION_FILE, packaged
from marketpipe.errors import ConfigError
from marketpipe.rules.validation import Validator, Verdict, rebuild
from marketpipe.transform import to_table
from marketpipe.types import Chunk, RawBatch

from dbn_reference import MODEL

RULES = packaged(VALIDATION_FILE)
T0 = 1_709_510_400_000_000_000  # 2024-03-04
UNDEF_TS = 2**64 - 1
UNDEF_PRICE = 2**63 - 1
PX = 5_000 * 10**9
RTYPE = {"trades": 0, "ohlcv-1d": 35, "mbp-1": 1, "mbp-10": 10, "definition": 19, "statistics": 24}
EMPTY_LEVELS = {f"{side}_px_{i:02d}": UNDEF_PRICE for side in ("bid", "ask") for i in range(1, 10)}


def record(schema: str, **fields: object) -> np.ndarray:
    """One valid record of ``schema`` with ``fields`` changed."""
    family = MODEL.family_of(schema)
    rec = np.zeros(1, dtype=family.record_dtype)
    rec["length"] = family.record_dtype.itemsize // 4
    rec["rtype"] = RTYPE[schema]
    rec["instrument_id"] = 7
    rec["ts_event"] = T0
    names = family.record_dtype.names or ()
    if "ts_recv" in names:
        rec["ts_recv"] = T0 + 1_000
    defaults = {
        "trades": {"price": PX, "size": 3, "action": b"T", "side": b"A"},
        "ohlcv-1d": {"open": PX, "high": PX + 10**9, "low": PX - 10**9, "close": PX, "volume": 10},
        "mbp-1": {
            "price": PX,
            "size": 1,
            "bid_px_00": PX,
            "ask_px_00": PX + 25 * 10**7,
            "side": b"A",
            "action": b"A",
        },
        "mbp-10": {
            "price": PX,
            "size": 1,
            "side": b"B",
            "action": b"A",
            "bid_px_00": PX,
            "ask_px_00": PX + 25 * 10**7,
            **EMPTY_LEVELS,
        },  # fmt: skip
        "definition": {"raw_symbol": b"ESM4", "instrument_class": b"F", "min_price_increment": 25 * 10**7},
        "statistics": {"stat_type": 1, "price": PX, "quantity": UNDEF_PRICE},
    }[schema]
    for name, value in {**defaults, **fields}.items():
        rec[name] = value
    return rec


CASES = [
    ("rtype_matches_schema", "trades", {"rtype": 99}),
    ("index_timestamp_defined", "trades", {"ts_recv": UNDEF_TS}),
    ("index_timestamp_defined", "ohlcv-1d", {"ts_event": UNDEF_TS}),
    ("index_timestamp_representable", "trades", {"ts_recv": 2**63 + 5}),
    ("ts_event_defined", "trades", {"ts_event": UNDEF_TS}),
    ("ts_event_representable", "trades", {"ts_event": 2**63}),
    ("index_timestamp_in_requested_range", "ohlcv-1d", {"ts_event": T0 - 1}),
    ("index_timestamp_in_requested_range", "trades", {"ts_recv": T0 + 86_400 * 10**9}),
    ("ts_recv_not_before_ts_event", "trades", {"ts_event": T0 + 2_000}),
    ("ohlcv_high_not_below_open_close", "ohlcv-1d", {"high": PX - 1}),
    ("ohlcv_low_not_above_open_close", "ohlcv-1d", {"low": PX + 1}),
    ("trade_size_positive", "trades", {"size": 0}),
    ("trade_price_defined", "trades", {"price": UNDEF_PRICE}),
    ("quote_not_crossed", "mbp-1", {"bid_px_00": PX + 10**9}),
    ("side_known", "trades", {"side": b"\x15"}),
    ("action_known", "mbp-1", {"action": b"X"}),
    ("symbol_printable", "trades", {"symbol": "ESH1\x00\x02"}),
    ("definition_text_printable", "definition", {"exchange": b"XC\x01E"}),
    ("book_levels_ordered", "mbp-10", {"bid_px_01": PX + 1}),
    ("definition_has_raw_symbol", "definition", {"raw_symbol": b""}),
    ("definition_has_instrument_class", "definition", {"instrument_class": b"Z"}),
    ("stock_prices_positive", "definition", {"instrument_class": b"K", "min_price_increment": 0}),
    ("statistic_type_known", "statistics", {"stat_type": 999}),
]
WINDOW = Chunk("k", "trades", "test", start_ns=T0, end_ns=T0 + 86_400 * 10**9)


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(RULES, MODEL)


def _checked(
    validator: Validator, schema: str, records: np.ndarray, symbol: str | None = None
) -> tuple[Verdict, Verdict]:
    """Both stages over ``records`` (all mapped to ``symbol``), as the pipeline runs them."""
    family = MODEL.family_of(schema)
    chunk = Chunk(WINDOW.key, schema, "test", start_ns=WINDOW.start_ns, end_ns=WINDOW.end_ns)
    first = validator.check("initial", family, schema, chunk, records, None)
    kept = records[first.keep]
    table = to_table(family, schema, RawBatch(kept, pa.array([symbol] * len(kept), pa.string())))
    post = validator.check("post", family, schema, chunk, kept, table)
    return first, post


def _run(
    validator: Validator, schema: str, records: np.ndarray, symbol: str | None = None
) -> tuple[list[str], list[str]]:
    """Rules that quarantined and rules that warned, over both stages."""
    first, post = _checked(validator, schema, records, symbol)
    rejected = [r.rule for r in first.rejections + post.rejections]
    return rejected, sorted({**first.warnings, **post.warnings})


def test_every_shipped_rule_has_a_case(validator: Validator) -> None:
    assert {r.name for r in validator.rules} == {name for name, _, _ in CASES}


@pytest.mark.parametrize(("rule", "schema", "broken"), CASES, ids=[c[0] for c in CASES])
def test_rule_breaks_and_holds(
    validator: Validator, rule: str, schema: str, broken: dict[str, object]
) -> None:
    severity = next(r.severity for r in validator.rules if r.name == rule)
    assert _run(validator, schema, record(schema), "ESM4") == ([], [])
    fields = {k: v for k, v in broken.items() if k != "symbol"}
    rejected, warned = _run(validator, schema, record(schema, **fields), broken.get("symbol", "ESM4"))
    if severity == "error":
        assert (rejected, warned) == ([rule], [])
    else:
        assert (rejected, warned) == ([], [rule])


def test_price_positivity_spares_spreads(validator: Validator) -> None:
    spread = record("definition", instrument_class=b"S", min_price_increment=-(10**9))
    assert _run(validator, "definition", spread) == ([], [])


def test_quarantined_record_rebuilds_exactly(validator: Validator) -> None:
    broken = record("trades", size=0, sequence=123456, ts_in_delta=-5)
    family = MODEL.family_of("trades")
    table = to_table(family, "trades", RawBatch(broken, pa.nulls(1, "string")))
    verdict = validator.check("post", family, "trades", WINDOW, broken, table)
    assert rebuild(verdict.rejections[0].record, family.record_dtype) == broken.tobytes()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [", "invalid YAML"),
        (
            "rules:\n  - name: x\n    stage: initial\n    severity: error\n    check: ts_event > 0\n",
            "message",
        ),
        (
            "rules:\n  - {name: x, stage: later, severity: error, check: 'true', message: m}\n",
            "rules.0.stage",
        ),
        (
            "rules:\n  - {name: x, stage: post, severity: error, check: 'prize > 0', message: m,"
            " tables: [trades]}\n",
            "rule x (table trades)",
        ),
        (
            "rules:\n  - {name: x, stage: post, severity: error, check: 'true', message: m,"
            " tables: [quotes]}\n",
            "rule x: unknown table 'quotes'",
        ),
        (
            "rules:\n  - {name: x, stage: post, severity: error, check: 'true', message: m}\n"
            "  - {name: x, stage: post, severity: warn, check: 'true', message: m}\n",
            "rule x: the name is used twice",
        ),
        (
            "rules:\n  - {name: x, stage: post, severity: error, check: 'true', message: m, colour: red}\n",
            "rules.0.colour",
        ),
    ],
)
def test_broken_rule_file_fails_at_start(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        Validator(path, MODEL)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


# What the message says of each shipped error rule's broken record: the term of the rule's own
# check that failed (as DuckDB prints it, placeholders filled in) and the values it read, as
# the rule saw them (raw DBN integers in the initial stage, standardized columns after).
END = T0 + 86_400 * 10**9
EXPLAINED = {
    ("rtype_matches_schema", "trades"): "rtype IN (0) fails for rtype=99",
    ("index_timestamp_defined", "trades"): f"ts_recv != {UNDEF_TS} fails for ts_recv={UNDEF_TS}",
    ("index_timestamp_defined", "ohlcv-1d"): f"ts_event != {UNDEF_TS} fails for ts_event={UNDEF_TS}",
    ("index_timestamp_representable", "trades"): (
        f"(ts_recv = {UNDEF_TS}) OR (ts_recv <= {2**63 - 1}) fails for ts_recv={2**63 + 5}"
    ),
    ("ts_event_defined", "trades"): f"ts_event != {UNDEF_TS} fails for ts_event={UNDEF_TS}",
    ("ts_event_representable", "trades"): (
        f"(ts_event = {UNDEF_TS}) OR (ts_event <= {2**63 - 1}) fails for ts_event={2**63}"
    ),
    # Of the range check's two terms, only the bound the record is past.
    ("index_timestamp_in_requested_range", "ohlcv-1d"): (
        f"(CAST({T0} AS BIGINT) IS NULL) OR (ts_event >= CAST({T0} AS BIGINT)) fails for ts_event={T0 - 1}"
    ),
    ("index_timestamp_in_requested_range", "trades"): (
        f"(CAST({END} AS BIGINT) IS NULL) OR (ts_recv < CAST({END} AS BIGINT)) fails for ts_recv={END}"
    ),
    ("ohlcv_high_not_below_open_close", "ohlcv-1d"): (
        'high >= greatest(open, "close") fails for'
        " high=4999.999999999, open=5000.000000000, close=5000.000000000"
    ),
    ("ohlcv_low_not_above_open_close", "ohlcv-1d"): (
        'low <= least(open, "close") fails for low=5000.000000001, open=5000.000000000, close=5000.000000000'
    ),
    ("trade_size_positive", "trades"): "size > 0 fails for size=0",
    # Post rules see the standardized columns: the undefined price is NULL there.
    ("trade_price_defined", "trades"): "price IS NOT NULL fails for price=NULL",
    ("definition_has_raw_symbol", "definition"): "raw_symbol != '' fails for raw_symbol=''",
    ("definition_has_instrument_class", "definition"): (
        "instrument_class IN ('B', 'C', 'F', 'I', 'K', 'M', 'P', 'S', 'T', 'X', 'Y')"
        " fails for instrument_class='Z'"
    ),
    ("stock_prices_positive", "definition"): (
        "(NOT (instrument_class IN ('K', 'B', 'X'))) OR (((min_price_increment IS NULL) OR"
        " (min_price_increment > 0)) AND ((high_limit_price IS NULL) OR (high_limit_price > 0)) AND"
        " ((low_limit_price IS NULL) OR (low_limit_price > 0))) fails for instrument_class='K',"
        " min_price_increment=0.000000000, high_limit_price=0.000000000, low_limit_price=0.000000000"
    ),
    ("statistic_type_known", "statistics"): (
        f"stat_type IN ({', '.join(str(int(v.value)) for v in databento_dbn.StatType.variants())})"
        " fails for stat_type=999"
    ),
    ("side_known", "trades"): f"side IN ('A', 'B', 'N') fails for side={chr(0x15)!r}",
    ("action_known", "mbp-1"): "\"action\" IN ('M', 'T', 'F', 'C', 'A', 'R', 'N') fails for action='X'",
    ("definition_text_printable", "definition"): (
        'regexp_full_match((((((((((raw_symbol || "group") || exchange) || asset) || cfi) || security_type)'
        " || currency) || settl_currency) || underlying) || leg_raw_symbol), '[ -~]*') fails for"
        f" raw_symbol='ESM4', group='', exchange={'XC' + chr(1) + 'E'!r}, asset='', cfi='',"
        " security_type='', currency='', settl_currency='', underlying='', leg_raw_symbol=''"
    ),
    # Of the book's eighteen terms, the one the record breaks.
    ("book_levels_ordered", "mbp-10"): (
        "COALESCE((bid_px_01 <= bid_px_00), true) fails for"
        " bid_px_01=5000.000000001, bid_px_00=5000.000000000"
    ),
    ("symbol_printable", "trades"): (
        "(symbol IS NULL) OR regexp_full_match(symbol, '[ -~]*') fails for"
        f" symbol={'ESH1' + chr(0) + chr(2)!r}"
    ),
}


@pytest.mark.parametrize(("rule", "schema", "broken"), CASES, ids=[c[0] for c in CASES])
def test_quarantine_message_names_the_failed_term_of_the_rule_and_its_values(
    validator: Validator, rule: str, schema: str, broken: dict[str, object]
) -> None:
    fields = {k: v for k, v in broken.items() if k != "symbol"}
    first, post = _checked(validator, schema, record(schema, **fields), broken.get("symbol", "ESM4"))
    rejections = first.rejections + post.rejections
    if (rule, schema) not in EXPLAINED:  # a warning: stored, never quarantined
        assert rejections == []
        return
    [rejection] = rejections
    rule_message = next(r.message for r in validator.rules if r.name == rule)
    assert rejection.message == f"{rule_message}: {EXPLAINED[rule, schema]}"


def test_a_character_byte_that_is_no_text_is_quarantined_not_a_crash(validator: Validator) -> None:
    """A damaged one-byte c_char field (0xff is no UTF-8 text) is a value the rules reject: its
    record is quarantined with the byte escaped, the batch's other records go on."""
    records = np.concatenate([record("trades"), record("trades", side=b"\xff"), record("trades")])
    first, post = _checked(validator, "trades", records, "ESM4")
    [rejection] = first.rejections
    assert rejection.rule == "side_known"
    assert rejection.message.endswith("side IN ('A', 'B', 'N') fails for side='\\\\xff'")
    assert rebuild(rejection.record, records.dtype) == records[1].tobytes()
    assert first.keep.tolist() == [True, False, True]
    assert post.rejections == []


def test_a_check_that_reads_null_breaks_its_rule(tmp_path: Path) -> None:
    """A check is kept only when TRUE: ``price > 0`` over an undefined (NULL) price breaks, in a
    batch whose other rows hold (so the whole-batch count is what finds it)."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - {name: positive_price, stage: post, severity: error, check: 'price > 0',"
        " message: no price, tables: [trades]}\n"
    )
    records = np.concatenate([record("trades"), record("trades", price=UNDEF_PRICE), record("trades")])
    first, post = _checked(Validator(path, MODEL), "trades", records, "ESM4")
    assert first.rejections == [] and [r.rule for r in post.rejections] == ["positive_price"]
    assert post.keep.tolist() == [True, False, True]


def test_an_edited_rule_explains_itself(tmp_path: Path) -> None:
    """A rule of the user's own: the message names the term that failed, not the others."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - {name: small_trades, stage: initial, severity: error,"
        " check: 'size < 100 AND price > 0 AND side IN (''A'', ''B'')',"
        " message: trade too large, tables: [trades]}\n"
    )
    verdict = Validator(path, MODEL).check(
        "initial", MODEL.family_of("trades"), "trades", WINDOW, record("trades", size=500), None
    )
    assert [r.message for r in verdict.rejections] == ["trade too large: size < 100 fails for size=500"]


INJECTIONS = {
    "statements": ("size > 0) FROM batch; COPY (SELECT 1) TO '{out}'; DROP TABLE x; SELECT (1", "several"),
    "attach": ("1) FROM batch; ATTACH '{out}' AS other; DROP TABLE other.trades; SELECT (1", "several"),
    "from clause": ("1) FROM batch, read_csv('/etc/passwd') t --", "a FROM clause of its own"),
    "where clause": ("1) FROM batch WHERE (size > 0) --", "a WHERE clause"),
    "subquery": ("size > (SELECT count(*) FROM read_text('/etc/passwd'))", "a subquery"),
    "environment": ("getenv('HOME') <> ''", "the function getenv()"),
    "settings": ("current_setting('threads') > 0", "the function current_setting()"),
    "window": ("size > avg(size) OVER ()", "a window"),
}


@pytest.mark.parametrize("name", sorted(INJECTIONS))
def test_a_check_is_one_expression_and_nothing_else(tmp_path: Path, name: str) -> None:
    check, found = INJECTIONS[name]
    out = tmp_path / "written.txt"
    path = tmp_path / "rules.yaml"
    rule = {"name": "x", "stage": "post", "severity": "error", "tables": ["trades"], "message": "m"}
    path.write_text(yaml.safe_dump({"rules": [{**rule, "check": check.format(out=out)}]}))
    with pytest.raises(ConfigError) as error:
        Validator(path, MODEL)
    message = str(error.value)
    assert message.startswith(f"{path}: rule x: ") and found in message, message
    assert not out.exists()
