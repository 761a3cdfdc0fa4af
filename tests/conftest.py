from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marketpipe.cli import app

from databento_server import DatabentoServer
from pg import ADMIN_URL, POSTGRES, TIMESCALE, TIMESCALE_ADMIN_URL, fresh_database, reachable

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "databento-samples"


def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"Databento sample files not found at {SAMPLES} (../shared is absent)")
    return SAMPLES


_UNREACHABLE = pytest.StashKey[dict[str, str | None]]()


def _server(request: pytest.FixtureRequest, admin: str) -> None:
    """Skip where the server is down (``-m "not postgres"`` deselects these tests), or fail
    where MARKETPIPE_REQUIRE_POSTGRES is set (CI), so no server test passes by being skipped."""
    checked = request.config.stash.setdefault(_UNREACHABLE, {})
    if admin not in checked:
        checked[admin] = reachable(admin)
    reason = checked[admin]
    if reason is not None:
        if os.environ.get("MARKETPIPE_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(f"{reason}: start it, or deselect with -m 'not postgres'")


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database on the real server, dropped after the test."""
    if request.node.get_closest_marker("postgres") is None:  # asked for through getfixturevalue
        pytest.fail(f"{request.node.nodeid} uses PostgreSQL: mark it postgres (pg.SERVER on its parameter)")
    _server(request, ADMIN_URL)
    with fresh_database() as url:
        yield url


_TIMESCALE_RUNS = pytest.StashKey[int]()


@pytest.fixture
def timescale_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database on the real TimescaleDB cluster, dropped after the test.

    Without that cluster the test is skipped, or fails where MARKETPIPE_REQUIRE_TIMESCALE is
    set (CI), so TimescaleDB mode can never pass by being skipped.
    """
    if not TIMESCALE_ADMIN_URL:
        reason = "no TimescaleDB cluster: MARKETPIPE_TEST_TIMESCALE is unset (scripts/test.sh starts one)"
        if os.environ.get("MARKETPIPE_REQUIRE_TIMESCALE"):
            pytest.fail(reason)
        pytest.skip(reason)
    if request.node.get_closest_marker("timescale") is None:  # asked for through getfixturevalue
        pytest.fail(f"{request.node.nodeid} uses TimescaleDB: mark it timescale (pg.TIMESCALE)")
    _server(request, TIMESCALE_ADMIN_URL)
    config = request.config
    config.stash[_TIMESCALE_RUNS] = config.stash.get(_TIMESCALE_RUNS, 0) + 1
    with fresh_database(TIMESCALE_ADMIN_URL) as url:
        yield url


@pytest.fixture(params=[POSTGRES, TIMESCALE])
def server_url(request: pytest.FixtureRequest) -> str:
    """A fresh database in each mode: the machine's cluster (TimescaleDB installed, not
    preloaded: plain PostgreSQL) and the cluster that preloads TimescaleDB."""
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "timescale_url"))


PLUGINS = Path(__file__).parent / "plugins"


def pytest_configure(config: pytest.Config) -> None:
    """marketpipe run as a program by a test finds the tests' plugin too (pytest's
    ``pythonpath`` puts it on this process's path only)."""
    paths = [str(PLUGINS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


@pytest.fixture(params=["duckdb", POSTGRES, TIMESCALE, "lake", "arrow"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store of each kind: a DuckDB file, plain PostgreSQL, TimescaleDB, a lake, and
    a kind marketpipe does not know, registered by the tests' plugin (tests/plugins)."""
    if request.param == "duckdb":
        return str(tmp_path / "store.duckdb")
    if request.param == "lake":
        return f"lake:{tmp_path / 'lake'}"
    if request.param == "arrow":
        return f"arrow:{tmp_path / 'arrow'}"
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "timescale_url"))


# Markers a test gets from the fixtures it uses: what it needs to run.
_NEEDS = {
    "pg_url": ("postgres",),
    "timescale_url": ("postgres", "timescale"),
    "server": ("api",),
    "api": ("api",),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            for marker in _NEEDS.get(fixture, ()):
                item.add_marker(marker)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    runs = config.stash.get(_TIMESCALE_RUNS, 0)
    where = TIMESCALE_ADMIN_URL or "no cluster (MARKETPIPE_TEST_TIMESCALE unset)"
    terminalreporter.write_line(f"TimescaleDB mode: {runs} tests ran against {where}")


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
    yield


class Cli:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):  # type: ignore[no-untyped-def]
        return self.runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()


KEY = "db-TESTKEY0123456789abcdefghijklm"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabentoServer]:
    """A local HTTPS server speaking Databento's Historical API (tests/databento_server.py)."""
    api = DatabentoServer(tmp_path_factory.mktemp("api"), KEY)
    yield api
    api.close()


@pytest.fixture
def api(server: DatabentoServer, monkeypatch: pytest.MonkeyPatch) -> DatabentoServer:
    """The server with no faults queued; the client pointed at it and trusting its test CA."""
    server.reset()
    monkeypatch.setenv("DATABENTO_API_KEY", KEY)
    monkeypatch.setenv("DATABENTO_GATEWAY", server.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))
    monkeypatch.setenv("MARKETPIPE_API_RETRY_WAIT", "0.01")
    monkeypatch.setenv("MARKETPIPE_API_RETRY_MAX_WAIT", "2")
    monkeypatch.setenv("MARKETPIPE_API_TIMEOUT", "1")
    return server
