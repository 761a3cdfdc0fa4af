"""The standardized model against databento's own definitions."""

from __future__ import annotations

import databento_dbn as dbn
import numpy as np
import pyarrow as pa

from marketpipe.model import FAMILIES, FAMILY_OF_SCHEMA, PRICE_TYPE, SENTINEL_FIELDS, Kind
from marketpipe.transform import decimal_prices


def _fields_at_type_max(record: object, family: str) -> set[str]:
    array = np.frombuffer(bytes(record), dtype=FAMILIES[family].record_dtype)  # type: ignore[call-overload]
    out = set()
    for name in array.dtype.names or ():
        column = next((c for c in FAMILIES[family].columns if c.name == name), None)
        if column is None or column.kind is not Kind.INTEGER:
            continue
        if int(array[name][0]) == np.iinfo(array.dtype[name]).max:
            out.add(name)
    return out


def test_sentinel_fields_are_the_fields_databento_dbn_leaves_undefined() -> None:
    definition = dbn.InstrumentDefMsg(
        1, 2, 3, 4, 5, 6, "X", "A", "FUT", dbn.InstrumentClass.FUTURE, dbn.SecurityUpdateAction.ADD
    )
    imbalance = dbn.ImbalanceMsg(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, "A", dbn.Side.BID, "C")
    stat = dbn.StatMsg(1, 2, 3, 4, 5, 6, dbn.UNDEF_STAT_QUANTITY, dbn.StatType.OPENING_PRICE)
    assert _fields_at_type_max(definition, "definitions") == SENTINEL_FIELDS["definitions"]
    assert _fields_at_type_max(imbalance, "imbalance") == SENTINEL_FIELDS["imbalance"]
    mbo = dbn.MBOMsg(1, 2, 3, 4, 5, 6, dbn.Action.ADD, dbn.Side.BID, 7)
    assert _fields_at_type_max(stat, "statistics") == SENTINEL_FIELDS["statistics"]
    assert _fields_at_type_max(mbo, "mbo") == SENTINEL_FIELDS["mbo"]


def test_every_schema_has_a_family_and_every_family_keeps_databento_field_names() -> None:
    assert set(FAMILY_OF_SCHEMA) == {s.value for s in dbn.Schema.variants()}
    mbp10 = FAMILIES["mbp10"].column_names
    assert mbp10[:2] == ["ts_recv", "ts_event"]
    assert "bid_px_00" in mbp10 and "ask_ct_09" in mbp10 and mbp10[-1] == "symbol"
    for family in FAMILIES.values():
        assert not any(n.startswith("_") or n == "length" for n in family.column_names)
        assert ("schema" in family.column_names) == (len(family.schemas) > 1)


def test_decimal_prices_are_exact_for_extremes() -> None:
    values = np.array([-(2**63), -1, 0, 1, 2**63 - 2, 2**63 - 1], dtype=np.int64)
    valid = values != 2**63 - 1
    array = decimal_prices(values, valid)
    assert array.type == PRICE_TYPE
    assert array.to_pylist()[:-1] == [
        pa.scalar(int(v)).cast(pa.decimal128(38, 0)).as_py().scaleb(-9) for v in values[:-1]
    ]
    assert array.to_pylist()[-1] is None
