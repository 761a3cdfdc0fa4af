"""Reading DBN streams (files or downloaded API chunks) as bounded numpy batches.

The hot path never builds a Python object per record: the decompressed stream is read in
blocks of ``batch_size`` records and viewed as the DBN v3 numpy layout. Two kinds of data are
decoded record by record through databento-dbn instead: the two record layouts that changed
between DBN versions (instrument definitions in v2 and v3, statistics in v3), upgraded exactly
as Databento defines the upgrade (low-volume schemas), and recordings of the Live API (no
single schema, symbol mappings in the stream, ``ts_out`` after each record).

A file is identified by its records as upgraded to DBN v3 and the symbols they map to, not by
its bytes: the same data as DBN v1, v2 or v3, plain or zstd, is the same data.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any, cast

import databento_dbn
import numpy as np
import pyarrow as pa
import zstandard
from databento_dbn import DBNDecoder, Metadata, RType, Schema, VersionUpgradePolicy

from marketpipe.errors import SourceError
from marketpipe.model import DBN_VERSIONS, LAYOUT_OF_SCHEMA, check_schema, record_dtype
from marketpipe.symbology import NS_PER_DAY, SymbolMap
from marketpipe.types import Coverage, RawBatch, SymbolInterval

_HEADER = struct.Struct("<3sBI")  # b"DBN", version, metadata length
_SKIPPABLE_FRAME = re.compile(rb"[\x50-\x5f]\x2a\x4d\x18")  # zstd's magic 0x184D2A5?, little-endian
_INSPECT_RECORDS = 65_536
# Record types of the Live API's control messages: not market data.
_SYMBOL_MAPPING = int(RType.SYMBOL_MAPPING.value)
_SYSTEM = int(RType.SYSTEM.value)
_ERROR = int(RType.ERROR.value)
_MESSAGES_KEPT = 5
ALL_SYMBOLS = "ALL_SYMBOLS"  # a request's symbols for every instrument of the dataset
# Real metadata is kilobytes to a few megabytes (a year of 2,000 symbols' daily mappings is
# about 60 MB); a larger declared length is a corrupt header or a decompression bomb, which
# databento would read into memory whole.
MAX_METADATA_BYTES = 256 * 2**20


def _schema_by_rtype() -> dict[int, str]:
    """The schema of a live record by its rtype. TBBO records carry MBP-1's rtype, so in a
    stream of several schemas they are indistinguishable from MBP-1 and count as mbp-1."""
    found: dict[int, str] = {}
    for schema in Schema.variants():
        found.setdefault(int(RType.from_schema(schema).value), str(schema.value))
    found[int(RType.MBP_1.value)] = "mbp-1"
    return found


_SCHEMA_BY_RTYPE = _schema_by_rtype()


@dataclass
class Inspection:
    digest: str
    records: dict[str, int]  # by schema
    # Live recordings: the gateway's system and error messages (counted; the first few kept).
    system: int = 0
    errors: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.records.values())


def _plain(value: object) -> str | None:
    """databento-dbn enums (Schema, SType) as their Databento names."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _time_field(dtype: np.dtype) -> str:
    """Databento's index timestamp, which symbols are mapped by: ts_recv, else ts_event."""
    return "ts_recv" if "ts_recv" in (dtype.names or ()) else "ts_event"


class DbnFile:
    """One DBN file opened and checked: metadata read, schema and version known."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.stat().st_size == 0:
            raise SourceError(f"{path}: empty file")
        meta = self._metadata()
        self.version = int(meta.version)
        if self.version not in DBN_VERSIONS:
            raise SourceError(f"{path}: DBN version {self.version} is not supported")
        self.schema: str | None = _plain(meta.schema)
        self.dataset = str(meta.dataset or "")
        self.ts_out = bool(meta.ts_out)
        # Live recordings (several schemas, or ts_out after each record) are decoded record by record.
        self.live = self.schema is None or self.ts_out
        # The request's range of the index timestamp, [start, end): every record lies inside it.
        self.start_ns: int = int(meta.start)
        self.end_ns: int | None = None if meta.end is None else int(meta.end)
        self.stype_in = _plain(meta.stype_in)
        self._all_symbols = ALL_SYMBOLS in (meta.symbols or [])
        self._limit = int(meta.limit or 0)
        try:
            self.symbol_map = SymbolMap(meta.mappings, _plain(meta.stype_in), _plain(meta.stype_out))
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"{path}: corrupt symbol mappings in the metadata: {exc}") from None
        self._decode = self.live
        # The rtype of the metadata's schema: its records keep that schema (TBBO stays TBBO).
        self._own_rtype: int | None = None
        if self.schema is not None:
            check_schema(self.schema)
            self._own_rtype = int(RType.from_schema(Schema(self.schema)).value)
            # The layout records have in this file's DBN version; read as is when it is v3's.
            self._native = record_dtype(self.schema, self.version)
            self._decode = self.live or self._native != LAYOUT_OF_SCHEMA[self.schema].dtype

    def coverage(self) -> Coverage:
        """What the file holds every record of. Databento's historical response for (dataset,
        schema, symbols, [start, end)) holds every record of the instruments its symbols map
        to, each over its mapping intervals (``Metadata.mappings``, ``start_date`` inclusive,
        ``end_date`` exclusive, clipped to the request), or of every instrument for
        ``ALL_SYMBOLS``. A live recording (no end, several schemas, ``ts_out``) and a file
        cut by a ``limit`` are not complete: they cover their own records only."""
        stype = self.symbol_map.stype or ""
        symbology = tuple(
            SymbolInterval(self.dataset, stype, symbol, instrument_id, first * NS_PER_DAY, last * NS_PER_DAY)
            for instrument_id, first, last, symbol in self.symbol_map.intervals
        )
        if self.live or self.end_ns is None or self._limit:
            return Coverage(self.dataset, (), complete=False, symbology=symbology)
        start, end = self.start_ns, self.end_ns
        if self._all_symbols:
            return Coverage(self.dataset, ((None, start, end),), symbology=symbology)
        spans = set()
        for instrument_id, first, last, _ in self.symbol_map.intervals:
            low, high = max(start, first * NS_PER_DAY), min(end, last * NS_PER_DAY)
            if low < high:
                spans.add((instrument_id, low, high))
        # Mappings that name no instrument (a file made without them): its own records only.
        return Coverage(self.dataset, tuple(sorted(spans)), complete=bool(spans), symbology=symbology)

    def _metadata(self) -> Metadata:
        """The header and the metadata it declares, decoded by databento-dbn as the file has
        them (not through the databento client, whose import costs an eighth of a second)."""
        unreadable = f"{self.path}: no readable DBN metadata (legacy DBZ, a fragment, truncated or corrupt)"
        try:
            stream = self._checked_stream()
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot be read: {exc}") from exc
        with stream as reader:
            header = self._read(reader, _HEADER.size)
            if header[:3] == b"DBN" and len(header) == _HEADER.size:
                length = _HEADER.unpack(header)[2]
                if length > MAX_METADATA_BYTES:
                    raise SourceError(
                        f"{self.path}: corrupt: the header declares {length:,} bytes of metadata"
                        f" (more than {MAX_METADATA_BYTES:,})"
                    )
                header += self._read(reader, length)
            elif _SKIPPABLE_FRAME.match(header[:4]):
                raise SourceError(f"{unreadable}: it begins with a zstd skippable frame, as DBZ files do")
            elif not isinstance(reader, _CheckedZstd):
                raise SourceError(f"{self.path}: not DBN data (neither a DBN nor a zstd header)")
        try:
            return Metadata.decode(header, upgrade_policy=VersionUpgradePolicy.AS_IS)
        except (databento_dbn.DBNError, ValueError) as exc:
            raise SourceError(f"{unreadable}: {exc}") from exc

    def batches(
        self, schema: str, batch_size: int, first: int = 0, count: int | None = None
    ) -> Iterator[RawBatch]:
        """Records ``first`` .. ``first + count`` of ``schema`` in DBN v3 layout, at most
        ``batch_size`` per batch."""
        if self._decode:
            yield from self._decoded_batches(schema, batch_size, first, count)
            return
        for records in self._viewed(batch_size, first, count):
            self._check_lengths(records)
            symbols = self.symbol_map.resolve(records["instrument_id"], records[_time_field(records.dtype)])
            yield RawBatch(records, symbols)

    def inspect(self, stop: threading.Event | None = None) -> Inspection:
        """One pass over the decompressed data: its identity, its record counts, its structure.

        A file that is truncated or misaligned fails here, before anything of it is written.
        The digest identifies the records (as DBN v3) and the symbols they map to. ``stop``
        set: the pass ends early with a SourceError (its run stopped before planning ended).
        """
        if self._decode:
            return self._inspect_decoded(stop)
        assert self.schema is not None
        digest = self._identity()
        records = 0
        with self._checked_stream() as reader:
            self._skip_metadata(reader)
            while block := self._read(reader, _INSPECT_RECORDS * self._native.itemsize):
                self._check_stop(stop)
                digest.update(block)
                if len(block) % self._native.itemsize:
                    raise SourceError(f"{self.path}: truncated: the file ends inside a record")
                view = np.frombuffer(block, dtype=self._native)
                self._check_lengths(view)
                records += len(view)
        return Inspection(digest.hexdigest()[:32], {self.schema: records})

    def _identity(self) -> Any:
        digest = hashlib.sha256()
        digest.update(f"{self.schema or 'live'}\0".encode())
        digest.update(self.symbol_map.fingerprint)
        return digest

    def _check_stop(self, stop: threading.Event | None) -> None:
        if stop is not None and stop.is_set():
            raise SourceError(f"{self.path}: not inspected: the run stopped")

    def _inspect_decoded(self, stop: threading.Event | None) -> Inspection:
        digest = self._identity()
        inspection = Inspection("", {})
        with self._checked_stream() as reader:
            for record in self._decoded(reader):
                self._check_stop(stop)
                data = bytes(record)
                digest.update(data)
                rtype = data[1]
                if rtype in (_SYSTEM, _ERROR):
                    self._note_message(
                        inspection, self._text(record, "err" if rtype == _ERROR else "msg"), rtype == _ERROR
                    )
                elif rtype != _SYMBOL_MAPPING:
                    schema = self._schema_of(rtype)
                    inspection.records[schema] = inspection.records.get(schema, 0) + 1
        inspection.digest = digest.hexdigest()[:32]
        return inspection

    @staticmethod
    def _note_message(inspection: Inspection, text: str, is_error: bool) -> None:
        inspection.errors += is_error
        inspection.system += not is_error
        if len(inspection.messages) < _MESSAGES_KEPT and (is_error or "heartbeat" not in text.lower()):
            inspection.messages.append(f"{'error' if is_error else 'system'}: {text}")

    def _text(self, record: Any, name: str) -> str:
        """A text field of a decoded record; databento-dbn raises on bytes that are not UTF-8."""
        try:
            return str(getattr(record, name))
        except BaseException as exc:
            raise self._corrupt(exc, f"{name} of a {type(record).__name__} is not UTF-8 text") from None

    def _corrupt(self, exc: BaseException, what: str | None = None) -> SourceError:
        """databento-dbn's refusal of damaged data as this file's error. Its Rust panics reach
        Python as pyo3's PanicException, a BaseException: caught too, nothing else is."""
        if (
            not isinstance(exc, databento_dbn.DBNError | ValueError)
            and type(exc).__name__ != "PanicException"
        ):
            raise exc
        return SourceError(f"{self.path}: corrupt: {what or ' '.join(str(exc).split())}")

    def _schema_of(self, rtype: int) -> str:
        if rtype == self._own_rtype and self.schema is not None:
            return self.schema
        schema = _SCHEMA_BY_RTYPE.get(rtype)
        if schema is None:
            raise SourceError(f"{self.path}: corrupt: record type {rtype} belongs to no Databento schema")
        return schema

    @cached_property
    def _compressed(self) -> bool:
        """Whether the file is zstd (its first frame's magic), read once per file."""
        with self.path.open("rb") as raw:
            return raw.read(4) == zstandard.FRAME_HEADER

    def _stream(self) -> IO[bytes]:
        """The decompressed stream from byte 0; closing it closes the file (one pass per open)."""
        if not self._compressed:
            return self.path.open("rb")
        decompressor = zstandard.ZstdDecompressor()
        return cast(IO[bytes], decompressor.stream_reader(self.path.open("rb"), read_across_frames=True))

    def _checked_stream(self) -> IO[bytes]:
        """As ``_stream``, but a zstd file that ends inside a frame is an error, not the end.

        python-zstandard's stream reader ends quietly at a cut frame, so a truncated .dbn.zst
        would read as fewer records: when the cut falls on a record boundary, nothing else tells.
        """
        return cast(IO[bytes], _CheckedZstd(self.path)) if self._compressed else self.path.open("rb")

    def _skip_metadata(self, reader: IO[bytes]) -> bytes:
        header = self._read(reader, _HEADER.size)
        if len(header) < _HEADER.size:
            raise SourceError(f"{self.path}: truncated: no complete DBN header")
        _, _, metadata_length = _HEADER.unpack(header)
        return header + self._read(reader, metadata_length)

    def _viewed(self, batch_size: int, first: int, count: int | None) -> Iterator[np.ndarray]:
        dtype = self._native
        remaining = count
        with self._stream() as reader:
            self._skip_metadata(reader)
            skip = first * dtype.itemsize
            if skip and reader.seekable():
                # A plain file seeks to the part: reading to skip would cost each part all the
                # parts before it (the 20 parts of a 20M-record file: 9 GB read in all).
                reader.seek(skip, io.SEEK_CUR)
                skip = 0
            while skip > 0 and (part := self._read(reader, min(skip, 1 << 24))):
                skip -= len(part)
            while remaining is None or remaining > 0:
                take = batch_size if remaining is None else min(batch_size, remaining)
                data = self._read(reader, take * dtype.itemsize)
                if not data:
                    return
                if len(data) % dtype.itemsize:
                    raise SourceError(f"{self.path}: truncated: the file ends inside a record")
                block = np.frombuffer(data, dtype=dtype)
                if remaining is not None:
                    remaining -= len(block)
                yield block

    def _decoded(self, reader: IO[bytes]) -> Iterator[Any]:
        """Every record after the metadata, upgraded to DBN v3 by databento-dbn."""
        decoder = DBNDecoder(upgrade_policy=VersionUpgradePolicy.UPGRADE_TO_V3)
        while data := self._read(reader, 1 << 20):
            try:
                records = decoder.write_and_decode(data)
            except BaseException as exc:
                raise self._corrupt(exc) from None
            for record in records:
                if not isinstance(record, databento_dbn.Metadata):
                    yield record
        if decoder.buffer():
            raise SourceError(f"{self.path}: truncated: the file ends inside a record")

    def _decoded_batches(
        self, schema: str, batch_size: int, first: int, count: int | None
    ) -> Iterator[RawBatch]:
        """Records of ``schema`` in stream order. In a live recording a symbol mapping applies
        to the records after it in the stream, as Databento's live clients apply them
        (databento-cpp's PitSymbolMap: instrument_id -> stype_out_symbol), whatever the records'
        own timestamps say; other files map symbols by the metadata's mappings."""
        dtype = LAYOUT_OF_SCHEMA[schema].dtype
        last = None if count is None else first + count
        seen = 0
        current: dict[int, str] = {}
        pending: list[bytes] = []
        symbols: list[str | None] = []
        with self._checked_stream() as reader:
            for record in self._decoded(reader):
                data = bytes(record)
                rtype = data[1]
                if rtype == _SYMBOL_MAPPING:
                    current[record.instrument_id] = self._text(record, "stype_out_symbol")
                    continue
                if rtype in (_SYSTEM, _ERROR) or self._schema_of(rtype) != schema:
                    continue
                if first <= seen and (last is None or seen < last):
                    pending.append(data)
                    symbols.append(current.get(record.instrument_id))
                seen += 1
                if len(pending) == batch_size:
                    yield self._batch(dtype, pending, symbols)
                    pending, symbols = [], []
        if pending:
            yield self._batch(dtype, pending, symbols)

    def _batch(self, dtype: np.dtype, data: list[bytes], symbols: list[str | None]) -> RawBatch:
        width = dtype.itemsize + (8 if self.ts_out else 0)
        raw = np.frombuffer(b"".join(data), dtype=np.uint8).reshape(len(data), width)
        records = raw[:, : dtype.itemsize].copy().view(dtype).reshape(len(data))
        if not self.live:
            symbols_of = self.symbol_map.resolve(records["instrument_id"], records[_time_field(dtype)])
            return RawBatch(records, symbols_of)
        ts_out = None
        if self.ts_out:
            records["length"] = dtype.itemsize // 4  # the record as sent, without DBN's ts_out
            ts_out = np.ascontiguousarray(raw[:, dtype.itemsize :]).view("<u8").reshape(len(data))
        return RawBatch(records, pa.array(symbols, type=pa.string()), ts_out)

    def _read(self, reader: IO[bytes], size: int) -> bytes:
        try:
            return _read_exact(reader, size)
        except (zstandard.ZstdError, OSError) as exc:
            raise SourceError(f"{self.path}: corrupt or truncated compressed data: {exc}") from exc

    def _check_lengths(self, records: np.ndarray) -> None:
        # A record whose length field disagrees with its layout means the stream is
        # misaligned (corrupt or not this schema): nothing after it can be trusted.
        if np.any(records["length"].astype(np.int64) * 4 != records.dtype.itemsize):
            raise SourceError(
                f"{self.path}: corrupt: a record's length does not match the {self.schema} layout"
            )


# Compressed bytes fed to zstd at a time: one zstd block (128 KiB) can be encoded in 4 bytes,
# so this bounds what one step can decompress to about 128 MiB, whatever the file is.
_ZSTD_INPUT = 4096


class _CheckedZstd(io.RawIOBase):
    """The decompressed bytes of a zstd file, frame after frame; a cut frame raises ZstdError.
    Memory stays bounded: input goes in small steps, and reading stops once ``size`` is had."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._output = bytearray()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._output) < size:
            data = self._file.read(_ZSTD_INPUT)
            if not data:
                if not self._frame.eof:
                    raise zstandard.ZstdError("the file ends inside a zstd frame")
                break
            while data:
                if self._frame.eof:  # the next frame of a multi-frame file
                    self._frame = zstandard.ZstdDecompressor().decompressobj()
                self._output += self._frame.decompress(data)
                data = self._frame.unused_data if self._frame.eof else b""
        size = len(self._output) if size < 0 else size
        out = bytes(self._output[:size])
        del self._output[:size]
        return out

    def close(self) -> None:
        self._file.close()
        super().close()


def _read_exact(reader: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at the end of the stream (zstd reads come short)."""
    parts = []
    remaining = size
    while remaining > 0:
        part = reader.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)
