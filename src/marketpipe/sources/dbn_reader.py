"""Reading DBN streams (files or downloaded API chunks) as bounded numpy batches.

The hot path never builds a Python object per record: the decompressed stream is read in
blocks of ``batch_size`` records and viewed as the DBN v3 numpy layout. Only the two record
layouts that changed between DBN versions (instrument definitions in v2 and v3, statistics
in v3) are upgraded record by record through databento-dbn's own upgrade, which keeps them
exactly as Databento defines the upgrade; they are low-volume schemas.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import databento_dbn
import numpy as np
import zstandard
from databento import DBNStore
from databento.common.constants import (
    SCHEMA_STRUCT_MAP,
    SCHEMA_STRUCT_MAP_V1,
    SCHEMA_STRUCT_MAP_V2,
)
from databento.common.error import BentoError
from databento_dbn import DBNDecoder, Schema, VersionUpgradePolicy

from marketpipe.errors import SourceError
from marketpipe.model import Family, family_of
from marketpipe.sources.base import RawBatch
from marketpipe.symbology import SymbolMap

_STRUCTS_BY_VERSION = {1: SCHEMA_STRUCT_MAP_V1, 2: SCHEMA_STRUCT_MAP_V2, 3: SCHEMA_STRUCT_MAP}
_HEADER = struct.Struct("<3sBI")  # b"DBN", version, metadata length
_INSPECT_RECORDS = 65_536


@dataclass(frozen=True)
class Inspection:
    digest: str
    records: int


def _plain(value: object) -> str | None:
    """databento-dbn enums (Schema, SType) as their Databento names."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


class DbnFile:
    """One DBN file opened and checked: metadata read, schema and version known."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.stat().st_size == 0:
            raise SourceError(f"{path}: empty file")
        try:
            self._store = DBNStore.from_file(path)
        except BentoError as exc:
            raise SourceError(f"{path}: not DBN data (neither a DBN nor a zstd header)") from exc
        except databento_dbn.DBNError as exc:
            raise SourceError(
                f"{path}: no readable DBN metadata (legacy DBZ, a fragment, truncated or corrupt): {exc}"
            ) from exc
        except ValueError as exc:
            raise SourceError(f"{path}: {exc}") from exc
        except (OSError, zstandard.ZstdError) as exc:
            raise SourceError(f"{path}: cannot be read: {exc}") from exc
        meta = self._store.metadata
        self.version = int(meta.version)
        if self.version not in _STRUCTS_BY_VERSION:
            raise SourceError(f"{path}: DBN version {self.version} is not supported")
        schema = _plain(meta.schema)
        if schema is None:
            raise SourceError(f"{path}: mixed-schema DBN (live data) is not supported")
        self.schema: str = schema
        self.family: Family = family_of(schema)
        if meta.ts_out:
            raise SourceError(f"{path}: records with ts_out (live data) are not supported")
        self.dataset: str | None = meta.dataset
        self.start_ns: int = int(meta.start)
        self.end_ns: int | None = None if meta.end is None else int(meta.end)
        self.symbol_map = SymbolMap(meta.mappings, _plain(meta.stype_in), _plain(meta.stype_out))
        # The layout records have in this file's DBN version; read as is when it is v3's.
        self._native = np.dtype(_STRUCTS_BY_VERSION[self.version][Schema(schema)]._dtypes)
        self._upgrade = self._native != self.family.record_dtype

    def batches(self, batch_size: int, first: int = 0, count: int | None = None) -> Iterator[RawBatch]:
        """Records ``first`` .. ``first + count`` in DBN v3 layout, ``batch_size`` at most per batch."""
        blocks = self._upgraded if self._upgrade else self._viewed
        time_field = "ts_recv" if "ts_recv" in (self.family.record_dtype.names or ()) else "ts_event"
        for records in blocks(batch_size, first, count):
            self._check_lengths(records)
            symbols = self.symbol_map.resolve(records["instrument_id"], records[time_field])
            yield RawBatch(records, symbols)

    def inspect(self) -> Inspection:
        """One pass over the decompressed data: its identity, its record count, its structure.

        A file that is truncated or misaligned fails here, before anything of it is written.
        The digest identifies the data, not the file: a .dbn and its .dbn.zst are the same.
        """
        digest = hashlib.sha256()
        records = 0
        with self._checked_stream() as reader:
            digest.update(self._skip_metadata(reader))
            while block := self._read(reader, _INSPECT_RECORDS * self._native.itemsize):
                digest.update(block)
                if len(block) % self._native.itemsize:
                    raise SourceError(f"{self.path}: truncated: the file ends inside a record")
                view = np.frombuffer(block, dtype=self._native)
                self._check_lengths(view)
                records += len(view)
        return Inspection(digest.hexdigest()[:32], records)

    def _stream(self) -> IO[bytes]:
        """The decompressed stream from byte 0; closing it closes the file (one pass per open)."""
        return self._store.reader

    def _checked_stream(self) -> IO[bytes]:
        """As ``_stream``, but a zstd file that ends inside a frame is an error, not the end.

        python-zstandard's stream reader ends quietly at a cut frame, so a truncated .dbn.zst
        would read as fewer records: when the cut falls on a record boundary, nothing else tells.
        """
        with self.path.open("rb") as raw:
            compressed = raw.read(4) == zstandard.FRAME_HEADER
        return cast(IO[bytes], _CheckedZstd(self.path)) if compressed else self.path.open("rb")

    def _skip_metadata(self, reader: IO[bytes]) -> bytes:
        header = self._read(reader, _HEADER.size)
        if len(header) < _HEADER.size:
            raise SourceError(f"{self.path}: truncated: no complete DBN header")
        _, _, metadata_length = _HEADER.unpack(header)
        return header + self._read(reader, metadata_length)

    def _viewed(self, batch_size: int, first: int, count: int | None) -> Iterator[np.ndarray]:
        dtype = self.family.record_dtype
        remaining = count
        with self._stream() as reader:
            self._skip_metadata(reader)
            skip = first * dtype.itemsize
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

    def _upgraded(self, batch_size: int, first: int, count: int | None) -> Iterator[np.ndarray]:
        dtype = self.family.record_dtype
        decoder = DBNDecoder(upgrade_policy=VersionUpgradePolicy.UPGRADE_TO_V3)
        last = None if count is None else first + count
        seen = 0
        pending: list[bytes] = []
        with self._stream() as reader:
            while data := self._read(reader, 1 << 20):
                for record in decoder.write_and_decode(data):
                    if isinstance(record, databento_dbn.Metadata):
                        continue
                    if first <= seen and (last is None or seen < last):
                        pending.append(bytes(record))
                    seen += 1
                while len(pending) >= batch_size:
                    yield np.frombuffer(b"".join(pending[:batch_size]), dtype=dtype)
                    del pending[:batch_size]
        if decoder.buffer():
            raise SourceError(f"{self.path}: truncated: the file ends inside a record")
        if pending:
            yield np.frombuffer(b"".join(pending), dtype=dtype)

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


class _CheckedZstd(io.RawIOBase):
    """The decompressed bytes of a zstd file, frame after frame; a cut frame raises ZstdError."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._output = bytearray()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._output) < size:
            data = self._file.read(1 << 20)
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
