from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marketpipe.cli import app
from pg import fresh_database

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "databento-samples"


def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"Databento sample files not found at {SAMPLES} (../shared is absent)")
    return SAMPLES


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the real server, dropped after the test."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def samples() -> Path:
    return samples_dir()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own DuckDB file and log file, and no .env from the checkout."""
    for name in list(os.environ):
        if name.startswith("MARKETPIPE_") or name.startswith("DATABENTO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MARKETPIPE_DB", str(tmp_path / "store.duckdb"))
    monkeypatch.setenv("MARKETPIPE_LOG_FILE", str(tmp_path / "logs" / "marketpipe.jsonl"))
    monkeypatch.setenv(
        "MARKETPIPE_JOBS_FILE", str(Path(__file__).resolve().parents[1] / "configs" / "databento.yaml")
    )
    yield


class Cli:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):  # type: ignore[no-untyped-def]
        return self.runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()
