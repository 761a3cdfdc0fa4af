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
import itertools
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

from marketpipe.config import IngestRequest, Settings, load_settings
from marketpipe.errors import SourceError, UsageError
from marketpipe.sources.base import Fetched
from marketpipe.sources.databento_client import ApiCalls, TruncatedStream
from marketpipe.sources.dbn_reader import DbnFile
from marketpipe.symbology import day_ns, iso_ns
from marketpipe.types import PART_RECORDS, Chunk, Estimate, Instrument, Plan, Quote, RawBatch, record_parts

MAX_SYMBOLS = 2_000  # per request, Databento's limit
ALL_SYMBOLS = "ALL_SYMBOLS"
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

    def __init__(self, request: IngestRequest, settings: Settings) -> None:
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
        self.settings = settings
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
        self._instrument_ids: set[str] = set()

    # What belongs to one machine's process: never pickled for a cluster worker.
    _LOCAL = ("api", "client", "_ahead", "_pending", "download_slot")

    def _connect(self) -> None:
        """The client with this process's key, and the machinery of downloads."""
        self.api = ApiCalls(self.settings, self.dataset)
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
        state["settings"] = self.settings.model_copy(update={"databento_api_key": None})
        if not self._keep:
            del state["_raw_dir"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """On the worker: the key from the worker's own environment (or .env)."""
        self.__dict__.update(state)
        key = load_settings().databento_api_key
        self.settings = self.settings.model_copy(update={"databento_api_key": key})
        self._connect()
        if not self._keep:
            self._raw_dir = Path(tempfile.mkdtemp(prefix="marketpipe-"))

    # Planning: free metadata calls only.
    def plan(self) -> Plan:
        self.check_request()
        warnings = self.resolve_symbols()
        if self.request.max_cost is not None:
            cost = sum(q.cost_usd for q in self.quote())
            if cost > self.request.max_cost:
                raise UsageError(
                    f"the plan is quoted at ${cost:,.2f}, above --max-cost ${self.request.max_cost:,.2f}:"
                    " nothing was downloaded"
                )
        plan = Plan(warnings=warnings, instruments=self.instruments())
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
            if len(self._symbol_batches) > 1:
                label += f" [{download.symbols[0]}..{download.symbols[-1]}]"
            plan.chunks.append(
                Chunk(key, download.schema, label, self.dataset, day_ns(download.start), day_ns(download.end))
            )
        plan.inputs.append(f"{self.dataset} {','.join(self.request.schemas)}")
        return plan

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
        The instrument ids they resolve to are kept for ``instruments``."""
        if list(self.request.symbols) == [ALL_SYMBOLS]:
            return []
        not_found: list[str] = []
        partly: list[str] = []
        symbols = [symbol for batch in self._symbol_batches for symbol in batch]
        for result in self._resolve("symbology", symbols, self.request.stype_in, "instrument_id"):
            not_found += result.get("not_found", [])
            partly += result.get("partial", [])
            for intervals in (result.get("result") or {}).values():
                self._instrument_ids.update(str(i["s"]) for i in intervals if str(i.get("s", "")).isdigit())
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

    def instruments(self) -> list[Instrument]:
        """The contracts behind the requested symbols: their instrument ids resolved to raw
        symbols over the range (Databento's ``instrument_id`` -> ``raw_symbol`` combination).
        Raw symbols requested as such are stored under their own name: nothing to add."""
        if self.request.stype_in == "raw_symbol" or not self._instrument_ids:
            return []
        ids = sorted(self._instrument_ids, key=int)
        found: list[Instrument] = []
        for result in self._resolve("raw symbols", ids, "instrument_id", "raw_symbol"):
            for instrument_id, intervals in (result.get("result") or {}).items():
                for interval in intervals:
                    if interval.get("s"):
                        found.append(
                            Instrument(
                                self.dataset,
                                int(instrument_id),
                                str(interval["s"]),
                                day_ns(dt.date.fromisoformat(str(interval["d0"]))),
                                day_ns(dt.date.fromisoformat(str(interval["d1"]))),
                            )
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

    def estimate(self) -> Estimate:
        """Checks, symbol resolution and the quote: the free metadata calls, nothing billed."""
        self.check_request()
        warnings = self.resolve_symbols()
        return Estimate(self.quote(), len(self.downloads()), warnings)

    def quote(self) -> list[Quote]:
        """Records, billable bytes and cost of the whole request (or of its gaps), per schema:
        free calls, one per run of consecutive days and symbol batch."""
        quotes = []
        for schema in self.request.schemas:
            records = size = 0
            cost = 0.0
            metadata = self.client.metadata
            for (start, end), batch in itertools.product(self._runs(schema), self._symbol_batches):
                query = self._request_params(schema, start, end, batch)
                records += int(self.api.call("record count", partial(metadata.get_record_count, **query)))
                size += int(self.api.call("billable size", partial(metadata.get_billable_size, **query)))
                cost += float(self.api.call("cost", partial(metadata.get_cost, **query)))
            quotes.append(Quote(schema, records, size, cost))
        return quotes

    def downloads(self) -> list[Download]:
        """The plan's requests: schema x ``chunk_days`` days x at most 2,000 symbols."""
        parts: list[Download] = []
        for schema in self.request.schemas:
            for start, end in self._spans(schema):
                parts.extend(Download(schema, start, end, batch) for batch in self._symbol_batches)
        return parts

    def _runs(self, schema: str) -> list[tuple[dt.date, dt.date]]:
        """[start, end) runs of consecutive days to fetch: the whole range, or with
        ``--fill-gaps`` the sessions coverage found not done."""
        if self.request.gap_days is None:
            return [(self.start, self.end)]
        runs: list[tuple[dt.date, dt.date]] = []
        for day in sorted(d for d in self.request.gap_days.get(schema, []) if self.start <= d < self.end):
            following = day + dt.timedelta(days=1)
            runs[-1:] = (
                [(runs[-1][0], following)] if runs and runs[-1][1] == day else [*runs[-1:], (day, following)]
            )
        return runs

    def _spans(self, schema: str) -> list[tuple[dt.date, dt.date]]:
        """The runs cut into requests of at most ``chunk_days`` days."""
        step = dt.timedelta(days=self.request.chunk_days)
        spans = []
        for start, end in self._runs(schema):
            while start < end:
                spans.append((start, min(start + step, end)))
                start = spans[-1][1]
        return spans

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
                fetched = Fetched(chunk, self._parts(chunk))
            except SourceError as exc:
                fetched = Fetched(chunk, [], str(exc))
            following = next(upcoming, None)
            if following is not None and following.key not in self._pending:
                self._pending[following.key] = self._ahead.submit(self._fetch, following)
            yield fetched
            chunk = following

    def _parts(self, chunk: Chunk) -> list[Chunk]:
        """Downloads the chunk; more than ``PART_RECORDS`` records become parts of that many."""
        path = self._download(chunk)
        records = self._records.get(chunk.key)
        if records is None:  # kept from an earlier run (--keep-raw): count it again
            records = self._records[chunk.key] = DbnFile(path).inspect().total
        slices = record_parts(records, self.PART_RECORDS)
        if len(slices) == 1:
            return [chunk]
        parts = []
        for first, count in slices:
            key = f"{chunk.key}:{first}+{self.PART_RECORDS}"
            self._slices[key] = (chunk.key, first, count)
            label = f"{chunk.label} [records {first:,}-{first + count - 1:,}]"
            parts.append(replace(chunk, key=key, label=label, first_record=first, record_count=count))
        return parts

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


def _day(value: dt.date | str | None) -> dt.date:
    if not isinstance(value, dt.date):
        raise TypeError(f"unresolved day {value!r}: resolve relative days before making the source")
    return value
