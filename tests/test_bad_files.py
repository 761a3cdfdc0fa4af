"""DBN files that are not valid: one line naming the file, non-zero exit, nothing of it stored."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import zstandard

from marketpipe.config import IngestRequest, load_settings
from marketpipe.errors import SourceError
from marketpipe.pipeline import ingest
from marketpipe.samples import Interval, make_sample, metadata_bytes, synthetic_trades, write_dbn
from marketpipe.sources.dbn_reader import DbnFile

from dbn_reference import MODEL


def _rows(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in MODEL.families}  # type: ignore[index]
    finally:
        con.close()


def _failures(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("failed:")]


@pytest.fixture
def mbo(samples: Path) -> bytes:
    return (samples / "test_data.mbo.dbn").read_bytes()


def _bad_files(tmp_path: Path, mbo: bytes) -> dict[str, tuple[Path, str]]:
    files = {
        "truncated": (mbo[:-20], "truncated"),
        "truncated_zst": (zstandard.ZstdCompressor().compress(mbo)[:-9], "truncated"),
        "empty": (b"", "empty file"),
        "text": (b"ts_event,price\n1,2\n", "not DBN data"),
        "metadata_only_cut": (mbo[:40], ""),
    }
    # A record whose length field disagrees with the layout: the stream is misaligned.
    corrupt = bytearray(mbo)
    header_len = 8 + int.from_bytes(mbo[4:8], "little")
    corrupt[header_len] = 3
    files["corrupt_length"] = (bytes(corrupt), "length does not match")
    out = {}
    for name, (data, reason) in files.items():
        path = tmp_path / "bad" / f"{name}.dbn"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        out[name] = (path, reason)
    return out


def test_each_bad_file_fails_alone_with_a_reason(cli, mbo: bytes, tmp_path: Path) -> None:
    for name, (path, reason) in _bad_files(tmp_path, mbo).items():
        result = cli("ingest", "--from-file", str(path))
        assert result.exit_code == 1, (name, result.output)
        failures = _failures(result.output)
        assert len(failures) == 1 and str(path) in failures[0] and reason in failures[0], (name, failures)
        assert "Traceback" not in result.output
        if (tmp_path / "store.duckdb").exists():
            assert sum(_rows(tmp_path / "store.duckdb").values()) == 0, name


def test_good_files_still_ingest_beside_bad_ones(cli, mbo: bytes, tmp_path: Path) -> None:
    bad = _bad_files(tmp_path, mbo)
    good = make_sample(tmp_path / "bad")  # same directory as the bad files
    result = cli("ingest", "--from-file", str(tmp_path / "bad"))
    assert result.exit_code == 1
    assert len(_failures(result.output)) == len(bad)
    rows = _rows(tmp_path / "store.duckdb")
    assert rows["ohlcv"] == 128 and rows["trades"] == 2560 and rows["mbo"] == 0
    assert len(good) == 2


def test_failed_chunk_is_recorded_and_rerun_resumes(cli, mbo: bytes, tmp_path: Path) -> None:
    path = tmp_path / "data" / "mbo.dbn"
    path.parent.mkdir()
    path.write_bytes(mbo[:-20])
    assert cli("ingest", "--from-file", str(path)).exit_code == 1
    status = cli("status")
    assert "failed" in status.output and "truncated" in status.output
    path.write_bytes(mbo)  # the user fixes the file
    assert cli("ingest", "--from-file", str(path)).exit_code == 0
    assert _rows(tmp_path / "store.duckdb")["mbo"] == 2


def test_reingest_same_file_is_skipped_then_forced_without_duplicates(tmp_path: Path) -> None:
    paths = make_sample(tmp_path / "s")
    cfg = load_settings(db=str(tmp_path / "x.duckdb"))
    first = ingest(IngestRequest(from_file=str(paths[1])), cfg)
    second = ingest(IngestRequest(from_file=str(paths[1])), cfg)
    forced = ingest(IngestRequest(from_file=str(paths[1])), cfg, force=True)
    assert [r.status for r in first.results] == ["done"]
    assert [r.status for r in second.results] == ["skipped"]
    assert [r.status for r in forced.results] == ["done"]
    assert _rows(tmp_path / "x.duckdb")["trades"] == 2560
    # Same content under another name is the same chunk: still no duplicates.
    copy = tmp_path / "copy.dbn.zst"
    copy.write_bytes(paths[1].read_bytes())
    ingest(IngestRequest(from_file=str(copy)), cfg, force=True)
    assert _rows(tmp_path / "x.duckdb")["trades"] == 2560


def test_a_zstd_file_cut_anywhere_in_its_last_bytes_is_rejected(tmp_path: Path) -> None:
    """zstd's stream reader ends quietly at a cut frame; a cut on a record boundary must not pass."""
    day = dt.date(2024, 3, 4)
    records = synthetic_trades(5_000, day)
    start = int(records["ts_event"].min())
    metadata = metadata_bytes("XNAS.ITCH", "trades", start, start + 86_400 * 10**9, "instrument_id", {})
    whole = zstandard.ZstdCompressor().compress(metadata + records.tobytes())
    path = tmp_path / "cut.dbn.zst"
    path.write_bytes(whole)
    assert DbnFile(path).inspect().total == 5_000
    two_frames = zstandard.ZstdCompressor().compress(metadata + records[:10].tobytes())
    path.write_bytes(two_frames + zstandard.ZstdCompressor().compress(records[10:].tobytes()))
    assert DbnFile(path).inspect().total == 5_000
    for cut in range(1, 64):
        path.write_bytes(whole[:-cut])
        with pytest.raises(SourceError, match="corrupt or truncated compressed data"):
            DbnFile(path).inspect()


@pytest.mark.slow
def test_decompression_bomb_fails_in_one_line_with_bounded_memory(tmp_path: Path) -> None:
    """A small .dbn.zst whose header declares 2 GiB of metadata (and holds them, as zeros)."""
    bomb = tmp_path / "in" / "bomb.dbn.zst"
    bomb.parent.mkdir()
    with bomb.open("wb") as raw, zstandard.ZstdCompressor(level=19).stream_writer(raw) as out:
        out.write(b"DBN\x03" + (2**31).to_bytes(4, "little"))
        zeros = bytes(2**24)
        for _ in range(2**31 // len(zeros)):
            out.write(zeros)
    assert bomb.stat().st_size < 2**20
    good = make_sample(tmp_path / "in" / "good")[0]
    measure = (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(r.returncode); print(r.stdout + r.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    args = ["ingest", "--from-file", str(tmp_path / "in"), "--db", str(tmp_path / "b.duckdb")]
    command = [sys.executable, "-c", measure, sys.executable, "-m", "marketpipe", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = done.stdout.splitlines()
    code, output, peak_kb = int(lines[0]), "\n".join(lines[1:-1]), int(lines[-1])
    assert code == 1, output
    failures = _failures(output)
    assert len(failures) == 1 and "declares 2,147,483,648 bytes of metadata" in failures[0], output
    assert peak_kb < 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
    assert _rows(tmp_path / "b.duckdb")["trades"] > 0  # the good file beside it is stored
    assert good.exists()


def test_corrupt_symbol_mapping_fails_its_file_alone(cli, tmp_path: Path) -> None:
    day = dt.date(2024, 3, 4)
    records = synthetic_trades(100, day)
    start = int(records["ts_event"].min())
    interval = [Interval(day, day + dt.timedelta(days=1), "5`82")]  # was 5482: one byte flipped
    bad = metadata_bytes(
        "XNAS.ITCH", "trades", start, start + 86_400 * 10**9, "raw_symbol", {"AAPL": interval}
    )
    write_dbn(tmp_path / "in" / "a_bad.dbn", bad, [records.tobytes()])
    good = metadata_bytes("XNAS.ITCH", "trades", start, start + 86_400 * 10**9, "raw_symbol", {})
    write_dbn(tmp_path / "in" / "b_good.dbn", good, [synthetic_trades(50, day, seed=4).tobytes()])
    result = cli("ingest", "--from-file", str(tmp_path / "in"))
    assert result.exit_code == 1
    assert "internal error" not in result.output
    [failure] = _failures(result.output)
    assert "a_bad.dbn: corrupt symbol mappings in the metadata" in failure
    assert _rows(tmp_path / "store.duckdb")["trades"] == 50
