"""The standardized model (the shipped transformation file) against databento's own definitions."""

from __future__ import annotations

import databento_dbn as dbn
import numpy as np
import pyarrow as pa

from marketpipe.model import LAYOUT_OF_SCHEMA, PRICE_TYPE, Kind
from marketpipe.transform import decimal_prices

from dbn_reference import MODEL, SENTINEL_FIELDS, reference_families


def _fields_at_type_max(record: object) -> set[str]:
    """Integer fields a databento-dbn constructor left at their type's maximum ("not set")."""
    struct = type(record)
    array = np.frombuffer(bytes(record), dtype=np.dtype(struct._dtypes))  # type: ignore[attr-defined]
    skip = set(struct._price_fields) | set(struct._timestamp_fields) | {"length"}  # type: ignore[attr-defined]
    return {
        name
        for name in array.dtype.names or ()
        if not name.startswith("_")
        and name not in skip
        and array.dtype[name].kind in "iu"
        and int(array[name][0]) == np.iinfo(array.dtype[name]).max
    }


def test_reference_sentinels_are_the_fields_databento_dbn_leaves_undefined() -> None:
    definition = dbn.InstrumentDefMsg(
        1, 2, 3, 4, 5, 6, "X", "A", "FUT", dbn.InstrumentClass.FUTURE, dbn.SecurityUpdateAction.ADD
    )
    imbalance = dbn.ImbalanceMsg(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, "A", dbn.Side.BID, "C")
    stat = dbn.StatMsg(1, 2, 3, 4, 5, 6, dbn.UNDEF_STAT_QUANTITY, dbn.StatType.OPENING_PRICE)
    mbo = dbn.MBOMsg(1, 2, 3, 4, 5, 6, dbn.Action.ADD, dbn.Side.BID, 7)
    assert _fields_at_type_max(definition) == SENTINEL_FIELDS["definitions"]
    assert _fields_at_type_max(imbalance) == SENTINEL_FIELDS["imbalance"]
    assert _fields_at_type_max(stat) == SENTINEL_FIELDS["statistics"]
    assert _fields_at_type_max(mbo) == SENTINEL_FIELDS["mbo"]


def test_shipped_transformation_file_reproduces_the_standardized_model() -> None:
    """Same tables, schemas, columns, types, order and NULL sentinels as the reference model."""
    shipped = MODEL.families
    reference = reference_families()
    assert list(shipped) == list(reference)
    for table, family in shipped.items():
        assert family.schemas == reference[table].schemas
        assert family.time_column == reference[table].time_column
        assert family.arrow_schema == reference[table].arrow_schema
        assert [(c.name, c.kind, c.sentinel, c.source) for c in family.columns] == [
            (c.name, c.kind, c.sentinel, c.source) for c in reference[table].columns
        ]
        nullable_integers = {
            c.name for c in family.columns if c.kind is Kind.INTEGER and c.sentinel is not None
        }
        assert nullable_integers == SENTINEL_FIELDS.get(table, set())


def test_every_schema_has_a_family_and_every_family_keeps_databento_field_names() -> None:
    assert set(LAYOUT_OF_SCHEMA) == {s.value for s in dbn.Schema.variants()}
    assert {s for f in MODEL.families.values() for s in f.schemas} == set(LAYOUT_OF_SCHEMA)
    mbp10 = MODEL.families["mbp10"].column_names
    assert mbp10[:2] == ["ts_recv", "ts_event"]
    assert "bid_px_00" in mbp10 and "ask_ct_09" in mbp10 and mbp10[-2:] == ["symbol", "ts_out"]
    for family in MODEL.families.values():
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


def test_the_record_of_each_schema_is_databentos_own_table() -> None:
    """model.RECORD_OF_SCHEMA restates the client's SCHEMA_STRUCT_MAP (to spare its imports)."""
    from databento.common.constants import SCHEMA_STRUCT_MAP

    from marketpipe.model import RECORD_OF_SCHEMA

    assert {schema.value: struct for schema, struct in SCHEMA_STRUCT_MAP.items()} == RECORD_OF_SCHEMA


def test_the_layout_of_each_schema_in_each_dbn_version_is_databentos_own() -> None:
    """model.record_dtype restates the client's per-version tables (SCHEMA_STRUCT_MAP_V1, _V2):
    a v1 or v2 file is read in the layout the client would read it in."""
    from databento.common.constants import SCHEMA_STRUCT_MAP, SCHEMA_STRUCT_MAP_V1, SCHEMA_STRUCT_MAP_V2

    from marketpipe.model import record_dtype

    for version, table in ((1, SCHEMA_STRUCT_MAP_V1), (2, SCHEMA_STRUCT_MAP_V2), (3, SCHEMA_STRUCT_MAP)):
        for schema, struct in table.items():
            assert record_dtype(schema.value, version) == np.dtype(struct._dtypes), (version, schema)
