"""API ingest benchmark: how much of the download time the pipeline hides behind storing.

Starts the test suite's local HTTPS server (in its own process) speaking Databento's Historical API (no key or
network needed), serving DAYS days of trades for two instruments, with LATENCY seconds before
each DBN body (as a slow link or a busy gateway would add), and runs the full pipeline into a
scratch DuckDB file with the official client. Prints the wall time, the total download time
and the total chunk work (validate, transform, store, commit), both from the pipeline's own log
lines, and how much download time ran while a chunk was being stored (the download ahead),
and last one line:
  RESULT wall_s=<x> download_s=<y> overlapped_s=<z> records=<n>

    python bench/api_bench.py [--days 8] [--records-per-day 400000] [--latency 1.0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from marketpipe.config import IngestRequest, load_settings  # noqa: E402
from marketpipe.logs import configure  # noqa: E402
from marketpipe.pipeline import ingest  # noqa: E402

from databento_server import DatabentoServer  # noqa: E402

KEY = "db-BENCHKEY0123456789abcdefghijkl"


def serve(directory: Path, per_day: int, latency: float, reply: Connection) -> None:
    """The API server in its own process, as a real gateway is: its work is not the pipeline's."""
    server = DatabentoServer(directory, KEY)
    server.per_day = per_day
    server.stream_delay = latency
    reply.send((server.url, str(server.ca_file)))
    server.thread.join()


def start_server(directory: Path, per_day: int, latency: float) -> multiprocessing.Process:
    """The server in its own process; this process (and any it starts) pointed at it."""
    receive, reply = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.Process(target=serve, args=(directory, per_day, latency, reply), daemon=True)
    server.start()
    url, ca_file = receive.recv()
    os.environ.update(DATABENTO_API_KEY=KEY, DATABENTO_GATEWAY=url, REQUESTS_CA_BUNDLE=ca_file)
    return server


def backfill_request(days: int) -> IngestRequest:
    """``days`` days of CL.FUT trades from 2024-01-02: what the server serves, by parent symbol."""
    start = dt.date(2024, 1, 2)
    return IngestRequest(
        dataset="GLBX.MDP3",
        schemas=["trades"],
        symbols=["CL.FUT"],
        stype_in="parent",
        start_date=start,
        end_date=start + dt.timedelta(days=days - 1),
    )


def _at(event: dict[str, object]) -> float:
    """A log line's time, in seconds since the epoch."""
    return dt.datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--records-per-day", type=int, default=400_000, help="per day, over two instruments")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds before each DBN body")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="marketpipe-api-bench-") as scratch:
        directory = Path(scratch)
        server = start_server(directory, args.records_per_day // 2, args.latency)  # CL.FUT: 2 instruments
        log_file = directory / "log.jsonl"
        settings = load_settings(db=str(directory / "api.duckdb"), log_file=str(log_file))
        configure(settings.log_file, "ERROR")
        request = backfill_request(args.days)
        started = time.perf_counter()
        summary = ingest(request, settings, force=True)
        wall = time.perf_counter() - started
        server.terminate()
        if summary.exit_code != 0:
            raise SystemExit(f"ingest failed: {summary.failed}")
        events = [json.loads(line) for line in log_file.read_text().splitlines()]
        records = summary.totals().stored
    downloads = [(_at(e) - e["seconds"], _at(e)) for e in events if e.get("event") == "chunk.downloaded"]
    starts = {e["chunk"]: _at(e) for e in events if e.get("event") == "chunk.start"}
    chunks = [(starts[e["chunk"]], _at(e)) for e in events if e.get("event") == "chunk.end"]
    download = sum(end - start for start, end in downloads)
    work = sum(end - start for start, end in chunks)
    # Download time that ran while a chunk was validated and stored (the download ahead).
    overlapped = sum(
        max(0.0, min(d_end, c_end) - max(d_start, c_start))
        for d_start, d_end in downloads
        for c_start, c_end in chunks
    )
    print(f"{args.days} days, {records:,} trade records, {args.latency:.1f} s latency per download")
    print(f"wall time                       {wall:8.2f} s   ({records / wall:,.0f} records/s)")
    print(f"downloads (all, incl. latency)  {download:8.2f} s")
    print(f"chunk work (validate..commit)   {work:8.2f} s")
    print(f"download time run alongside     {overlapped:8.2f} s")
    print(
        f"RESULT wall_s={wall:.3f} download_s={download:.3f} overlapped_s={overlapped:.3f} records={records}"
    )


if __name__ == "__main__":
    main()
