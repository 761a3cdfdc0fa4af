"""(d) of ``ingest_bench.py``: what a user in a hurry would write to get trades into
PostgreSQL, lossy. The databento client decodes the file (numpy), 9 columns (float prices,
microsecond timestamps), pgpq binary COPY into a plain table with no index. A script of its
own so that its process imports only what such a script would.

    python bench/lossy_copy.py FILE --db URL [--batch-size N]

Prints one JSON line: seconds, rows stored, peak RSS in MB.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import databento
import numpy as np
import pgpq
import psycopg
import pyarrow as pa

DDL = """CREATE TABLE bench_lossy (ts_recv TIMESTAMPTZ, ts_event TIMESTAMPTZ, instrument_id BIGINT,
  price DOUBLE PRECISION, size BIGINT, action TEXT, side TEXT, flags SMALLINT, sequence BIGINT)"""


def lossy_table(records: np.ndarray) -> pa.Table:
    """9 columns the quick way: float prices, microsecond timestamps, the rest as DBN has them."""
    return pa.table(
        {
            "ts_recv": pa.array(records["ts_recv"] // 1000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "ts_event": pa.array(records["ts_event"] // 1000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "instrument_id": pa.array(records["instrument_id"].astype(np.int64)),
            "price": pa.array(records["price"] * 1e-9),
            "size": pa.array(records["size"].astype(np.int64)),
            "action": pa.array(records["action"].astype("U1")),
            "side": pa.array(records["side"].astype("U1")),
            "flags": pa.array(records["flags"].astype(np.int16)),
            "sequence": pa.array(records["sequence"].astype(np.int64)),
        }
    )


def peak_rss_mb() -> float:
    """This process's high-water RSS since exec."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--db", required=True)
    parser.add_argument("--batch-size", type=int, default=250_000)
    args = parser.parse_args()
    started = time.perf_counter()
    blocks = databento.DBNStore.from_file(args.file).to_ndarray(count=args.batch_size)
    encoder = None
    with psycopg.connect(args.db) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_lossy")
        conn.execute(DDL)
        with conn.cursor() as cur, cur.copy("COPY bench_lossy FROM STDIN WITH (FORMAT BINARY)") as copy:
            for records in blocks:
                table = lossy_table(records)
                if encoder is None:
                    encoder = pgpq.ArrowToPostgresBinaryEncoder(table.schema)
                    copy.write(encoder.write_header())
                for batch in table.to_batches():
                    copy.write(encoder.write_batch(batch))
            if encoder is not None:
                copy.write(encoder.finish())
        conn.commit()
        (rows,) = conn.execute("SELECT count(*) FROM bench_lossy").fetchone()  # type: ignore[misc]
        conn.execute("DROP TABLE bench_lossy")
        conn.commit()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "stored": rows, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
