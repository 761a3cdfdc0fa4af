"""Logging faults in one line, and no secret in any log record, marketpipe's or a library's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import structlog

from marketpipe.logs import configure

KEY = "db-SECRETSECRETSECRETSECRETSECRE"


def test_other_libraries_records_are_scrubbed_of_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "log.jsonl"
    configure(log_file, "INFO", [KEY])
    logging.getLogger("databento.historical").warning("GET https://%s@hist.example/v0/timeseries", KEY)
    structlog.get_logger("marketpipe").error("api.failed", gateway=f"https://{KEY}@hist.example")
    written = log_file.read_text()
    shown = capsys.readouterr().err
    assert "hist.example" in written and "hist.example" in shown
    assert KEY not in written and KEY not in shown
    assert "***" in written


def test_unwritable_log_file_is_one_warning_and_logging_goes_on(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MARKETPIPE_LOG_FILE", "/dev/full")  # every write fails: no space left
    assert cli("make-sample", "--out", str(tmp_path / "sample")).exit_code == 0
    result = cli("ingest", "--from-file", str(tmp_path / "sample"))
    assert result.exit_code == 0, result.output
    assert "Logging error" not in result.output and "Traceback" not in result.output
    warnings = [
        line for line in result.stderr.splitlines() if line.startswith("warning: cannot write the log file")
    ]
    assert len(warnings) == 1 and "/dev/full" in warnings[0]


def test_log_directory_that_cannot_exist_is_one_warning(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("MARKETPIPE_LOG_FILE", str(tmp_path / "a_file" / "logs" / "m.jsonl"))
    result = cli("list-jobs")
    assert result.exit_code == 0
    assert result.stderr.startswith(
        f"warning: cannot write the log file {tmp_path / 'a_file' / 'logs' / 'm.jsonl'}"
    )


def test_configure_replaces_only_its_own_handlers_and_a_worker_leaves_the_root_alone(
    tmp_path: Path,
) -> None:
    """The CLI's set-up replaces the handlers it added before, never the application's (a
    Dask worker's, pytest's); a worker's (scope "marketpipe") adds none to the root logger."""
    root, library = logging.getLogger(), logging.getLogger("marketpipe")
    theirs = logging.StreamHandler()
    root.addHandler(theirs)
    before = list(root.handlers), list(library.handlers), library.propagate
    try:
        configure(tmp_path / "a.jsonl", "ERROR")
        configure(tmp_path / "a.jsonl", "ERROR")
        ours = [h for h in root.handlers if getattr(h, "marketpipe_handler", False)]
        assert theirs in root.handlers and len(ours) == 2  # the console and the file, once
        for handler in ours:
            root.removeHandler(handler)
            handler.close()
        configure(tmp_path / "worker.jsonl", "ERROR", scope="marketpipe")
        assert not any(getattr(h, "marketpipe_handler", False) for h in root.handlers)
        assert theirs in root.handlers and library.propagate is False
        structlog.get_logger("marketpipe.worker").error("chunk.failed", chunk="x")
        assert "chunk.failed" in (tmp_path / "worker.jsonl").read_text()
    finally:
        root.removeHandler(theirs)
        for handler in list(library.handlers):
            if getattr(handler, "marketpipe_handler", False):
                library.removeHandler(handler)
                handler.close()
        library.propagate = before[2]
