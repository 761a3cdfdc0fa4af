"""A full disk under the store: one line naming the store, no partial chunk, no traceback."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from marketpipe.samples import synthetic_trades, write_trades_file


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: a real file system that fills up (mounting needs root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_stops_the_run_in_one_line_and_keeps_no_partial_chunk(
    small_disk: Path, cli, tmp_path: Path
) -> None:
    write_trades_file(tmp_path / "big.dbn", synthetic_trades(300_000, dt.date(2024, 3, 4), seed=1))
    store = small_disk / "store.duckdb"
    result = cli("ingest", "--from-file", str(tmp_path / "big.dbn"), "--db", str(store))
    output = result.output + result.stderr
    assert result.exit_code == 1, output
    assert "internal error" not in output and "Traceback" not in output
    stopped = [line for line in result.stderr.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and f"no space left on the device of {store}" in stopped[0]
    assert "nothing of it was kept" in stopped[0]
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM trades").fetchone() == (0,)
