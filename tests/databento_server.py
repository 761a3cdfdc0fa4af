"""A local HTTPS server speaking the part of Databento's Historical HTTP API marketpipe uses.

Endpoints (under ``/v0/``, as the official client calls them): ``metadata.list_schemas``,
``metadata.get_dataset_range``, ``metadata.get_record_count``, ``metadata.get_billable_size``,
``metadata.get_cost``, ``symbology.resolve`` and ``timeseries.get_range`` (zstd DBN, metadata
encoded by databento-dbn). Requests authenticate with HTTP basic auth, the key as user name;
errors are JSON ``{"detail": ...}`` with the HTTP status, as Databento's.

Data is deterministic per (dataset, schema, instrument, day), so what a request must return
is known to the tests. Faults are queued per endpoint and consumed one per request:
``"429"`` (with Retry-After), any other status code, ``"slow:<seconds>"``, ``"reset"`` (the
connection is reset halfway through the body) and ``"truncate"`` (a well-formed response with
only the first half of the records, as a cut stream looks to the client).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import ssl
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

import databento_dbn
import numpy as np
import trustme
import zstandard

from marketpipe.model import LAYOUT_OF_SCHEMA
from marketpipe.samples import Interval, metadata_bytes
from marketpipe.symbology import EPOCH, NS_PER_DAY, day_ns

PRICE = 10**9
SCHEMAS = ["trades", "ohlcv-1d", "mbp-1"]
COST_PER_RECORD = 0.0001  # USD, what get_cost quotes


def _day(value: str) -> dt.date:
    return dt.date.fromisoformat(value[:10])


class Universe:
    """The datasets the server knows: their range, schemas and symbols."""

    def __init__(self) -> None:
        self.datasets = {"GLBX.MDP3": (dt.date(2024, 1, 1), dt.date(2024, 3, 1))}
        # parent symbol -> {raw symbol: instrument_id}; raw symbols are their own instruments.
        self.parents = {
            "CL.FUT": {"CLH4": 1001, "CLJ4": 1002},
            "ES.FUT": {"ESH4": 2001, "ESM4": 2002},
            "NG.FUT": {"NGH4": 3001},
        }
        self.raw = {raw: iid for children in self.parents.values() for raw, iid in children.items()}
        # Listed only from this day on: resolves for part of a range.
        self.listed_from = {"NGH4": dt.date(2024, 1, 10), "NG.FUT": dt.date(2024, 1, 10)}
        # Continuous symbols (Databento's ``continuous`` stype): the front month by calendar,
        # rolling from CLH4 to CLJ4 on 2024-01-05.
        self.continuous = {
            "CL.c.0": [
                (EPOCH, dt.date(2024, 1, 5), "CLH4"),
                (dt.date(2024, 1, 5), dt.date(2099, 1, 1), "CLJ4"),
            ]
        }

    def intervals(
        self, symbol: str, stype_in: str, start: dt.date, end: dt.date
    ) -> list[tuple[dt.date, dt.date, int]]:
        """What ``symbol`` stands for within [start, end): (first day, end day, instrument)."""
        if stype_in == "continuous":
            pieces = [
                (max(a, start), min(b, end), self.raw[raw]) for a, b, raw in self.continuous.get(symbol, [])
            ]
            return [p for p in pieces if p[0] < p[1]]
        found = []
        for raw, iid in self.instruments(symbol, stype_in).items():
            first = max(start, self.first_day(raw), self.first_day(symbol))
            if first < end:
                found.append((first, end, iid))
        return found

    def instruments(self, symbol: str, stype_in: str) -> dict[str, int]:
        if stype_in == "parent":
            return dict(self.parents.get(symbol, {}))
        if stype_in == "instrument_id":
            return {symbol: int(symbol)} if symbol.isdigit() and int(symbol) in self.raw.values() else {}
        return {symbol: self.raw[symbol]} if symbol in self.raw else {}

    def raw_names(self, instrument_ids: Iterable[int]) -> list[str]:
        names = {iid: raw for raw, iid in self.raw.items()}
        return [names[i] for i in instrument_ids]

    def first_day(self, symbol: str) -> dt.date:
        return self.listed_from.get(symbol, EPOCH)


def records_for(schema: str, instrument_id: int, day: dt.date, per_day: int | None = None) -> np.ndarray:
    """The records of one instrument on one day: valid, deterministic, in time order."""
    dtype = LAYOUT_OF_SCHEMA[schema].dtype
    count = 1 if schema == "ohlcv-1d" else per_day or 3 + instrument_id % 4 + day.day % 3
    spacing = min(3_600 * 10**9, NS_PER_DAY // (count + 1))
    rec = np.zeros(count, dtype=dtype)
    rec["length"] = dtype.itemsize // 4
    rec["rtype"] = int(databento_dbn.RType.from_schema(databento_dbn.Schema(schema)).value)
    rec["publisher_id"] = 1
    rec["instrument_id"] = instrument_id
    k = np.arange(count, dtype=np.int64)
    base = (70 + instrument_id % 1000) * PRICE + day.day * PRICE // 100
    start = day_ns(day)
    if schema == "ohlcv-1d":
        rec["ts_event"] = start
        rec["open"], rec["close"] = base, base + PRICE // 4
        rec["high"], rec["low"] = base + PRICE, base - PRICE
        rec["volume"] = 100 + instrument_id % 50
        return rec
    rec["ts_event"] = start + (k + 1) * spacing + instrument_id
    rec["ts_recv"] = rec["ts_event"] + 1_500
    rec["price"] = base + k * PRICE // 100
    rec["size"] = 1 + k
    rec["action"] = b"T"
    rec["side"] = np.where(k % 2 == 0, b"A", b"B")
    rec["sequence"] = 1000 + k
    if schema == "mbp-1":
        rec["bid_px_00"] = rec["price"] - PRICE // 100
        rec["ask_px_00"] = rec["price"] + PRICE // 100
        rec["bid_sz_00"] = 5
        rec["ask_sz_00"] = 7
    return rec


class DatabentoServer:
    def __init__(self, directory: Path, key: str) -> None:
        self.key = key
        self.universe = Universe()
        self.faults: dict[str, deque[str | None]] = defaultdict(deque)
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        # get_dataset_range's answer: "per_schema" (Databento's today), "dataset" (no per-schema
        # ranges) or "legacy" (start_date / end_date, as older API versions named them).
        self.range_style = "per_schema"
        # For benchmarks: records per instrument and day, and seconds before each DBN body.
        self.per_day: int | None = None
        self.stream_delay = 0.0
        # Downloads being served at this moment, and the most there were at once.
        self.streaming = 0
        self.most_streaming = 0
        ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self.httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.calls.clear()
            self.range_style = "per_schema"
            self.per_day = None
            self.stream_delay = 0.0
            self.most_streaming = 0

    def inject(self, endpoint: str, *faults: str | None) -> None:
        """The next requests to ``endpoint`` fail in these ways, in order (None: served normally)."""
        with self.lock:
            self.faults[endpoint].extend(faults)

    def next_fault(self, endpoint: str) -> str | None:
        with self.lock:
            queue = self.faults[endpoint]
            return queue.popleft() if queue else None

    def count(self, endpoint: str) -> int:
        return sum(1 for name, _ in self.calls if name == endpoint)

    # What the API holds.
    def data(self, params: dict[str, str]) -> tuple[bytes, np.ndarray]:
        """Metadata and records a get_range request returns (index time in [start, end))."""
        schema, stype_in = params["schema"], params.get("stype_in", "raw_symbol")
        start, end = _day(params["start"]), _day(params["end"])
        mappings: dict[str, list[Interval]] = {}
        blocks = []
        for symbol in params["symbols"].split(","):
            for first, last, iid in self.universe.intervals(symbol, stype_in, start, end):
                mappings.setdefault(symbol, []).append(Interval(first, last, str(iid)))
                day = first
                while day < last:
                    blocks.append(records_for(schema, iid, day, self.per_day))
                    day += dt.timedelta(days=1)
        dtype = LAYOUT_OF_SCHEMA[schema].dtype
        records = np.concatenate(blocks) if blocks else np.zeros(0, dtype=dtype)
        index = "ts_recv" if "ts_recv" in (dtype.names or ()) else "ts_event"
        records = records[np.argsort(records[index], kind="stable")]
        meta = metadata_bytes(params["dataset"], schema, day_ns(start), day_ns(end), stype_in, mappings)
        return meta, records

    def resolve(self, params: dict[str, str]) -> dict[str, Any]:
        start, end = _day(params["start_date"]), _day(params["end_date"])
        result: dict[str, list[dict[str, str]]] = {}
        not_found, partial = [], []
        symbols = params["symbols"].split(",")
        for symbol in symbols:
            intervals = self.universe.intervals(symbol, params.get("stype_in", "raw_symbol"), start, end)
            if not intervals:
                not_found.append(symbol)
                continue
            if min(first for first, _, _ in intervals) > start:
                partial.append(symbol)
            # stype_out raw_symbol (from instrument_id): the contract's own name.
            named = params.get("stype_out") == "raw_symbol"
            result[symbol] = [
                {
                    "d0": str(first),
                    "d1": str(last),
                    "s": self.universe.raw_names([iid])[0] if named else str(iid),
                }
                for first, last, iid in intervals
            ]
        return {
            "result": result,
            "symbols": symbols,
            "stype_in": params.get("stype_in"),
            "stype_out": params.get("stype_out"),
            "start_date": str(start),
            "end_date": str(end),
            "partial": partial,
            "not_found": not_found,
            "message": "OK",
            "status": 0,
        }


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up on a slow response is expected, not an error."""


def _handler(server: DatabentoServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read ``server.calls``."""

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            self._serve(url.path, dict(parse_qsl(url.query)))

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length).decode()
            self._serve(urlparse(self.path).path, dict(parse_qsl(body, keep_blank_values=True)))

        def _serve(self, path: str, params: dict[str, str]) -> None:
            endpoint = path.removeprefix("/v0/")
            with server.lock:
                server.calls.append((endpoint, params))
            fault = server.next_fault(endpoint)
            if fault and fault.startswith("slow:"):
                time.sleep(float(fault.split(":")[1]))
                fault = None
            if fault == "reset" and endpoint != "timeseries.get_range":
                return self._reset()  # no response at all
            if fault and fault.isdigit():
                headers = {"Retry-After": "1"} if fault == "429" else {}
                return self._json(int(fault), {"detail": f"injected fault {fault}"}, headers)
            expected = "Basic " + base64.b64encode(f"{server.key}:".encode()).decode()
            if self.headers.get("Authorization") != expected:
                given = base64.b64decode(self.headers.get("Authorization", "Basic ")[6:]).decode()
                # Echoes the key it was given, so the tests can check it is scrubbed.
                return self._json(401, {"detail": f"Authentication failed for {given.rstrip(':')}."})
            dataset = params.get("dataset")
            if dataset is not None and dataset not in server.universe.datasets:
                return self._json(422, {"detail": f"Unknown dataset '{dataset}'."})
            if endpoint == "timeseries.get_range":
                return self._stream(params, fault)
            answer = self._answer(endpoint, params)
            if answer is None:
                return self._json(404, {"detail": f"no endpoint {endpoint}"})
            return self._json(200, answer)

        def _answer(self, endpoint: str, params: dict[str, str]) -> Any:
            if endpoint == "metadata.list_schemas":
                return SCHEMAS
            if endpoint == "metadata.get_dataset_range":
                first, end = server.universe.datasets[params["dataset"]]
                window = {"start": f"{first}T00:00:00.000000000Z", "end": f"{end}T00:00:00.000000000Z"}
                if server.range_style == "legacy":
                    return {"start_date": str(first), "end_date": str(end)}
                if server.range_style == "dataset":
                    return window
                return {**window, "schema": {s: window for s in SCHEMAS}}
            if endpoint == "symbology.resolve":
                return server.resolve(params)
            if endpoint in ("metadata.get_record_count", "metadata.get_billable_size", "metadata.get_cost"):
                _, records = server.data(params)
                if endpoint == "metadata.get_record_count":
                    return len(records)
                if endpoint == "metadata.get_billable_size":
                    return int(records.nbytes)
                return round(len(records) * COST_PER_RECORD, 6)
            return None

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, params: dict[str, str], fault: str | None) -> None:
            if params["schema"] not in SCHEMAS:
                return self._json(422, {"detail": f"Unknown schema '{params['schema']}'."})
            meta, records = server.data(params)
            with server.lock:
                server.streaming += 1
                server.most_streaming = max(server.most_streaming, server.streaming)
            try:
                time.sleep(server.stream_delay)
            finally:
                with server.lock:
                    server.streaming -= 1
            if fault == "truncate":
                records = records[: len(records) // 2]
            body = zstandard.ZstdCompressor().compress(meta + records.tobytes())
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if fault == "truncate":
                self.send_header("Connection", "close")  # no length: the client reads to the end
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault == "reset":
                self.wfile.write(body[: len(body) // 2])
                time.sleep(0.3)  # the client is reading the body when the reset comes
                return self._reset()
            self.wfile.write(body)

        def _reset(self) -> None:
            """Abort the connection (TCP RST), as a dropped link or a crashed proxy does."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True

    return Handler
