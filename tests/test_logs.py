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
