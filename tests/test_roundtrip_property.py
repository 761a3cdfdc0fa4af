"""Property: random records of every schema, written with databento-dbn, round-trip exactly."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import databento_dbn
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from marketpipe.config import IngestRequest, load_settings
from marketpipe.exporting import export
from marketpipe.model import SCHEMAS, Kind
from marketpipe.pipeline import ingest
from marketpipe.samples import Interval, metadata_bytes, write_dbn
from marketpipe.stores import open_store

from dbn_reference import MODEL, canonical, expected_rows, exported_rows

UNDEF_TS = 2**64 - 1
MAX_TS = 2**63 - 1
MAPPINGS = {
    "AAA": [Interval(dt.date(1970, 1, 1), dt.date(2000, 1, 1), "1")],
    "BBB": [Interval(dt.date(2000, 1, 1), dt.date(2262, 1, 1), "1")],
    "CCC": [Interval(dt.date(1970, 1, 1), dt.date(2262, 1, 1), "2")],
}
ASCII = st.characters(min_codepoint=32, max_codepoint=126)


def _field(schema: str, name: str, dtype: np.dtype, index_ts: str) -> st.SearchStrategy[Any]:
    struct_fields = MODEL.family_of(schema)
    if name == "length":
        return st.just(struct_fields.record_dtype.itemsize // 4)
    if name == "rtype":
        return st.just(int(databento_dbn.RType.from_schema(databento_dbn.Schema(schema)).value))
    if name == "instrument_id":
        return st.sampled_from([1, 2, 3, 2**32 - 1])
    if name.startswith("_"):
        return st.just(b"" if dtype.kind == "S" else 0)
    if dtype.kind == "S":
        return st.text(ASCII, max_size=max(dtype.itemsize - 1, 1)).map(str.encode)
    column = next((c for c in struct_fields.columns if c.name == name), None)
    if column is not None and column.kind is Kind.TIMESTAMP:
        extremes = [0, 1, MAX_TS] + ([] if name in ("ts_event", index_ts) else [UNDEF_TS])
        return st.one_of(st.sampled_from(extremes), st.integers(0, MAX_TS))
    info = np.iinfo(dtype)
    return st.one_of(st.sampled_from([info.min, info.max, 0]), st.integers(int(info.min), int(info.max)))


@st.composite
def records(draw: st.DrawFn, schema: str) -> np.ndarray:
    dtype = MODEL.family_of(schema).record_dtype
    index_ts = "ts_recv" if "ts_recv" in dtype.names else "ts_event"
    fields = {n: _field(schema, n, dtype[n], index_ts) for n in dtype.names}
    rows = draw(st.lists(st.fixed_dictionaries(fields), min_size=0, max_size=25))
    array = np.zeros(len(rows), dtype=dtype)
    for i, row in enumerate(rows):
        for name, value in row.items():
            array[i][name] = value
    return array


def _write_with_databento_dbn(path: Path, schema: str, array: np.ndarray) -> None:
    """Records pass through databento-dbn's decoder and are re-encoded by its record types."""
    metadata = metadata_bytes("GLBX.MDP3", schema, 0, MAX_TS, "raw_symbol", MAPPINGS)
    decoder = databento_dbn.DBNDecoder()
    decoder.write(metadata + array.tobytes())
    decoded = decoder.decode()[1:]
    assert len(decoded) == len(array)
    write_dbn(path, metadata, (bytes(r) for r in decoded))


@pytest.mark.slow
@pytest.mark.parametrize("schema", SCHEMAS)
def test_random_records_round_trip(schema: str) -> None:
    # No shrinking: a failing example is reported as drawn, which keeps CI fast.
    @settings(
        max_examples=10,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    @given(records(schema))
    def check(array: np.ndarray) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"random.{schema}.dbn"
            _write_with_databento_dbn(path, schema, array)
            _, expected = expected_rows(path)
            # Exactness of transform and store is the property: no validation rule filters here.
            (Path(tmp) / "rules.yaml").write_text("rules: []\n")
            cfg = load_settings(
                db=str(Path(tmp) / "s.duckdb"), batch_size=7, validation_file=str(Path(tmp) / "rules.yaml")
            )
            summary = ingest(IngestRequest(from_file=str(path)), cfg)
            assert summary.failed == []
            assert summary.totals().stored == len(array)
            store = open_store(cfg.store, MODEL)
            try:
                export(store, schema, "parquet", Path(tmp) / "o.parquet", [], None, None, 5)
            finally:
                store.close()
            _, rows = exported_rows(Path(tmp) / "o.parquet")
            assert canonical(rows) == canonical(expected)

    check()
