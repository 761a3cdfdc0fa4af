"""Cluster benchmark: the same ingest on a local Dask cluster of 1, 2 and 4 worker processes.

(1) An API backfill, download-bound: the test suite's local HTTPS server speaking Databento's
    Historical API (in its own process; no key or network needed) serves DAYS days of trades
    with LATENCY seconds before each DBN body, as a slow link or a busy gateway would; each
    worker downloads and stores the days it runs. Should scale near linearly with workers.
(2) DBN files into PostgreSQL with 1 and 2 workers: bound by this machine's 2 cores, which the
    workers and the database server share.
(3) The same files into a Parquet lake (a fresh directory) with 1 and 2 workers, its ledger in
    PostgreSQL: the workers encode Parquet themselves; the database only keeps the ledger.
Each run goes into a fresh scratch database on the PostgreSQL server given by --db; the time is
the ingest's wall time once the cluster is up (its start-up excluded: a cluster outlives runs).
Prints the times and the speed-ups, and last one line:
  RESULT api_1_s=<a> api_2_s=<b> api_4_s=<c> api_speedup_4=<d> files_1_s=<e> files_2_s=<f>
         lake_1_s=<g> lake_2_s=<h>

    python bench/cluster_bench.py [--days 16] [--latency 1.0] [--db postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from api_bench import backfill_request, start_server  # noqa: E402

from marketpipe import cluster  # noqa: E402
from marketpipe.config import IngestRequest, load_settings  # noqa: E402
from marketpipe.logs import configure  # noqa: E402
from marketpipe.pipeline import ingest  # noqa: E402
from marketpipe.samples import write_trade_days  # noqa: E402

from pg import fresh_database  # noqa: E402


def timed(request: IngestRequest, admin: str, workers: int, lake: Path | None = None) -> float:
    """Seconds of one ingest on a local cluster of ``workers`` processes, into a fresh database
    (or a fresh ``lake`` directory whose ledger is that database)."""
    with fresh_database(admin) as db, cluster.connect(workers, None) as client:
        settings = load_settings(db=db) if lake is None else load_settings(db=f"lake:{lake}", ledger=db)
        started = time.perf_counter()
        summary = ingest(request, settings, lanes=cluster.lanes(client))
        seconds = time.perf_counter() - started
    if summary.exit_code != 0 or not summary.totals().stored:
        raise SystemExit(f"ingest failed: {summary.failed} {summary.stopped}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=16)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds before each DBN body")
    parser.add_argument("--records-per-day", type=int, default=20_000, help="API trades per day")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--file-records", type=int, default=500_000)
    parser.add_argument(
        "--db",
        default=os.environ.get("MARKETPIPE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server (scratch databases are created and dropped there)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="marketpipe-cluster-bench-") as scratch:
        directory = Path(scratch)
        configure(directory / "bench.log.jsonl", "ERROR")
        # The workers inherit the environment: each reads its own key, as on a real cluster.
        server = start_server(directory, args.records_per_day // 2, args.latency)  # CL.FUT: 2 instruments
        os.environ["MARKETPIPE_LOG_FILE"] = str(directory / "bench.log.jsonl")
        api = backfill_request(args.days)
        api_s = {n: timed(api, args.db, n) for n in (1, 2, 4)}
        server.terminate()
        write_trade_days(directory / "files", args.files, args.file_records)
        file_request = IngestRequest(from_file=str(directory / "files"))
        files_s = {n: timed(file_request, args.db, n) for n in (1, 2)}
        lake_s = {n: timed(file_request, args.db, n, directory / f"lake-{n}") for n in (1, 2)}
    print(f"(1) API backfill: {args.days} days, {args.latency:.1f} s latency per download")
    for n, seconds in api_s.items():
        print(f"    {n} worker(s) {seconds:8.2f} s   speed-up {api_s[1] / seconds:5.2f}x")
    records = args.files * args.file_records
    print(f"(2) {args.files} DBN files, {records:,} trades, into PostgreSQL")
    for n, seconds in files_s.items():
        print(f"    {n} worker(s) {seconds:8.2f} s   {records / seconds:12,.0f} rows/s")
    print("(3) the same files into a Parquet lake (ledger in PostgreSQL)")
    for n, seconds in lake_s.items():
        print(f"    {n} worker(s) {seconds:8.2f} s   {records / seconds:12,.0f} rows/s")
    print(
        f"RESULT api_1_s={api_s[1]:.3f} api_2_s={api_s[2]:.3f} api_4_s={api_s[4]:.3f}"
        f" api_speedup_4={api_s[1] / api_s[4]:.2f} files_1_s={files_s[1]:.3f} files_2_s={files_s[2]:.3f}"
        f" lake_1_s={lake_s[1]:.3f} lake_2_s={lake_s[2]:.3f}"
    )


if __name__ == "__main__":
    main()
