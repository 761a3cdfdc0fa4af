"""Stored records back in Python: exact by default, streamed in bounded batches.

Timestamps come as ``timestamp[ns, tz=UTC]`` and prices, as Databento's client names it
(``price_type``), as ``"decimal"`` (``decimal128(19, 9)``, exact; the default), ``"float"``
(float64) or ``"fixed"`` (int64 units of 1e-9, DBN's own encoding); undefined values are
NULL in every form. ``start`` is inclusive and ``end`` exclusive, as in Databento's API.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal, get_args

import pyarrow as pa

from marketpipe.config import load_settings
from marketpipe.errors import UsageError
from marketpipe.model import PRICE_SCALE, RECORD_OF_SCHEMA, Family, Kind, check_schema
from marketpipe.parsing import TimeBound, time_ns
from marketpipe.rules.transformation import load_model
from marketpipe.stores import open_store
from marketpipe.stores.base import ExportQuery, Store, instrument_ranges

if TYPE_CHECKING:
    import pandas
    import polars

PriceType = Literal["decimal", "float", "fixed"]
BATCH_ROWS = 65_536


def _priced(batch: pa.RecordBatch, family: Family, price_type: PriceType) -> pa.RecordBatch:
    if price_type == "decimal":
        return batch
    import pyarrow.compute as pc  # read-only commands that never convert prices skip its import

    prices = {c.name for c in family.columns if c.kind is Kind.PRICE}
    columns = []
    for column, name in zip(batch.columns, batch.schema.names, strict=True):
        if name in prices:
            # The integer DBN stored, by exact decimal arithmetic: 18 integer digits hold any
            # int64 price, and times a 10-digit factor it still fits Arrow's 38.
            wide = column.cast(pa.decimal128(27, PRICE_SCALE))
            column = pc.multiply(wide, pa.scalar(10**PRICE_SCALE, pa.decimal128(10, 0))).cast(pa.int64())
            if price_type == "float":  # the nearest double (Arrow's decimal cast is not rounded so)
                column = pc.divide(column.cast(pa.float64()), float(10**PRICE_SCALE))
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


class Reader:
    """A store opened for reading; close it (or use ``with``) when done."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> Reader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    def batches(
        self,
        schema: str,
        symbols: Sequence[str] | str | None = None,
        start: TimeBound = None,
        end: TimeBound = None,
        columns: Sequence[str] | None = None,
        price_type: PriceType = "decimal",
        batch_size: int = BATCH_ROWS,
    ) -> Iterator[pa.RecordBatch]:
        """Stored records of one schema as Arrow record batches, in index-time order.

        Memory stays bounded by ``batch_size`` rows, so any range can be read.

        Parameters
        ----------
        schema : str
            A Databento schema, e.g. ``"trades"``, ``"ohlcv-1d"``, ``"mbp-10"``.
        symbols : str or sequence of str, optional
            Only these symbols; None or empty: every symbol. A contract's raw symbol
            (``"ESH4"``) also finds its rows stored under a parent or continuous symbol.
        start : datetime, date, str or int, optional
            Inclusive lower bound of the index time (``ts_recv``, ``ts_event`` for OHLCV):
            a datetime (naive is UTC), a date (its 00:00 UTC), an ISO string
            (``"2024-01-02"``, ``"2024-01-02T14:30:00.123456789Z"``) or ns since the epoch.
        end : datetime, date, str or int, optional
            Exclusive upper bound, in the same forms (as Databento's own ``end``).
        columns : sequence of str, optional
            These columns, in this order; None: all of the table's.
        price_type : {"decimal", "float", "fixed"}
            Prices as exact ``decimal128(19, 9)`` (default), float64, or int64 units of 1e-9.
        batch_size : int
            Rows per batch at most (default 65,536).

        Yields
        ------
        pyarrow.RecordBatch
            Timestamps ``timestamp[ns, tz=UTC]``; undefined values NULL.

        Raises
        ------
        UsageError
            An unknown schema, column, price type, or a bound that is not a time.
        """
        check_schema(schema)
        family = self.store.model.family_of(schema)
        if price_type not in get_args(PriceType):
            raise UsageError(f"price_type {price_type!r}: expected one of {', '.join(get_args(PriceType))}")
        wanted = list(columns) if columns is not None else family.column_names
        unknown = [c for c in wanted if c not in family.column_names]
        if unknown:
            raise UsageError(
                f"{family.table} has no column {unknown[0]!r}; columns: {', '.join(family.column_names)}"
            )
        wanted_symbols = [symbols] if isinstance(symbols, str) else list(symbols or ())
        query = ExportQuery(
            family,
            schema,
            wanted_symbols,
            time_ns(start, "start"),
            time_ns(end, "end"),
            # A contract's raw symbol finds its rows whatever symbol they were stored under.
            instrument_ranges(self.store.data, wanted_symbols),
        )
        for batch in self.store.export(query, batch_size):
            yield _priced(batch.select(wanted), family, price_type)

    def schema(
        self, schema: str, columns: Sequence[str] | None = None, price_type: PriceType = "decimal"
    ) -> pa.Schema:
        """The Arrow schema ``read`` returns for these arguments (also when no row matches)."""
        family = self.store.model.family_of(schema)
        empty = pa.RecordBatch.from_pylist([], family.arrow_schema)
        wanted = list(columns) if columns is not None else family.column_names
        return _priced(empty.select(wanted), family, price_type).schema

    def read(
        self,
        schema: str,
        symbols: Sequence[str] | str | None = None,
        start: TimeBound = None,
        end: TimeBound = None,
        columns: Sequence[str] | None = None,
        price_type: PriceType = "decimal",
    ) -> pa.Table:
        """Stored records of one schema as one Arrow table, in index-time order.

        The parameters are ``batches``' (``start`` inclusive, ``end`` exclusive; ``symbols``
        None for all); the whole result is held in memory: ``batches`` streams a range larger
        than memory. No matching row gives an empty table of the same schema.
        """
        batches = list(self.batches(schema, symbols, start, end, columns, price_type))
        return pa.Table.from_batches(batches, schema=self.schema(schema, columns, price_type))

    def to_pandas(
        self,
        schema: str,
        symbols: Sequence[str] | str | None = None,
        start: TimeBound = None,
        end: TimeBound = None,
        columns: Sequence[str] | None = None,
        price_type: PriceType = "decimal",
        like_dbn_store: bool = False,
    ) -> pandas.DataFrame:
        """``read`` as a pandas DataFrame: timestamps ``datetime64[ns, UTC]``; exact decimal
        prices Arrow-backed (``pd.ArrowDtype(decimal128(19, 9))``: vectorized, not Python
        ``Decimal`` objects), float64 with ``price_type="float"``, int64 with ``"fixed"``.

        ``like_dbn_store``: shaped as the Databento client's ``DBNStore.to_df()``: indexed by
        the index timestamp (``ts_recv`` where the schema has it, else ``ts_event``), the
        record's fields in DBN order, then ``symbol``, then marketpipe's own columns
        (``ts_out``, ``chunk_id``, ...). The one difference left: prices stay exact decimals
        unless ``price_type="float"`` is asked for (the client's default is float).
        """
        import pandas as pd

        table = self.read(schema, symbols, start, end, columns, price_type)
        frame = table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_decimal(t) else None)
        if not like_dbn_store:
            return frame
        family = self.store.model.family_of(schema)
        index = family.time_column if family.time_column in frame.columns else None
        record = [f for f in RECORD_OF_SCHEMA[schema]._ordered_fields if f in frame.columns and f != index]  # type: ignore[attr-defined]
        named = ["symbol"] if "symbol" in frame.columns else []
        rest = [c for c in frame.columns if c not in (*record, *named, index)]
        frame = frame[[*([index] if index else []), *record, *named, *rest]]
        return frame.set_index(index) if index else frame

    def to_polars(
        self,
        schema: str,
        symbols: Sequence[str] | str | None = None,
        start: TimeBound = None,
        end: TimeBound = None,
        columns: Sequence[str] | None = None,
        price_type: PriceType = "decimal",
    ) -> polars.DataFrame:
        """``read`` as a Polars DataFrame (``pip install 'marketpipe[polars]'``)."""
        try:
            import polars
        except ImportError:
            raise UsageError("to_polars needs Polars: pip install 'marketpipe[polars]'") from None
        frame = polars.from_arrow(self.read(schema, symbols, start, end, columns, price_type))
        assert isinstance(frame, polars.DataFrame)
        return frame


def open_reader(db: str | None = None, ledger: str | None = None, pg_schema: str | None = None) -> Reader:
    """``ledger``: a lake's, where it is not the default one in the lake's directory."""
    settings = load_settings(db=db, ledger=ledger, pg_schema=pg_schema)
    return Reader(open_store(settings.store, load_model(settings.transformation_file), read_only=True))
