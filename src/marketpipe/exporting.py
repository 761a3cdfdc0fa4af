"""Stored records back out as Parquet or CSV, exactly as the standardized model holds them.

Parquet keeps nanosecond UTC timestamps (``timestamp[ns, tz=UTC]``) and prices as
``decimal128(19, 9)``; CSV writes the same values as text (ISO-8601 with nine fractional
digits, decimals with nine places). The file appears only once complete.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from marketpipe.errors import UsageError
from marketpipe.reading import Reader
from marketpipe.stores.base import Store

FORMATS = ("parquet", "csv")
_NAME_MAX = 255  # bytes in one path component on Linux file systems


def _writer(fmt: str) -> type[Any]:
    """Arrow's writer of a format, imported only by a command that writes one."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetWriter
    import pyarrow.csv as pacsv

    return pacsv.CSVWriter


def check_output(out: Path, overwrite: bool, protected: list[Path]) -> None:
    """Refuse an output that would destroy something: the store's own files always, anything
    that is not a regular file always, an existing file unless ``overwrite``."""
    if not out.name or out.name in (".", ".."):
        raise UsageError(f"--out {str(out)!r} names no file")
    if len(os.fsencode(out.name)) > _NAME_MAX:
        raise UsageError(f"--out: the file name is longer than {_NAME_MAX} bytes")
    for path in protected:
        if path.exists() and out.exists() and out.resolve() == path.resolve():
            raise UsageError(f"--out {out} is the store's own file {path}: export elsewhere")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_file():
        raise UsageError(f"--out {out} exists and is not a regular file (a directory, device or link)")
    if not overwrite:
        raise UsageError(f"--out {out} exists: give --overwrite to replace it")


def write_file(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, fmt: str, out: Path, empty: bool = True
) -> int:
    """Rows written to ``out``, which appears only once complete; with ``empty`` False, only
    if it holds a row (``out`` as it was otherwise)."""
    partial = out.with_name(out.name + ".partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = 0
        with _writer(fmt)(partial, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
        if rows or empty:
            os.replace(partial, out)
        else:
            partial.unlink()
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return rows


def as_text(batch: pa.RecordBatch) -> list[dict[str, object]]:
    """Rows for JSON or a terminal, exact: timestamps (with their nanoseconds) and decimals as
    text, integers as integers (JSON's own numbers hold them whole), NULL as None."""
    columns = [
        c.cast(pa.string()) if pa.types.is_timestamp(c.type) or pa.types.is_decimal(c.type) else c
        for c in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names).to_pylist()


def export(
    store: Store,
    schema: str,
    fmt: str,
    out: Path,
    symbols: list[str],
    start_date: dt.date | None,
    end_date: dt.date | None,
    batch_size: int,
    empty: bool = True,
) -> int:
    """Rows written; ``end_date`` is inclusive. Read as ``marketpipe.open(...).batches`` reads.
    No row matched: an empty file of the schema, or with ``empty`` False none (0 either way)."""
    reader = Reader(store)
    batches = reader.batches(
        schema,
        symbols,
        start_date,
        None if end_date is None else end_date + dt.timedelta(days=1),
        batch_size=batch_size,
    )
    return write_file(batches, reader.schema(schema), fmt, out, empty)
