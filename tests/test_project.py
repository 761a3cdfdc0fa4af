"""Where settings and config files come from, `marketpipe init`, and the CLI's conventions:
flags > environment > .env > the project's configs/ in the working directory > the packaged
defaults; read-only commands leave no file where they run; help that reads at 80 columns."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from marketpipe.cli import app
from marketpipe.config import JOBS_FILE, PROJECT_FILES, packaged
from marketpipe.samples import make_sample


def _tree(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def test_init_writes_a_project_and_refuses_to_overwrite_it(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "research"
    result = cli("init", str(project))
    assert result.exit_code == 0, result.output
    expected = {*PROJECT_FILES.values(), "README.md", ".env.example"}
    assert {n for n in _tree(project) if (project / n).is_file()} == expected
    for name in PROJECT_FILES.values():  # the packaged defaults, comments and all
        assert (project / name).read_text() == packaged(name).read_text()
        assert (project / name).read_text().startswith("#")
    env = (project / ".env.example").read_text()
    assert "DATABENTO_API_KEY=" in env and "MARKETPIPE_DB" in env
    readme = (project / "README.md").read_text()
    assert all(name in readme for name in PROJECT_FILES.values())

    jobs = project / JOBS_FILE
    jobs.write_text("jobs: {}\n")
    again = cli("init", str(project))
    assert again.exit_code == 2
    lines = [line for line in again.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--force" in lines[0], again.output
    assert jobs.read_text() == "jobs: {}\n"  # nothing was written
    assert cli("init", str(project), "--force").exit_code == 0
    assert jobs.read_text() == packaged(JOBS_FILE).read_text()


def test_init_into_a_place_that_cannot_hold_it_is_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_text("x")
    result = cli("init", str(tmp_path / "file"))
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot write the project in") and "Traceback" not in result.output


def test_commands_in_a_project_read_its_files_and_settings_outrank_them(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "p"
    assert cli("init", str(project)).exit_code == 0
    make_sample(project / "data" / "sample")
    jobs = yaml.safe_load((project / JOBS_FILE).read_text())
    trades = "data/sample/glbx-mdp3-2024q1.trades.dbn.zst"
    jobs["jobs"]["my_trades"] = {"api": "databento", "from_file": trades}
    (project / JOBS_FILE).write_text(yaml.safe_dump(jobs))
    # A project rule that quarantines every trade shows the project's validation file is read.
    rules = project / "configs" / "validation" / "databento.yaml"
    document = yaml.safe_load(rules.read_text())
    document["rules"].append(
        {"name": "no_trades_here", "stage": "post", "severity": "error", "tables": ["trades"],
         "check": "false", "message": "the project refuses trades"}
    )  # fmt: skip
    rules.write_text(yaml.safe_dump(document))

    monkeypatch.chdir(project)
    listed = cli("list-jobs")
    assert listed.exit_code == 0 and "my_trades" in listed.output, listed.output
    result = cli("ingest", "--job", "my_trades", "--max-quarantine-ratio", "1", "--json")
    assert result.exit_code == 0, result.output
    assert '"no_trades_here": 2560' in result.output

    # The environment outranks the project; elsewhere the packaged defaults serve.
    other = tmp_path / "jobs.yaml"
    other.write_text("jobs:\n  only_this: {api: databento, from_file: x}\n")
    monkeypatch.setenv("MARKETPIPE_JOBS_FILE", str(other))
    assert "only_this" in cli("list-jobs").output and "my_trades" not in cli("list-jobs").output
    monkeypatch.delenv("MARKETPIPE_JOBS_FILE")
    monkeypatch.chdir(tmp_path)
    default = cli("list-jobs")
    assert "my_trades" not in default.output and "sample" in default.output


def test_a_dotenv_file_sets_what_the_environment_does_not(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    make_sample(tmp_path / "s")
    monkeypatch.delenv("MARKETPIPE_DB")
    (tmp_path / ".env").write_text(f"MARKETPIPE_DB={tmp_path / 'from-dotenv.duckdb'}\n")
    assert cli("ingest", "--from-file", str(tmp_path / "s")).exit_code == 0
    assert (tmp_path / "from-dotenv.duckdb").exists()
    monkeypatch.setenv("MARKETPIPE_DB", str(tmp_path / "from-env.duckdb"))
    assert cli("ingest", "--from-file", str(tmp_path / "s")).exit_code == 0
    assert (tmp_path / "from-env.duckdb").exists()
    flag = cli("ingest", "--from-file", str(tmp_path / "s"), "--db", str(tmp_path / "flag.duckdb"))
    assert flag.exit_code == 0
    assert (tmp_path / "flag.duckdb").exists()


def test_read_only_commands_leave_no_file_where_they_run(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The log goes to the per-user state directory (XDG_STATE_HOME here); nothing else."""
    make_sample(tmp_path / "s")
    store = tmp_path / "store.duckdb"
    assert cli("ingest", "--from-file", str(tmp_path / "s")).exit_code == 0
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.delenv("MARKETPIPE_LOG_FILE")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    out = tmp_path / "out.parquet"
    commands = [
        ["status"],
        ["export", "--schema", "trades", "--out", str(out)],
        ["query", "SELECT count(*) AS n FROM trades"],
        ["coverage", "--schema", "trades"],
        ["quarantine"],
        ["list-jobs"],
        ["version"],
        ["status", "--db", str(tmp_path / "missing.duckdb")],  # a failing one too
    ]
    for args in commands:
        result = cli(*args)
        assert result.exit_code in (0, 2), (args, result.output)
        assert _tree(empty) == set(), (args, _tree(empty))
    assert out.is_file() and store.is_file()
    assert (state / "marketpipe" / "log" / "marketpipe.jsonl").is_file()


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


COMMANDS = [
    "ingest", "query", "export", "list-jobs", "coverage", "status", "quarantine", "make-sample", "init"
]  # fmt: skip


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_reads_at_80_columns_with_every_option_whole(command: str) -> None:
    text = _help(*([command] if command else []))
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text
    group = typer.main.get_command(app)
    params = group.commands[command].params if command else group.params  # type: ignore[attr-defined]
    named = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", text))
    wanted = {"-h", "--help"} | {name for param in params for name in param.opts if name.startswith("-")}
    assert wanted <= named, wanted - named


def test_help_shows_defaults_day_forms_stypes_and_schemas() -> None:
    text = " ".join(_help("ingest").split())
    for default in ("data/marketpipe.duckdb", "250000", "0.05", "raw_symbol", "https://hist.databento.com"):
        assert default in text, default
    assert "YYYY-MM-DD, today, yesterday, -Nd or last" in text
    assert "parent, continuous, smart" in text
    assert "ohlcv-1d" in text and "mbp-10" in text and "definition" in text
    assert "--chunk-days <int> Days per API download [default: (1)]" in text


def test_version_short_help_and_completion(cli) -> None:  # type: ignore[no-untyped-def]
    from marketpipe import __version__

    assert cli("--version").output.strip() == f"marketpipe {__version__}"
    assert cli("-h").output.startswith("Usage: ") and "[OPTIONS] COMMAND" in cli("-h").output
    status = cli("status", "-h").output
    assert status.startswith("Usage: ") and " status [OPTIONS]" in status
    script = Path(sys.executable).with_name("marketpipe")  # the installed command, named as users call it
    completion = subprocess.run([script, "--show-completion", "bash"], capture_output=True, text=True)
    assert completion.returncode == 0 and "_MARKETPIPE_COMPLETE=complete_bash" in completion.stdout
    assert "--install-completion" in cli("-h").output


def test_options_spelled_with_underscores_are_taken(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    [_, trades] = make_sample(tmp_path / "s")
    assert cli("ingest", "--from_file", str(trades)).exit_code == 0
    out = tmp_path / "day.csv"
    result = cli("export", "--schema", "trades", "--out", str(out), "--format", "csv",
                 "--start_date", "2024-03-04", "--end_date=2024-03-04")  # fmt: skip
    assert result.exit_code == 0, result.output
    days = {line[:10] for line in out.read_text().splitlines()[1:]}
    assert days == {"2024-03-04"}
    assert "--start_date" not in _help("export")  # the alias is not advertised
    assert "No such option: --no_such" in cli("status", "--no_such").output


def test_verbose_shows_the_stages_and_quiet_hides_everything_but_errors(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_sample(tmp_path / "s")
    verbose = cli("-v", "ingest", "--from-file", str(tmp_path / "s"), "--json")
    assert verbose.exit_code == 0 and "stage.start" in verbose.stderr
    plain = cli("ingest", "--from-file", str(tmp_path / "s"), "--json", "--force")
    assert plain.exit_code == 0 and "stage.start" not in plain.stderr
    assert os.environ.get("MARKETPIPE_LOG_LEVEL") is None  # the flag's level ended with its command
    quiet = cli("-q", "status", "--db", str(tmp_path / "missing.duckdb"))
    assert quiet.exit_code == 2 and quiet.stderr.startswith("error: ")
    both = cli("-q", "-v", "status")
    assert both.exit_code == 2 and "--quiet / --verbose" in both.output
