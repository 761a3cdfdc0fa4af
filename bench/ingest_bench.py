"""Ingest benchmark: the full pipeline against the bare physical limit of each store.

Generates N trade records as a DBN file (metadata by databento-dbn), then measures:
  (a) bare binary COPY (pgpq + psycopg) of the identical standardized rows into an
      identical empty PostgreSQL table with the same indexes (the physical limit);
  (b) the full pipeline, DBN file -> PostgreSQL, in a child process (its peak RSS);
  (c) the full pipeline, DBN file -> DuckDB, in a child process, and a bare Arrow
      insert of the same rows into an identical DuckDB table;
  (d) what a user would write instead, lossy (bench/lossy_copy.py): the databento client
      decodes the file to 9 columns (float prices, microsecond timestamps), pgpq binary COPY
      into a plain table with no index; compared with (b) as `marketpipe ingest` run by a
      user onto the migrated store, both fresh processes timed end to end (start-up included);
  (e) the same pipelines again with --force onto the stores (b) and (c) left: the day stored
      is replaced, not added (compared with each first ingest);
  (f) the same records again as another input (mapped by their parent symbol instead of their
      raw symbols, as another request would bring them) onto those stores: stored, and the
      first input's rows, which its coverage holds, replaced (compared with each first ingest);
  and the start-up of `marketpipe version` and the whole of `marketpipe status` on (c)'s
  DuckDB store (fresh processes, best of three).
Prints rows/s, the ratios (b)/(a), (c)/(bare DuckDB) and (b)/(d), peak RSS, and last one line:
  RESULT pg_ratio=<x> duckdb_ratio=<y> peak_rss_mb=<z> records=<n> pg_vs_lossy=<v> startup_s=<s>
         status_s=<t> pg_force_ratio=<f> duckdb_force_ratio=<g> pg_replace_ratio=<r>
         duckdb_replace_ratio=<q>

    python bench/ingest_bench.py [--records N] [--db postgresql://user@host:port/admin_db]

The PostgreSQL URL names a server and a database to connect to for creating a scratch
database, which is dropped at the end. Timings are wall-clock of the work itself (process
start-up and imports excluded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import duckdb  # noqa: E402
import pandas  # noqa: E402, F401  (pyarrow imports it at its first array: an import, not work)
import pgpq  # noqa: E402
import psycopg  # noqa: E402
import pyarrow as pa  # noqa: E402

from marketpipe.config import IngestRequest, Settings, load_settings  # noqa: E402
from marketpipe.defaults import DUCKDB_MEMORY_LIMIT  # noqa: E402
from marketpipe.logs import configure  # noqa: E402
from marketpipe.pipeline import ingest  # noqa: E402
from marketpipe.rules.transformation import load_model  # noqa: E402
from marketpipe.samples import Interval, metadata_bytes, synthetic_trades  # noqa: E402
from marketpipe.sources.dbn_reader import DbnFile  # noqa: E402
from marketpipe.stores import open_store  # noqa: E402
from marketpipe.stores.duckdb import CONFIG as DUCKDB_CONFIG  # noqa: E402
from marketpipe.stores.duckdb import DuckDBStore  # noqa: E402
from marketpipe.stores.postgres import copy_table  # noqa: E402
from marketpipe.transform import to_table  # noqa: E402

MODEL = load_model()

BLOCK = 1_000_000


DAY = dt.date(2024, 3, 4)
INSTRUMENTS = 4  # synthetic_trades' default


def mappings(parent: bool) -> tuple[str, dict[str, list[Interval]]]:
    """The day's symbol mappings of instruments 1..4: by raw symbol, or all by one parent."""
    day = [DAY, DAY + dt.timedelta(days=1)]
    if parent:
        return "parent", {"ES.FUT": [Interval(*day, str(i)) for i in range(1, INSTRUMENTS + 1)]}
    return "raw_symbol", {f"ES{i}": [Interval(*day, str(i))] for i in range(1, INSTRUMENTS + 1)}


def write_trades(path: Path, records: int, parent: bool = False) -> None:
    """``records`` trades over one day in time order, as Databento's files are ordered by the
    index timestamp; written a block at a time (bounded memory), each block its share of the day."""
    day = DAY
    start = (day - dt.date(1970, 1, 1)).days * 86_400 * 10**9
    blocks = -(-records // BLOCK)
    span = 86_400 * 10**9 // blocks
    stype_in, symbols = mappings(parent)
    with path.open("wb") as out:
        out.write(metadata_bytes("GLBX.MDP3", "trades", start, start + 86_400 * 10**9, stype_in, symbols))
        for i, offset in enumerate(range(0, records, BLOCK)):
            block = synthetic_trades(min(BLOCK, records - offset), day, seed=i)
            for field in ("ts_event", "ts_recv"):  # the block's day squeezed into its share
                block[field] = start + i * span + (block[field] - start) // blocks
            block["sequence"] += offset
            out.write(block.tobytes())


def standardized_tables(path: Path, batch_size: int) -> list[pa.Table]:
    family = MODEL.family_of("trades")
    return [to_table(family, "trades", raw) for raw in DbnFile(path).batches("trades", batch_size)]


def bare_postgres(url: str, tables: list[pa.Table]) -> float:
    """Seconds to encode and COPY the rows into a copy of the trades table and its indexes."""
    with psycopg.connect(url) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_bare")
        conn.execute("CREATE TABLE bench_bare (LIKE trades INCLUDING ALL)")
        conn.commit()
        conn.execute("CHECKPOINT")
        data = [copy_table(t, 1) for t in tables]
        columns = ", ".join(f'"{n}"' for n in data[0].column_names)
        started = time.perf_counter()
        with conn.cursor() as cur:
            for table in data:
                encoder = pgpq.ArrowToPostgresBinaryEncoder(table.schema)
                with cur.copy(f"COPY bench_bare ({columns}) FROM STDIN WITH (FORMAT BINARY)") as copy:
                    copy.write(encoder.write_header())
                    for batch in table.to_batches():
                        copy.write(encoder.write_batch(batch))
                    copy.write(encoder.finish())
        conn.commit()
        seconds = time.perf_counter() - started
        conn.execute("DROP TABLE bench_bare")
        conn.commit()
        conn.execute("CHECKPOINT")
    return seconds


def bare_duckdb(path: Path, tables: list[pa.Table]) -> float:
    DuckDBStore(str(path), model=MODEL).close()  # the same DDL as the pipeline's store
    # The store's own settings (its memory cap costs the bare insert 2% at 20M rows).
    con = duckdb.connect(str(path), config={**DUCKDB_CONFIG, "memory_limit": DUCKDB_MEMORY_LIMIT})
    table = pa.concat_tables(tables).combine_chunks()  # one contiguous table: the bare best case
    table = table.cast(
        pa.schema(
            [
                pa.field(f.name, pa.timestamp("ns")) if pa.types.is_timestamp(f.type) else f
                for f in table.schema
            ]
        )
    ).append_column("chunk_id", pa.repeat(pa.scalar(1, pa.int64()), table.num_rows))
    con.register("bench_rows", table)
    started = time.perf_counter()
    con.execute("INSERT INTO trades SELECT * FROM bench_rows")
    seconds = time.perf_counter() - started
    con.close()
    return seconds


def run_child(kind: str, file: Path, db: str, batch_size: int) -> tuple[float, float]:
    """Seconds of the work in a fresh process and its peak RSS in MB."""
    command = [sys.executable, __file__, "--child", str(file), "--db", db, "--batch-size", str(batch_size)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    if child.wait() != 0:
        raise SystemExit(f"{kind} run failed")
    figures = json.loads(output.strip().splitlines()[-1])
    return float(figures["seconds"]), float(figures["peak_rss_mb"])


def truncate(url: str) -> None:
    """The store as a run finds it the next day: migrated, no rows, no chunk done."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "TRUNCATE trades, marketpipe_chunks, marketpipe_runs, marketpipe_quarantine, marketpipe_coverage,"
            " marketpipe_symbology"
        )


def whole_processes(file: Path, db: str, batch_size: int, logs: Path) -> tuple[float, float, float]:
    """Wall seconds, end to end in fresh processes, of (b) ``marketpipe ingest`` as a user runs
    it and of (d) the lossy script, plus (d)'s peak RSS in MB."""
    truncate(db)
    command = [sys.executable, "-m", "marketpipe", "ingest", "--from-file", str(file), "--db", db]
    env = {**os.environ, "MARKETPIPE_BATCH_SIZE": str(batch_size), "MARKETPIPE_LOG_FILE": str(logs)}
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    pipeline = time.perf_counter() - started
    lossy_command = [sys.executable, str(ROOT / "bench" / "lossy_copy.py"), str(file), "--db", db]
    started = time.perf_counter()
    output = subprocess.run(
        [*lossy_command, "--batch-size", str(batch_size)], check=True, capture_output=True, text=True
    ).stdout
    lossy = time.perf_counter() - started
    return pipeline, lossy, float(json.loads(output.strip().splitlines()[-1])["peak_rss_mb"])


def command_seconds(*args: str) -> float:
    """Best of three wall times of `marketpipe ARGS` in a fresh process."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "marketpipe", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return min(times)


def peak_rss_mb() -> float:
    """This process's high-water RSS since exec (getrusage would count the forking parent's)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def child(file: Path, db: str, batch_size: int) -> None:
    settings = load_settings(db=db, batch_size=batch_size, log_file=str(file.with_suffix(".log.jsonl")))
    configure(settings.log_file, "ERROR")
    store = open_store(settings.store, MODEL)  # migrations are set-up, not ingest: outside the timing
    store.close()
    started = time.perf_counter()
    summary = ingest(IngestRequest(from_file=str(file)), settings, force=True)
    seconds = time.perf_counter() - started
    if summary.exit_code != 0 or summary.totals().stored == 0:
        raise SystemExit(f"pipeline did not store the records: {summary.failed} {summary.stopped}")
    status = open_store(settings.store, MODEL, read_only=True)
    try:
        [rows] = [t.rows for t in status.status().tables if t.table == "trades"]
    finally:
        status.close()
    if rows != summary.totals().stored:  # another input's day is replaced, never added to
        raise SystemExit(f"{rows:,} rows stored after a run that stored {summary.totals().stored:,}")
    print(json.dumps({"seconds": seconds, "stored": summary.totals().stored, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument(
        "--db",
        default=os.environ.get("MARKETPIPE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server to benchmark (a scratch database is created there)",
    )
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.db, args.batch_size)
        return

    n = args.records
    scratch = f"marketpipe_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.db, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{scratch}"')
    pg_url = args.db.rpartition("/")[0] + "/" + scratch
    try:
        with tempfile.TemporaryDirectory(prefix="marketpipe-bench-") as tmp:
            work = Path(tmp)
            configure(work / "bench.log.jsonl", "ERROR")
            file = work / f"trades-{n}.dbn"
            started = time.perf_counter()
            write_trades(file, n)
            print(f"generated {n:,} trade records ({file.stat().st_size / 1e6:,.0f} MB DBN) in "
                  f"{time.perf_counter() - started:.1f} s")  # fmt: skip
            other = work / f"trades-{n}-by-parent.dbn"
            write_trades(other, n, parent=True)

            open_store(load_settings(db=pg_url).store, MODEL).close()
            tables = standardized_tables(file, args.batch_size)
            bare_pg = bare_postgres(pg_url, tables)
            pipe_pg, rss_pg = run_child("postgres", file, pg_url, args.batch_size)
            force_pg, _ = run_child("postgres --force", file, pg_url, args.batch_size)
            replace_pg, _ = run_child("postgres, another input", other, pg_url, args.batch_size)
            bare_dd = bare_duckdb(work / "bare.duckdb", tables)
            del tables
            duck = str(work / "pipeline.duckdb")
            pipe_dd, rss_dd = run_child("duckdb", file, duck, args.batch_size)
            force_dd, _ = run_child("duckdb --force", file, duck, args.batch_size)
            replace_dd, _ = run_child("duckdb, another input", other, duck, args.batch_size)
            wall_pg, wall_lossy, rss_lossy = whole_processes(
                file, pg_url, args.batch_size, work / "cli.jsonl"
            )
            startup = command_seconds("version")
            status = command_seconds("status", "--db", duck)
    finally:
        with psycopg.connect(args.db, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')

    rows = [
        ("(a) bare binary COPY, PostgreSQL", bare_pg, None),
        ("(b) pipeline DBN -> PostgreSQL", pipe_pg, rss_pg),
        ("    bare Arrow insert, DuckDB", bare_dd, None),
        ("(c) pipeline DBN -> DuckDB", pipe_dd, rss_dd),
        ("(b) `marketpipe ingest`, whole process", wall_pg, None),
        ("(d) lossy client + COPY, whole process", wall_lossy, rss_lossy),
        ("(e) --force onto (b)'s stored day", force_pg, None),
        ("(e) --force onto (c)'s stored day", force_dd, None),
        ("(f) another input of (b)'s day", replace_pg, None),
        ("(f) another input of (c)'s day", replace_dd, None),
    ]
    print(f"\n{'':38} {'seconds':>8} {'rows/s':>12} {'peak RSS MB':>12}")
    for name, seconds, rss in rows:
        rss_text = f"{rss:,.0f}" if rss is not None else ""
        print(f"{name:38} {seconds:8.2f} {n / seconds:12,.0f} {rss_text:>12}")
    pg_ratio = bare_pg / pipe_pg
    duckdb_ratio = bare_dd / pipe_dd
    peak = max(rss_pg, rss_dd)
    print(
        f"\n(b)/(a) = {pg_ratio:.2f} ({Settings().writers} writers against one bare stream)"
        f"   (c)/bare DuckDB = {duckdb_ratio:.2f} (target >= 0.6)"
    )
    columns = len(MODEL.family_of("trades").columns)
    pg_vs_lossy = wall_lossy / wall_pg
    print(f"(b)/(d) = {pg_vs_lossy:.2f} (target >= 0.65)   marketpipe version starts in {startup:.2f} s,")
    print(f"  marketpipe status of (c)'s DuckDB store takes {status:.2f} s")
    pg_force, duckdb_force = force_pg / pipe_pg, force_dd / pipe_dd
    print(f"(e)/(b) = {pg_force:.2f}, (e)/(c) = {duckdb_force:.2f}: a --force re-ingest against the first")
    pg_replace, duckdb_replace = replace_pg / pipe_pg, replace_dd / pipe_dd
    print(f"(f)/(b) = {pg_replace:.2f}, (f)/(c) = {duckdb_replace:.2f}: the day replaced by coverage")
    print(f"trades columns: {columns} + chunk_id; batch size {args.batch_size:,}")
    print(
        f"RESULT pg_ratio={pg_ratio:.3f} duckdb_ratio={duckdb_ratio:.3f} peak_rss_mb={peak:.0f} records={n}"
        f" pg_vs_lossy={pg_vs_lossy:.3f} startup_s={startup:.3f} status_s={status:.3f}"
        f" pg_force_ratio={pg_force:.3f} duckdb_force_ratio={duckdb_force:.3f}"
        f" pg_replace_ratio={pg_replace:.3f} duckdb_replace_ratio={duckdb_replace:.3f}"
    )


if __name__ == "__main__":
    main()
