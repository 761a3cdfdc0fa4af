"""Every record once, however it arrives: a stored record's identity is (dataset, schema,
instrument, index time), not the request or file that brought it.

Databento documents what makes this sound:
- a historical request's range "with an inclusive start and an exclusive end ... Filters on
  ts_recv if it exists in the schema, otherwise ts_event" (api-historical, GetRangeParams): a
  response holds every record of its instruments in that range of the index time;
- "A symbol can be reused and point to two different instruments on two different dates", and
  continuous symbology "maps to an actual, tradable instrument on any given date"
  (standards-and-conventions/symbology): symbols are resolved per day, point in time.

Each scenario runs against the local HTTPS server and a real store (DuckDB file, plain
PostgreSQL, TimescaleDB, the lake), and compares the stored rows field by field with what the
server serves for each (instrument, day) once.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import databento_dbn as dbn
import numpy as np
import pytest

import marketpipe
from marketpipe.config import IngestRequest, load_settings
from marketpipe.pipeline import RunSummary, ingest
from marketpipe.samples import write_dbn
from marketpipe.stores import migrations, open_store

from databento_server import DatabentoServer, records_for
from dbn_reference import MODEL
from pg import POSTGRES

DATASET = "GLBX.MDP3"
JAN = [dt.date(2024, 1, d) for d in range(2, 6)]  # 2024-01-02 .. 2024-01-05
CL = {"CLH4": 1001, "CLJ4": 1002}


@pytest.fixture
def db(store_location: str) -> str:
    return store_location


def served(instruments: list[int], days: list[dt.date]) -> Counter[tuple[object, ...]]:
    """What the server sends for these instruments and days, once each: the expected rows."""
    rows: Counter[tuple[object, ...]] = Counter()
    for iid in instruments:
        for day in days:
            for r in records_for("trades", iid, day):
                side = {b"A": "A", b"B": "B"}[bytes(r["side"])]
                price = Decimal(int(r["price"])) / 10**9
                rows[
                    (
                        iid,
                        int(r["ts_recv"]),
                        int(r["ts_event"]),
                        price,
                        int(r["size"]),
                        side,
                        int(r["sequence"]),
                    )
                ] += 1
    return rows


def stored(db: str, symbols: list[str] | None = None) -> Counter[tuple[object, ...]]:
    with marketpipe.open(db) as reader:
        table = reader.read("trades", symbols=symbols)
    times = {f: table[f].cast("int64").to_pylist() for f in ("ts_recv", "ts_event")}
    return Counter(
        (iid, recv, event, price, size, side, seq)
        for iid, recv, event, price, size, side, seq in zip(
            table["instrument_id"].to_pylist(),
            times["ts_recv"],
            times["ts_event"],
            table["price"].to_pylist(),
            table["size"].to_pylist(),
            table["side"].to_pylist(),
            table["sequence"].to_pylist(),
            strict=True,
        )
    )


def run(
    db: str,
    symbols: list[str],
    stype_in: str = "parent",
    days: list[dt.date] = JAN,
    force: bool = False,
    **extra: object,
) -> RunSummary:
    extra.setdefault("chunk_days", 7)  # one request for the week, unless a test splits it
    request = IngestRequest(
        dataset=DATASET, schemas=["trades"], symbols=symbols, stype_in=stype_in,
        start_date=days[0], end_date=days[-1], **extra,
    )  # fmt: skip
    summary = ingest(request, load_settings(db=db), model=MODEL, force=force)
    assert summary.exit_code == 0, summary.failed
    return summary


def downloads(api: DatabentoServer) -> int:
    return api.count("timeseries.get_range")


def test_a_rechunked_rerun_downloads_nothing_and_stores_nothing_twice(api: DatabentoServer, db: str) -> None:
    run(db, ["CL.FUT"], chunk_days=4)
    assert downloads(api) == 1
    expected = served(list(CL.values()), JAN)
    assert stored(db) == expected
    summary = run(db, ["CL.FUT"], chunk_days=2)
    assert downloads(api) == 1  # nothing downloaded, nothing billed
    assert any(
        n.startswith(f"already stored: {DATASET} trades CL.FUT 2024-01-02..2024-01-05") for n in summary.notes
    )
    assert stored(db) == expected


def test_a_contract_and_a_continuous_symbol_after_their_parent_download_nothing(
    api: DatabentoServer, db: str
) -> None:
    run(db, ["CL.FUT"], chunk_days=2)
    expected = served(list(CL.values()), JAN)
    run(db, ["CLH4"], stype_in="raw_symbol")
    run(db, ["CL.c.0"], stype_in="continuous", chunk_days=1)
    run(db, ["CLJ4"], stype_in="raw_symbol", days=JAN[1:3])  # narrower after wider
    assert downloads(api) == 2
    assert stored(db) == expected
    # Read by any symbol, through point-in-time symbology, each record once.
    assert stored(db, ["CLH4"]) == served([1001], JAN)
    assert stored(db, ["CL.FUT"]) == expected
    # The server's CL.c.0 is CLH4 through 2024-01-04 and CLJ4 from 2024-01-05.
    assert stored(db, ["CL.c.0"]) == served([1001], JAN[:3]) + served([1002], JAN[3:])


def test_a_wider_list_after_a_narrower_one_stores_each_record_once(api: DatabentoServer, db: str) -> None:
    run(db, ["CLH4"], stype_in="raw_symbol", chunk_days=7)
    run(db, ["CL.FUT", "ES.FUT"], chunk_days=7)  # CLJ4 and ES are new: downloaded, CLH4 replaced
    assert downloads(api) == 2
    assert stored(db) == served([1001, 1002, 2001, 2002], JAN)
    assert stored(db, ["CLH4"]) == served([1001], JAN)
    # The days and symbols already whole are left out of a request: ES.FUT for two more days
    # downloads only those two days.
    later = [dt.date(2024, 1, 8), dt.date(2024, 1, 9)]
    run(db, ["CL.FUT", "ES.FUT"], days=[*JAN, *later], chunk_days=7)
    ranges = [(p["start"][:10], p["end"][:10]) for name, p in api.calls if name == "timeseries.get_range"]
    assert ranges[-1] == ("2024-01-06", "2024-01-10")  # one request, weekend included
    assert stored(db) == served(
        [1001, 1002, 2001, 2002], [*JAN, dt.date(2024, 1, 6), dt.date(2024, 1, 7), *later]
    )


def test_force_downloads_again_and_replaces(api: DatabentoServer, db: str) -> None:
    run(db, ["CL.FUT"])
    run(db, ["CLH4"], stype_in="raw_symbol", force=True)
    assert downloads(api) == 2
    assert stored(db) == served(list(CL.values()), JAN)
    with marketpipe.open(db) as reader:
        symbols = dict(
            zip(*[reader.read("trades")[c].to_pylist() for c in ("instrument_id", "symbol")], strict=True)
        )
    assert symbols == {1001: "CLH4", 1002: "CL.FUT"}  # the symbol each was last requested by


def test_a_dry_run_quotes_only_what_is_missing(api: DatabentoServer, db: str, cli) -> None:  # type: ignore[no-untyped-def]
    run(db, ["CL.FUT"])
    before = len(api.calls)
    result = cli(
        "ingest", "--api", "databento", "--dataset", DATASET, "--schema", "trades", "--symbols", "CLH4,ESH4",
        "--start-date", "2024-01-02", "--end-date", "2024-01-05", "--dry-run", "--db", db,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    counted = [p for name, p in api.calls[before:] if name == "metadata.get_record_count"]
    assert counted and {p["symbols"] for p in counted} == {"ESH4"}
    assert downloads(api) == 1


def _file(
    server: DatabentoServer, path: Path, symbols: str, days: list[dt.date], stype_in: str = "parent"
) -> Path:
    params = {
        "dataset": DATASET, "schema": "trades", "symbols": symbols, "stype_in": stype_in,
        "start": str(days[0]), "end": str(days[-1] + dt.timedelta(days=1)),
    }  # fmt: skip
    meta, records = server.data(params)
    return write_dbn(path, meta, [records.tobytes()], compress=True)


def _days_and_week(server: DatabentoServer, days: Path, week: Path) -> None:
    """CL.FUT's trades of JAN as one file per day under ``days`` and one file ``week``."""
    for day in JAN:
        _file(server, days / f"{day}.dbn.zst", "CL.FUT", [day])
    _file(server, week, "CL.FUT", JAN)


def test_day_files_then_a_multi_day_file_store_each_record_once(
    server: DatabentoServer, db: str, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _days_and_week(server, tmp_path / "daily", tmp_path / "weekly" / "week.dbn.zst")
    assert cli("ingest", "--from-file", str(tmp_path / "daily"), "--db", db).exit_code == 0
    result = cli("ingest", "--from-file", str(tmp_path / "weekly"), "--db", db)
    assert result.exit_code == 0, result.output
    assert stored(db) == served(list(CL.values()), JAN)
    # The other way round: a contract's day file after the week replaces its part of the week.
    _file(server, tmp_path / "contract" / "clh4.dbn.zst", "CLH4", [JAN[1]], stype_in="raw_symbol")
    assert cli("ingest", "--from-file", str(tmp_path / "contract"), "--db", db).exit_code == 0
    assert stored(db) == served(list(CL.values()), JAN)
    # Parent files name no contract: the store knows CLH4 as what the contract's own file
    # said it was, on that file's day (definitions, where ingested, tell more).
    assert stored(db, ["CLH4"]) == served([1001], [JAN[1]])


def test_a_historical_file_replaces_a_live_recording_of_its_day(
    server: DatabentoServer, db: str, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    day = JAN[0]
    records = np.concatenate([records_for("trades", iid, day) for iid in CL.values()])
    records = records[np.argsort(records["ts_recv"], kind="stable")]
    kept = np.delete(records, 2)  # the gateway dropped a record
    meta = dbn.Metadata(
        dataset=DATASET, start=int(records["ts_recv"][0]), stype_in=dbn.SType.PARENT,
        stype_out=dbn.SType.INSTRUMENT_ID, schema=None, symbols=["CL.FUT"],
    )  # fmt: skip
    write_dbn(tmp_path / "live" / "session.dbn.zst", bytes(meta), [r.tobytes() for r in kept], compress=True)
    assert cli("ingest", "--from-file", str(tmp_path / "live"), "--db", db).exit_code == 0
    assert sum(stored(db).values()) == len(kept)
    _file(server, tmp_path / "hist" / "day.dbn.zst", "CL.FUT", [day])
    assert cli("ingest", "--from-file", str(tmp_path / "hist"), "--db", db).exit_code == 0
    assert stored(db) == served(list(CL.values()), [day])
    # The recording again: it holds only its own records, and the historical day stays whole.
    assert cli("ingest", "--from-file", str(tmp_path / "live"), "--db", db, "--force").exit_code == 0
    assert stored(db) == served(list(CL.values()), [day])


def test_replaced_rows_are_counted_in_the_ledger(api: DatabentoServer, tmp_path: Path) -> None:
    db = str(tmp_path / "store.duckdb")
    run(db, ["CLH4"], stype_in="raw_symbol")
    run(db, ["CL.FUT"])
    with closing(open_store(load_settings(db=db).store, MODEL, read_only=True)) as store:
        rows = store.ledger.fetch(  # type: ignore[attr-defined]
            "SELECT label, stored, replaced FROM marketpipe_chunks ORDER BY updated_at"
        )
    first, second = rows
    assert first[1] == first[2] == sum(served([1001], JAN).values())  # every CLH4 row replaced
    assert second[1] == sum(served(list(CL.values()), JAN).values()) and second[2] is None


# main as it was before identity by coverage: the release whose stores this one migrates.
PREVIOUS_RELEASE = "1e1569f"


@pytest.fixture
def previous_release(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The previous release's CLI, from this repository's history, with today's dependencies."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("no git history here: the previous release's source cannot be had")
    archive = tmp_path / "previous.tar"
    subprocess.run(
        ["git", "-C", str(root), "archive", f"--output={archive}", PREVIOUS_RELEASE, "src"], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "previous", filter="data")
    source = tmp_path / "previous" / "src"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        code = f"import sys; sys.path.insert(0, {str(source)!r}); from marketpipe.cli import main; main()"
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)

    return cli


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["duckdb", POSTGRES])
def test_a_store_of_the_previous_release_is_migrated(  # type: ignore[no-untyped-def]
    server: DatabentoServer, previous_release, cli, kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = str(tmp_path / "old.duckdb") if kind == "duckdb" else str(request.getfixturevalue("pg_url"))
    _days_and_week(server, tmp_path / "daily", tmp_path / "weekly" / "week.dbn.zst")
    old = previous_release("ingest", "--from-file", str(tmp_path / "daily"), "--db", db)
    assert old.returncode == 0, old.stderr

    def versions() -> set[int]:
        with closing(open_store(load_settings(db=db).store, MODEL, read_only=True)) as store:
            return {v for (v,) in store.ledger.fetch("SELECT version FROM marketpipe_migrations")}  # type: ignore[attr-defined]

    # Readers of this release read it as it is and migrate nothing.
    before = versions()
    assert migrations.COVERAGE not in before
    assert cli("status", "--db", db).exit_code == 0
    assert stored(db, ["CL.FUT"]) == served(list(CL.values()), JAN)
    assert versions() == before
    # This release opens it, moves its ledger on, and the same records again by another file
    # (the week) replace the days' rows instead of doubling them.
    result = cli("ingest", "--from-file", str(tmp_path / "weekly"), "--db", db)
    assert result.exit_code == 0, result.output
    assert stored(db) == served(list(CL.values()), JAN)
    with closing(open_store(load_settings(db=db).store, MODEL, read_only=True)) as store:
        inputs = store.ledger.fetch(  # type: ignore[attr-defined]
            "SELECT DISTINCT input_key, complete FROM marketpipe_coverage ORDER BY complete, input_key"
        )
    assert migrations.COVERAGE in versions()
    # The previous release's inputs cover their own rows (what was asked is not recorded).
    assert [c for _, c in inputs] == [False] * 4 + [True], inputs
    assert all(k.startswith("dbn:") and not k.endswith("+1000000") for k, _ in inputs)


def test_overlapping_inputs_in_one_run_with_writer_threads(
    server: DatabentoServer, db: str, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Day files and the week they make up, in one directory: lanes store them at once."""
    _days_and_week(server, tmp_path / "in", tmp_path / "in" / "week.dbn.zst")
    result = cli("ingest", "--from-file", str(tmp_path / "in"), "--db", db)  # two writers by default
    assert result.exit_code == 0, result.output
    assert stored(db) == served(list(CL.values()), JAN)


@pytest.mark.slow
def test_overlapping_inputs_from_two_processes_at_once(
    server: DatabentoServer, pg_url: str, tmp_path: Path
) -> None:
    """Two runs complete inputs of the same days at the same moment: the later one replaces
    the earlier's rows, whichever it is, so each record is stored once."""
    _days_and_week(server, tmp_path / "daily", tmp_path / "weekly" / "week.dbn.zst")
    _file(server, tmp_path / "contract" / "clh4.dbn.zst", "CLH4", JAN, stype_in="raw_symbol")
    expected = served(list(CL.values()), JAN)
    for round_ in range(3):
        runs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "marketpipe",
                    "ingest",
                    "--from-file",
                    str(tmp_path / folder),
                    "--db",
                    pg_url,
                    "--force",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for folder in ("daily", "weekly", "contract")
        ]
        for process in runs:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
        assert stored(pg_url) == expected, f"round {round_}"
