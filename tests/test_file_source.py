"""Large files are split into parts; each part reads exactly its own records."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zstandard

from marketpipe.config import IngestRequest, load_settings
from marketpipe.errors import ConfigError, SourceError
from marketpipe.exporting import export
from marketpipe.pipeline import ingest
from marketpipe.samples import make_sample
from marketpipe.sources.databento_files import DbnFileSource
from marketpipe.sources.dbn_reader import DbnFile
from marketpipe.stores import open_store

from dbn_reference import MODEL, canonical, decoded_records, expected_rows, exported_rows


@pytest.mark.parametrize("compressed", [False, True])
def test_parts_cover_every_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool
) -> None:
    monkeypatch.setattr(DbnFileSource, "PART_RECORDS", 1000)
    trades = make_sample(tmp_path / "s")[1]  # 2,560 trades, zstd
    if not compressed:
        plain = tmp_path / "trades.dbn"
        plain.write_bytes(zstandard.ZstdDecompressor().stream_reader(trades.read_bytes()).read())
        trades = plain
    source = DbnFileSource(str(trades))
    chunks = source.plan().chunks
    assert [(c.first_record, c.record_count) for c in chunks] == [(0, 1000), (1000, 1000), (2000, 560)]
    assert "[records 1,000-1,999]" in chunks[1].label
    read = np.concatenate([b.records for c in chunks for b in source.read(c, 300)])
    assert read.tobytes() == decoded_records(trades)[1].tobytes()


def test_upgraded_file_in_parts_round_trips(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DbnFileSource, "PART_RECORDS", 1)
    path = samples / "test_data.definition.v1.dbn.zst"
    cfg = load_settings(db=str(tmp_path / "p.duckdb"))
    summary = ingest(IngestRequest(from_file=str(path)), cfg)
    assert [r.stored for r in summary.results] == [1, 1]
    store = open_store(cfg.store, MODEL)
    try:
        export(store, "definition", "parquet", tmp_path / "d.parquet", [], None, None, 10)
    finally:
        store.close()
    assert canonical(exported_rows(tmp_path / "d.parquet")[1]) == canonical(expected_rows(path)[1])


def test_batches_are_bounded(tmp_path: Path) -> None:
    """Memory does not grow with the file: no batch holds more than batch_size records."""
    make_sample(tmp_path / "s")
    source = DbnFileSource(str(tmp_path / "s"))
    sizes = [len(b.records) for c in source.plan().chunks for b in source.read(c, 100)]
    assert max(sizes) == 100 and sum(sizes) == 128 + 2560


def test_same_data_twice_in_one_run_is_planned_once(tmp_path: Path) -> None:
    trades = make_sample(tmp_path / "s")[1]
    (tmp_path / "s" / "copy.dbn").write_bytes(
        zstandard.ZstdDecompressor().stream_reader(trades.read_bytes()).read()
    )
    plan = DbnFileSource(str(tmp_path / "s")).plan()
    assert sorted(c.schema for c in plan.chunks) == ["ohlcv-1d", "trades"]


def _runs_copies() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("marketpipe-inputs-*"))


def test_files_at_an_fsspec_url_are_the_same_inputs(tmp_path: Path) -> None:
    """``file://`` and a non-local filesystem (fsspec's in-memory one, standing in for s3://):
    the same records as the local path, so the chunks are the ones already stored; the copies
    of remote files go with the run."""
    paths = make_sample(tmp_path / "s")
    memory = fsspec.filesystem("memory")
    for path in paths:
        memory.pipe(f"/marketpipe-inputs-test/{path.name}", path.read_bytes())
    settings = load_settings(db=str(tmp_path / "store.duckdb"))
    local = ingest(IngestRequest(from_file=str(tmp_path / "s")), settings)
    assert local.totals().stored == 2_688
    copies = _runs_copies()
    for url in (f"file://{tmp_path / 's'}", "memory://marketpipe-inputs-test/"):
        again = ingest(IngestRequest(from_file=url), settings)
        assert again.exit_code == 0  # the same records: the chunks are stored already
        assert [r.status.value for r in again.results] == ["skipped", "skipped"]
        forced = ingest(IngestRequest(from_file=url), settings, force=True)
        assert forced.totals().stored == 2_688
    assert _runs_copies() == copies
    store = open_store(settings.store, MODEL, read_only=True)
    try:
        export(store, "trades", "parquet", tmp_path / "t.parquet", [], None, None, 1000)
    finally:
        store.close()
    assert canonical(exported_rows(tmp_path / "t.parquet")[1]) == canonical(expected_rows(paths[1])[1])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "bogus://bucket/trades.dbn",
            "error: --from-file bogus://bucket/trades.dbn: Protocol not known: bogus",
        ),
        ("memory://nowhere/at-all", "error: no such file or directory: memory://nowhere/at-all"),
        ("file:///nonexistent/*.dbn.zst", "error: no files match file:///nonexistent/*.dbn.zst"),
    ],
)
def test_a_bad_input_url_is_one_line(cli, url: str, message: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("ingest", "--from-file", url)
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.strip()] == [message]


def test_an_inspection_ends_when_its_run_stops(tmp_path: Path) -> None:
    trades = make_sample(tmp_path / "s")[1]
    stop = threading.Event()
    assert DbnFile(trades).inspect(stop).total == 2_560
    stop.set()
    with pytest.raises(SourceError, match="not inspected: the run stopped"):
        DbnFile(trades).inspect(stop)


def test_bad_rules_stop_the_planning_of_the_inputs(tmp_path: Path) -> None:
    """Inputs are read from the moment the source exists, while the rules load: rules that
    fail leave no reading behind (and no store)."""
    make_sample(tmp_path / "s")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules: [{name: x, stage: post, severity: error, check: 'no_such_column > 0', message: m}]\n"
    )
    settings = load_settings(db=str(tmp_path / "never.duckdb"), validation_file=str(rules))
    with pytest.raises(ConfigError, match="rule x"):
        ingest(IngestRequest(from_file=str(tmp_path / "s")), settings)
    assert not [t for t in threading.enumerate() if t.name.startswith("marketpipe-plan")]
    assert not (tmp_path / "never.duckdb").exists()


def test_inputs_are_read_ahead_of_the_plan_a_bounded_few(tmp_path: Path) -> None:
    """Each inspected input holds its metadata until planned: the source reads ahead of the plan
    by ``AHEAD`` inputs, not the whole directory. The kernel says which files were opened
    (inotify), so nothing of the source is patched to count."""
    from inotify_simple import INotify, flags

    folders = [tmp_path / "s" / str(day) for day in range(3)]
    for folder in folders:
        make_sample(folder)  # 6 files
    with INotify() as inotify:
        watches = {inotify.add_watch(folder, flags.OPEN): folder for folder in folders}

        def opened() -> set[Path]:
            return {watches[e.wd] / e.name for e in inotify.read(timeout=0) if e.name}

        source = DbnFileSource(str(tmp_path / "s"))
        try:
            for future in list(source._ahead):  # the read-ahead's own work, done
                future.result()
            seen = opened()
            assert len(seen) == DbnFileSource.AHEAD, seen
            plan = source.plan()
            seen |= opened()
            assert len(seen) == 6 and len(plan.inputs) + len(plan.duplicates) == 6
        finally:
            source.close()
