"""Databento's Historical API through the official client (``databento.Historical``).

Before anything billable: the dataset, its schemas and its date range come from the
metadata API, and the symbols are resolved (symbology), so a typo fails for free. The
request is cut into chunks of ``chunk_days`` UTC days x at most 2,000 symbols per schema.
Each chunk streams to a DBN file on disk (never the whole response in memory), is checked
against the record count the metadata API quotes for the same request (the client accepts
a cleanly truncated stream silently), and is then read like any local DBN file.

A download of more than ``PART_RECORDS`` records is stored in parts of that many, each its
own transaction. One download runs ahead: once a chunk's file is complete, the next chunk
streams on a background thread while this one is validated and stored.

Dates: ``start_date`` and ``end_date`` are both inclusive UTC days for the user; the API's
``end`` is exclusive, so a chunk of day D asks for ``[D, D + chunk_days)``.

Calls go through ``ApiCalls`` (``databento_client.py``): one retry policy, errors translated,
messages scrubbed of the key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from marketpipe.components import ApiConfig
from marketpipe.config import IngestRequest
from marketpipe.errors import SourceError, TruncatedStream, UsageError
from marketpipe.parsing import iso_ns
from marketpipe.sources.base import Fetched, Stored
from marketpipe.sources.databento_client import ApiCalls
from marketpipe.sources.dbn_reader import ALL_SYMBOLS, DbnFile
from marketpipe.symbology import NS_PER_DAY, day_ns
from marketpipe.types import (
    PART_RECORDS,
    Chunk,
    Estimate,
    Plan,
    Quote,
    RawBatch,
    Span,
    SymbolInterval,
    record_parts,
)

MAX_SYMBOLS = 2_000  # per request, Databento's limit
log = structlog.get_logger("marketpipe.databento_api")


@dataclass(frozen=True)
class Download:
    """One billable request: a schema, a day range [start, end) and a batch of symbols."""

    schema: str
    start: dt.date
    end: dt.date
    symbols: tuple[str, ...]

    @property
    def file_name(self) -> str:
        return f"{self.schema}_{self.start}_{self.end}_{_digest(self.symbols)}.dbn.zst"


def _digest(symbols: tuple[str, ...]) -> str:
    return hashlib.sha256(",".join(symbols).encode()).hexdigest()[:12]


class DatabentoApiSource:
    PART_RECORDS = PART_RECORDS

    def __init__(self, request: IngestRequest, config: ApiConfig) -> None:
        missing = [
            flag
            for flag, value in (
                ("--dataset", request.dataset),
                ("--schema", request.schemas),
                ("--symbols", request.symbols),
                ("--start-date", request.start_date),
                ("--end-date", request.end_date),
            )
            if not value
        ]
        if missing:
            raise UsageError(
                f"an API download needs {', '.join(missing)} (--symbols {ALL_SYMBOLS} for a whole dataset)"
            )
        self.request = request
        self.config = config  # pickled without the key (ApiConfig): a worker reads its own
        self.dataset: str = request.dataset or ""
        # Relative days were resolved by the pipeline before the source was made.
        self.start: dt.date = _day(request.start_date)
        self.end: dt.date = _day(request.end_date) + dt.timedelta(days=1)  # exclusive
        symbols = list(dict.fromkeys(request.symbols))  # each once, in the user's order
        self._symbol_batches = [
            tuple(symbols[i : i + MAX_SYMBOLS]) for i in range(0, len(symbols), MAX_SYMBOLS)
        ]
        self._connect()
        keep = request.keep_raw
        self._raw_dir = Path(keep) if keep is not None else Path(tempfile.mkdtemp(prefix="marketpipe-"))
        self._keep = keep is not None
        try:
            self._raw_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot keep downloads in {keep}: {exc.strerror or exc}") from None
        self._downloads: dict[str, Download] = {}
        # A part of a download too large for one transaction: part key -> (chunk key, first, count).
        self._slices: dict[str, tuple[str, int, int]] = {}
        self._records: dict[str, int] = {}
        # Requested symbol -> (instrument_id, first day, end day exclusive), from symbology.
        self._resolved: dict[str, list[tuple[int, dt.date, dt.date]]] = {}
        # Per schema, the runs of days to fetch and their symbols (what is stored left out).
        self._wanted: dict[str, list[tuple[dt.date, dt.date, tuple[str, ...]]]] = {}

    # What belongs to one machine's process: never pickled for a cluster worker.
    _LOCAL = ("api", "client", "_ahead", "_pending", "download_slot")

    def _connect(self) -> None:
        """The client with this process's key, and the machinery of downloads."""
        self.api = ApiCalls(self.config, self.dataset)
        self.client = self.api.client
        # One download ahead of the pipeline: the next chunk streams while this one is stored.
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="marketpipe-download")
        self._pending: dict[str, Future[Path]] = {}
        # Held around each download: a cluster shares one limit among all its workers.
        self.download_slot: Callable[[], AbstractContextManager[object]] = nullcontext

    def __getstate__(self) -> dict[str, Any]:
        """The planned source for a cluster worker: what to download, never the key, the
        connections, the download thread or this machine's temporary directory."""
        state = self.__dict__.copy()
        for name in self._LOCAL:
            del state[name]
        if not self._keep:
            del state["_raw_dir"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """On the worker: the client with the key the worker's ``ApiConfig`` read."""
        self.__dict__.update(state)
        self._connect()
        if not self._keep:
            self._raw_dir = Path(tempfile.mkdtemp(prefix="marketpipe-"))

    # Planning: free metadata calls only.
    def plan(self, stored: Stored | None = None) -> Plan:
        """Downloads of what ``stored`` does not hold yet: a (schema, symbol, day) whose
        instruments a whole earlier input covers is not downloaded again, however it was
        requested then (another split, a parent or continuous symbol, a longer list)."""
        self.check_request()
        warnings = self.resolve_symbols()
        notes = self._leave_out(stored)
        if self.request.max_cost is not None:
            cost = sum(q.cost_usd for q in self.quote())
            if cost > self.request.max_cost:
                raise UsageError(
                    f"the plan is quoted at ${cost:,.2f}, above --max-cost ${self.request.max_cost:,.2f}:"
                    " nothing was downloaded"
                )
        plan = Plan(warnings=warnings, notes=notes, symbology=self.symbology())
        for download in self.downloads():
            key = (
                f"api:{self.dataset}:{download.schema}:{self.request.stype_in}:{download.start}:{download.end}"
                f":{_digest(download.symbols)}"
            )
            self._downloads[key] = download
            label = f"{self.dataset} {download.schema} {download.start}" + (
                ""
                if download.end == download.start + dt.timedelta(days=1)
                else f"..{download.end - dt.timedelta(days=1)}"
            )
            if len(download.symbols) < len(self._symbols) or len(self._symbol_batches) > 1:
                label += f" [{download.symbols[0]}..{download.symbols[-1]}]"
            plan.chunks.append(
                Chunk(key, download.schema, label, self.dataset, day_ns(download.start), day_ns(download.end))
            )
        plan.inputs.append(f"{self.dataset} {','.join(self.request.schemas)}")
        return plan

    @property
    def _symbols(self) -> list[str]:
        return [symbol for batch in self._symbol_batches for symbol in batch]

    def _leave_out(self, stored: Stored | None) -> list[str]:
        """What each schema fetches: the requested days (with ``--fill-gaps`` the sessions not
        done) less each symbol's days whose instruments ``stored`` holds whole. The notes say
        what was left out."""
        notes = []
        for schema in self.request.schemas:
            held = None
            if stored is not None:
                held = _Held(stored.covered(self.dataset, schema, day_ns(self.start), day_ns(self.end)))
            left = self._runs(schema, held)
            for symbol, stored_days in left.items():
                span = str(stored_days[0]) + (f"..{stored_days[-1]}" if len(stored_days) > 1 else "")
                notes.append(
                    f"already stored: {self.dataset} {schema} {symbol} {span} ({len(stored_days)} days):"
                    " not downloaded again (--force does)"
                )
        for note in notes:
            log.info("plan.already_stored", note=note)
        return notes

    def _runs(self, schema: str, held: _Held | None) -> dict[str, list[dt.date]]:
        """Runs of consecutive days with the same symbols to fetch, kept for the schema's
        requests; returns the days left out of each symbol because ``held`` has them."""
        runs: list[tuple[dt.date, dt.date, tuple[str, ...]]] = []
        left: dict[str, list[dt.date]] = {}
        for day in self._days(schema):
            missing = []
            for symbol in self._symbols:
                instruments = self._instruments_on(symbol, day)
                if symbol in self._resolved and not instruments:
                    continue  # the symbol stood for nothing that day: nothing to fetch
                if held is not None and held.day(instruments, day):
                    left.setdefault(symbol, []).append(day)
                else:
                    missing.append(symbol)
            if not missing:
                continue
            following = day + dt.timedelta(days=1)
            if runs and runs[-1][1] == day and runs[-1][2] == tuple(missing):
                runs[-1] = (runs[-1][0], following, runs[-1][2])
            else:
                runs.append((day, following, tuple(missing)))
        self._wanted[schema] = runs
        return left

    def _days(self, schema: str) -> list[dt.date]:
        """The days to fetch: the whole range, or with ``--fill-gaps`` the sessions coverage
        found not done."""
        if self.request.gap_days is not None:
            return sorted(d for d in self.request.gap_days.get(schema, []) if self.start <= d < self.end)
        return [self.start + dt.timedelta(days=i) for i in range((self.end - self.start).days)]

    def _instruments_on(self, symbol: str, day: dt.date) -> list[int] | None:
        """The instruments ``symbol`` stood for on ``day`` (None: every instrument, or not
        resolved: only a store that holds every instrument holds it)."""
        if symbol not in self._resolved:
            return None
        return [i for i, first, end in self._resolved.get(symbol, []) if first <= day < end]

    def check_request(self) -> None:
        """Dataset, schemas and dates against the metadata API, before anything is billed."""
        ranges: dict[str, Any] = self.api.call(
            f"dataset range of {self.dataset}", lambda: self.client.metadata.get_dataset_range(self.dataset)
        )
        # The per-schema ranges name the dataset's schemas; list_schemas where they are absent.
        per_schema: dict[str, Any] = ranges.get("schema") or {}
        available = list(per_schema) or self.api.call(
            f"schemas of {self.dataset}", lambda: self.client.metadata.list_schemas(self.dataset)
        )
        unknown = [s for s in self.request.schemas if s not in available]
        if unknown:
            raise UsageError(
                f"schema {unknown[0]} is not available in {self.dataset}; available: {', '.join(available)}"
            )
        for schema in self.request.schemas:
            window = per_schema.get(schema) or ranges
            # Older API versions named the bounds start_date / end_date.
            first, end = (
                window.get("start", window.get("start_date")),
                window.get("end", window.get("end_date")),
            )
            try:
                first_ns, end_ns = iso_ns(str(first)), iso_ns(str(end))
            except ValueError:
                log.warning(
                    "dataset.range_unreadable", dataset=self.dataset, schema=schema, answer=str(window)
                )
                continue
            if day_ns(self.start) < first_ns or day_ns(self.end) > end_ns:
                raise UsageError(
                    f"{self.dataset} {schema} is available from {first} to {end}"
                    f" (end exclusive); requested {self.start} to {self.end - dt.timedelta(days=1)}"
                )

    def resolve_symbols(self) -> list[str]:
        """Symbols not found fail the plan; symbols found for part of the range are reported.
        What each symbol stood for, and when, is kept for planning and the symbology table."""
        if list(self.request.symbols) == [ALL_SYMBOLS]:
            return []
        not_found: list[str] = []
        partly: list[str] = []
        for result in self._resolve("symbology", self._symbols, self.request.stype_in, "instrument_id"):
            not_found += result.get("not_found", [])
            partly += result.get("partial", [])
            for symbol, intervals in (result.get("result") or {}).items():
                self._resolved[str(symbol)] = [
                    (int(i["s"]), _date(i["d0"]), _date(i["d1"]))
                    for i in intervals
                    if str(i.get("s", "")).isdigit()
                ]
        if not_found:
            raise UsageError(
                f"symbols not found in {self.dataset} ({self.request.stype_in}) from {self.start} to"
                f" {self.end - dt.timedelta(days=1)}: {', '.join(not_found)}"
            )
        if partly:
            message = f"symbols found for only part of the range: {', '.join(partly)}"
            log.warning("symbols.partial", symbols=partly)
            return [message]
        return []

    def symbology(self) -> list[SymbolInterval]:
        """What the requested symbols stood for (Databento's point-in-time symbology), and
        the contracts' own raw symbols (the ``instrument_id`` -> ``raw_symbol`` combination)."""
        found = [
            SymbolInterval(self.dataset, self.request.stype_in, symbol, i, day_ns(first), day_ns(end))
            for symbol, intervals in self._resolved.items()
            for i, first, end in intervals
        ]
        ids = sorted({str(i) for intervals in self._resolved.values() for i, _, _ in intervals}, key=int)
        if self.request.stype_in == "raw_symbol" or not ids:
            return found
        for result in self._resolve("raw symbols", ids, "instrument_id", "raw_symbol"):
            for instrument_id, intervals in (result.get("result") or {}).items():
                found.extend(
                    SymbolInterval(
                        self.dataset,
                        "raw_symbol",
                        str(interval["s"]),
                        int(instrument_id),
                        day_ns(_date(interval["d0"])),
                        day_ns(_date(interval["d1"])),
                    )
                    for interval in intervals
                    if interval.get("s")
                )
        return found

    def _resolve(
        self, what: str, symbols: list[str], stype_in: str, stype_out: str
    ) -> Iterator[dict[str, Any]]:
        """symbology.resolve over the plan's range, at most MAX_SYMBOLS symbols a call."""
        for first in range(0, len(symbols), MAX_SYMBOLS):
            resolve = partial(
                self.client.symbology.resolve,
                dataset=self.dataset,
                symbols=symbols[first : first + MAX_SYMBOLS],
                stype_in=stype_in,
                stype_out=stype_out,
                start_date=self.start,
                end_date=self.end,
            )
            result: dict[str, Any] = self.api.call(f"{what} of {self.dataset}", resolve)
            yield result

    def estimate(self, stored: Stored | None = None) -> Estimate:
        """Checks, symbol resolution and the quote of what ``stored`` does not hold: the free
        metadata calls, nothing billed."""
        self.check_request()
        warnings = self.resolve_symbols()
        notes = self._leave_out(stored)
        return Estimate(self.quote(), len(self.downloads()), warnings, notes)

    def quote(self) -> list[Quote]:
        """Records, billable bytes and cost of what the plan downloads, per schema: free
        calls, one per run of consecutive days and symbol batch."""
        quotes = []
        for schema in self.request.schemas:
            records = size = 0
            cost = 0.0
            metadata = self.client.metadata
            for start, end, batch in self._requests(schema, None):
                query = self._request_params(schema, start, end, batch)
                records += int(self.api.call("record count", partial(metadata.get_record_count, **query)))
                size += int(self.api.call("billable size", partial(metadata.get_billable_size, **query)))
                cost += float(self.api.call("cost", partial(metadata.get_cost, **query)))
            quotes.append(Quote(schema, records, size, cost))
        return quotes

    def downloads(self) -> list[Download]:
        """The plan's requests: schema x at most ``chunk_days`` days x at most 2,000 symbols."""
        step = dt.timedelta(days=self.request.chunk_days)
        return [
            Download(schema, start, end, batch)
            for schema in self.request.schemas
            for start, end, batch in self._requests(schema, step)
        ]

    def _requests(
        self, schema: str, step: dt.timedelta | None
    ) -> Iterator[tuple[dt.date, dt.date, tuple[str, ...]]]:
        """[start, end) and symbols of each request: the runs to fetch, cut into ``step``
        days (None: whole runs) and batches of at most ``MAX_SYMBOLS`` symbols."""
        if schema not in self._wanted:
            self._runs(schema, None)
        for start, end, symbols in self._wanted[schema]:
            while start < end:
                following = min(start + step, end) if step is not None else end
                for first in range(0, len(symbols), MAX_SYMBOLS):
                    yield start, following, symbols[first : first + MAX_SYMBOLS]
                start = following

    def _request_params(
        self, schema: str, start: dt.date, end: dt.date, symbols: tuple[str, ...]
    ) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "schema": schema,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "symbols": list(symbols),
            "stype_in": self.request.stype_in,
        }

    # Downloading: the billable part.
    def fetch(self, chunks: Iterable[Chunk]) -> Iterator[Fetched]:
        """Once a chunk's download is at hand, the next wanted chunk downloads while the caller
        stores this one (after, not during, this one's download: requests stay in plan order)."""
        upcoming = iter(chunks)
        chunk = next(upcoming, None)
        while chunk is not None:
            try:
                fetched = self._fetched(chunk)
            except SourceError as exc:
                fetched = Fetched(chunk, [], str(exc))
            following = next(upcoming, None)
            if following is not None and following.key not in self._pending:
                self._pending[following.key] = self._ahead.submit(self._fetch, following)
            yield fetched
            chunk = following

    def _fetched(self, chunk: Chunk) -> Fetched:
        """Downloads the chunk, which covers what its response's metadata says; more than
        ``PART_RECORDS`` records become parts of that many."""
        path = self._download(chunk)
        dbn = DbnFile(path)
        records = self._records.get(chunk.key)
        if records is None:  # kept from an earlier run (--keep-raw): count it again
            records = self._records[chunk.key] = dbn.inspect().total
        chunk = replace(chunk, coverage=dbn.coverage())
        slices = record_parts(records, self.PART_RECORDS)
        if len(slices) == 1:
            return Fetched(chunk, [chunk])
        parts = []
        for first, count in slices:
            key = f"{chunk.key}:{first}+{self.PART_RECORDS}"
            self._slices[key] = (chunk.key, first, count)
            label = f"{chunk.label} [records {first:,}-{first + count - 1:,}]"
            parts.append(
                replace(
                    chunk, key=key, label=label, first_record=first, record_count=count, input_key=chunk.key
                )
            )
        return Fetched(chunk, parts)

    def read(self, chunk: Chunk, batch_size: int) -> Iterator[RawBatch]:
        key, first, count = self._slices.get(chunk.key, (chunk.key, 0, None))
        dbn = DbnFile(self._download(replace(chunk, key=key)))
        if dbn.schema != chunk.schema:
            raise SourceError(f"{chunk.label}: the API sent {dbn.schema} records, not {chunk.schema}")
        return dbn.batches(chunk.schema, batch_size, first, count)

    def finish(self, chunk: Chunk, committed: bool) -> None:
        """A stored chunk's download is no longer needed, unless kept as the user's archive."""
        download = self._downloads.get(chunk.key)
        if committed and download is not None and not self._keep:
            (self._raw_dir / download.file_name).unlink(missing_ok=True)

    def close(self) -> None:
        """A download in flight is finished (it cannot be aborted), then the temporary files go."""
        self._ahead.shutdown(wait=True, cancel_futures=True)
        if not self._keep:
            shutil.rmtree(self._raw_dir, ignore_errors=True)

    def _download(self, chunk: Chunk) -> Path:
        """The chunk's DBN file: from the download ahead when there is one (its error is raised here)."""
        pending = self._pending.pop(chunk.key, None)
        return pending.result() if pending is not None else self._fetch(chunk)

    def _fetch(self, chunk: Chunk) -> Path:
        """The chunk's DBN file, complete: re-used within the run once it has been checked."""
        request = self._downloads[chunk.key]
        path = self._raw_dir / request.file_name
        if path.exists():
            return path
        unfinished = path.with_name(path.name + ".part")
        query = self._request_params(request.schema, request.start, request.end, request.symbols)
        expected: list[int] = []  # the quoted count, asked once: it does not change between attempts

        def download() -> None:
            unfinished.unlink(missing_ok=True)  # the client refuses to overwrite a file
            self.client.timeseries.get_range(**query, stype_out="instrument_id", path=unfinished)

        def count() -> int:
            return int(self.client.metadata.get_record_count(**query))

        started = time.perf_counter()
        # Each call retries its own transport faults; a complete-looking but short download
        # (the client accepts a cleanly cut stream) is downloaded again.
        for attempt in self.api.policy(f"download {chunk.label}", TruncatedStream):
            with attempt:
                with self.download_slot():
                    self.api.call(f"download {chunk.label}", download)
                expected = expected or [self.api.call(f"record count of {chunk.label}", count)]
                try:
                    got = DbnFile(unfinished).inspect().total
                except SourceError as exc:
                    raise TruncatedStream(f"truncated stream: {exc}") from None
                if got != expected[0]:
                    raise TruncatedStream(f"truncated stream: {got:,} of {expected[0]:,} records")
        unfinished.rename(path)
        self._records[chunk.key] = expected[0]
        log.info(
            "chunk.downloaded",
            chunk=chunk.label,
            bytes=path.stat().st_size,
            records=expected[0],
            seconds=round(time.perf_counter() - started, 6),
            thread=threading.current_thread().name,
        )
        return path


class _Held:
    """Spans of whole inputs, asked per instrument and day."""

    def __init__(self, spans: list[Span]) -> None:
        self._spans: dict[int | None, list[tuple[int, int]]] = {}
        for instrument, start, end in spans:
            self._spans.setdefault(instrument, []).append((start, end))

    def day(self, instruments: list[int] | None, day: dt.date) -> bool:
        """Every one of ``instruments`` (None: every instrument) is held for all of ``day``."""
        start = day_ns(day)
        end = start + NS_PER_DAY

        def whole(spans: list[tuple[int, int]]) -> bool:
            return any(s <= start and end <= e for s, e in spans)

        if whole(self._spans.get(None, [])):
            return True
        return instruments is not None and all(whole(self._spans.get(i, [])) for i in instruments)


def _date(value: object) -> dt.date:
    return dt.date.fromisoformat(str(value)[:10])


def _day(value: dt.date | str | None) -> dt.date:
    if not isinstance(value, dt.date):
        raise TypeError(f"unresolved day {value!r}: resolve relative days before making the source")
    return value
