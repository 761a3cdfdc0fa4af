"""Settings (env and .env, via pydantic-settings) and ingest jobs (YAML, via pydantic).

Settings are found, first match wins: command-line flags, ``MARKETPIPE_*`` environment
variables, a ``.env`` file in the working directory, a project's config files (``configs/...``
in the working directory, as ``marketpipe init`` writes them), and the defaults that ship
inside the package (``marketpipe/configs/``).
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict
from pydantic_settings import BaseSettings, SettingsConfigDict

from marketpipe import defaults
from marketpipe.components import ApiConfig, RunConfig, StoreConfig
from marketpipe.defaults import STYPES
from marketpipe.errors import ConfigError, UsageError
from marketpipe.model import SCHEMAS
from marketpipe.parsing import LAST, parse_day, split_list
from marketpipe.registry import normalized

# The config files a project may hold, by their path relative to the project directory (the
# working directory); the package ships a default of each at the same path below it.
JOBS_FILE = "configs/databento.yaml"
TRANSFORMATION_FILE = "configs/transformations/databento.yaml"
VALIDATION_FILE = "configs/validation/databento.yaml"
CALENDARS_FILE = "configs/calendars.yaml"
PROJECT_FILES = {
    "jobs_file": JOBS_FILE,
    "transformation_file": TRANSFORMATION_FILE,
    "validation_file": VALIDATION_FILE,
    "calendars_file": CALENDARS_FILE,
}


def packaged(name: str) -> Path:
    """A file shipped inside the package, by its path relative to the package (its defaults:
    ``configs/...``; the project template: ``project/...``)."""
    return Path(str(resources.files("marketpipe").joinpath(name)))


def config_file(path: Path | None, name: str) -> Path:
    """The config file to read: ``path`` where settings name one (a flag, the environment,
    ``.env`` or the project: see ``Settings``), else the packaged default ``name``."""
    return packaged(name) if path is None else path


PROJECT_TEMPLATE = ("README.md", ".env.example")


def write_project(directory: Path, force: bool = False) -> list[Path]:
    """A project a user edits (``marketpipe init``): the packaged config files, each at its
    project path, and the template's README and ``.env.example``. Nothing is written where
    any of these files exists already, unless ``force`` (then they are replaced)."""
    files = {directory / name: packaged(name) for name in PROJECT_FILES.values()}
    files |= {directory / name: packaged(f"project/{name}") for name in PROJECT_TEMPLATE}
    existing = [path for path in files if path.exists()]
    if existing and not force:
        raise UsageError(f"{existing[0]} exists: nothing written (--force replaces the project's files)")
    try:
        for target, source in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot write the project in {directory}: {exc.strerror or exc}") from None
    return list(files)


def default_log_file() -> Path:
    """The per-user log file (platformdirs: ``~/.local/state/marketpipe/log`` on Linux), so
    that no command leaves a file in the directory it runs in."""
    return platformdirs.user_log_path("marketpipe", appauthor=False) / "marketpipe.jsonl"


# The extra that installs a URL protocol's fsspec filesystem (others: fsspec names the package).
FILESYSTEM_EXTRAS = {"s3": "s3", "s3a": "s3"}


def missing_filesystem(url: str, error: ImportError) -> str:
    """fsspec's own line for a filesystem that is not installed, and the extra to install."""
    extra = FILESYSTEM_EXTRAS.get(url.split("://", 1)[0])
    return f"{error} (pip install 'marketpipe[{extra}]')" if extra else str(error)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    """Where things live and how big batches are; ``MARKETPIPE_*`` variables or ``.env``."""

    model_config = SettingsConfigDict(env_prefix="MARKETPIPE_", env_file=".env", extra="ignore")

    db: str = defaults.DB
    # A lake's ledger (chunks, runs, quarantine, the lake's file list): a DuckDB file or a
    # PostgreSQL URL; a lake on a local disk keeps a DuckDB one in DIR/_marketpipe/ by default.
    ledger: str | None = None
    # PostgreSQL: the schema marketpipe's tables, views and ledger live in (made if missing);
    # None: the connection's current schema (public).
    pg_schema: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # The console's level (the log file takes INFO and above).
    log_level: str = defaults.LOG_LEVEL
    log_file: Path = Field(default_factory=default_log_file)
    batch_size: int = Field(defaults.BATCH_SIZE, gt=0)
    # Config files: None reads the packaged default (``config_file``); a relative path is
    # relative to the working directory.
    jobs_file: Path | None = None
    validation_file: Path | None = None
    calendars_file: Path | None = None
    transformation_file: Path | None = None
    # A chunk whose share of quarantined records is above this fails: nothing of it is stored.
    max_quarantine_ratio: float = Field(defaults.MAX_QUARANTINE_RATIO, ge=0, le=1)
    # PostgreSQL faults: attempts per connect and per chunk, first back-off in seconds.
    db_retries: int = Field(5, ge=1)
    db_retry_wait: float = Field(0.5, ge=0)
    # Chunks loaded at once, each through its own connection, where the store takes writer
    # threads: one PostgreSQL server process per COPY is the limit a single writer meets; DuckDB
    # inserts one chunk at a time while the others are read and checked.
    writers: int = Field(2, ge=1)
    # Cluster runs: API downloads at once across every worker. Databento allows a team 100
    # concurrent connections and 100 time-series requests a second (Historical API, "Rate
    # limits"); half leaves room for the metadata calls and for other tools of the same team.
    max_concurrent_downloads: int = Field(defaults.MAX_CONCURRENT_DOWNLOADS, ge=1, le=100)
    # DuckDB's own memory cap: keeps a long ingest's footprint flat (it spills beyond it; its
    # buffer pool fills up to the cap, README, "Measurements behind the code").
    duckdb_memory_limit: str = defaults.DUCKDB_MEMORY_LIMIT
    # ``marketpipe query`` on DuckDB and a lake: the user's own SQL is not an ingest, and a
    # count(distinct ...) over millions of rows needs more than ingest's cap. None: DuckDB's
    # own default (80% of the machine's memory). DuckDB's units: 2GB, 512MiB.
    query_memory_limit: str | None = None
    # TimescaleDB: compress chunks whose data is older than this many days (opt-in).
    compress_after_days: int | None = Field(None, gt=0)
    # Databento API faults (429, 5xx, resets, truncation): attempts per request, first and
    # longest back-off in seconds, and the client's socket timeout (databento's own is 100 s).
    api_retries: int = Field(6, ge=1)
    api_retry_wait: float = Field(1.0, ge=0)
    api_retry_max_wait: float = Field(60.0, ge=0)
    api_timeout: int = Field(100, ge=1)
    databento_api_key: SecretStr | None = Field(None, validation_alias="DATABENTO_API_KEY")
    databento_gateway: str = Field("https://hist.databento.com", validation_alias="DATABENTO_GATEWAY")

    def __getstate__(self) -> dict[Any, Any]:
        """Settings travel (a cluster's tasks and worker plugins, a planned source) without
        the API key: it is never pickled, and each worker reads its own DATABENTO_API_KEY."""
        state = super().__getstate__()
        return {**state, "__dict__": {**state["__dict__"], "databento_api_key": None}}

    @field_validator("db")
    @classmethod
    def _store_location(cls, value: str) -> str:
        """A location as its store kind (``stores.kind_of``) makes it canonical: a file path
        absolute, so every message names the file really used."""
        return normalized(value)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a level: {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator("ledger")
    @classmethod
    def _ledger_location(cls, value: str | None) -> str | None:
        return None if value is None else normalized(value, ledger=True)

    @property
    def api(self) -> ApiConfig:
        """The Databento client's own configuration, the key with it (never pickled)."""
        key = self.databento_api_key
        return ApiConfig(
            None if key is None else key.get_secret_value(), self.databento_gateway, self.api_timeout,
            self.api_retries, self.api_retry_wait, self.api_retry_max_wait, api_key,
        )  # fmt: skip

    @property
    def run(self) -> RunConfig:
        """The pipeline's own configuration."""
        return RunConfig(
            self.batch_size, self.writers, self.max_quarantine_ratio, self.db_retries, self.db_retry_wait
        )

    @property
    def store(self) -> StoreConfig:
        """The store's own configuration: what opening it takes and nothing more."""
        return StoreConfig(
            self.db, self.ledger, self.pg_schema, self.duckdb_memory_limit,
            self.db_retries, self.db_retry_wait, self.compress_after_days,
        )  # fmt: skip

    @model_validator(mode="after")
    def _project_files(self) -> Settings:
        """A config file not named by any setting comes from the project in the working
        directory where it has one, made absolute (a cluster worker may run elsewhere)."""
        for field, name in PROJECT_FILES.items():
            if getattr(self, field) is None and Path(name).is_file():
                setattr(self, field, Path(name).absolute())
        return self


def api_key() -> str | None:
    """The API key as this process finds it (DATABENTO_API_KEY, in its environment or .env):
    what a cluster worker's unpickled ``ApiConfig`` reads."""
    key = load_settings().databento_api_key
    return None if key is None else key.get_secret_value()


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise UsageError(f"bad setting: {first_error(exc)}") from None


SELECTS: JsonDict = {"role": "selects"}
RUN_OPTION: JsonDict = {"role": "run option"}


class IngestRequest(BaseModel):
    """One ingest: from the CLI's flags or a job in the jobs file."""

    model_config = ConfigDict(extra="forbid")

    name: str = "adhoc"
    description: str = ""
    api: str = "databento"
    from_file: str | None = None
    # What an API download fetches (``SELECTS``: a job names them in its file), and how a run
    # fetches (``RUN_OPTION``: a job takes them from the command line too); neither goes with
    # --from-file, which ingests every record of its files.
    dataset: str | None = Field(None, json_schema_extra=SELECTS)
    schemas: list[str] = Field(default_factory=list, json_schema_extra=SELECTS)
    symbols: list[str] = Field(default_factory=list, json_schema_extra=SELECTS)
    stype_in: str = Field(defaults.STYPE_IN, json_schema_extra=SELECTS)
    # A date, or a relative day (DAY_FORMS) that ``resolve_day`` turns into one at run time.
    start_date: dt.date | str | None = Field(None, json_schema_extra=SELECTS)
    end_date: dt.date | str | None = Field(None, json_schema_extra=SELECTS)
    # Where ``start_date: last`` starts while the job has stored nothing yet.
    first_start_date: dt.date | str | None = None
    # Only the sessions coverage finds not done (``--fill-gaps``); the pipeline sets gap_days.
    fill_gaps: bool = Field(False, json_schema_extra=RUN_OPTION)
    gap_days: dict[str, list[dt.date]] | None = None
    # API downloads: days per chunk, where to keep the downloaded DBN files, cost ceiling (USD).
    chunk_days: int = Field(defaults.CHUNK_DAYS, ge=1, json_schema_extra=RUN_OPTION)
    keep_raw: Path | None = Field(None, json_schema_extra=RUN_OPTION)
    max_cost: float | None = Field(None, ge=0, json_schema_extra=RUN_OPTION)

    @classmethod
    def fields_of(cls, *roles: JsonDict) -> list[str]:
        """The fields of these roles (``SELECTS``, ``RUN_OPTION``), in declaration order."""
        return [n for n, f in cls.model_fields.items() if f.json_schema_extra in roles]

    @staticmethod
    def flag(field: str) -> str:
        """The CLI flag that sets ``field`` (``schemas`` is ``--schema``)."""
        return "--schema" if field == "schemas" else "--" + field.replace("_", "-")

    @field_validator("schemas", "symbols", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_list(value) if isinstance(value, str) else value

    @field_validator("start_date", "end_date", "first_start_date", mode="before")
    @classmethod
    def _day(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or not isinstance(value, str | dt.date):
            return value
        day = parse_day(value)
        if day == LAST and info.field_name != "start_date":
            raise ValueError("last names a start: the day after the last day the job stored")
        return day

    @field_validator("schemas")
    @classmethod
    def _known_schemas(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in SCHEMAS]
        if unknown:
            raise ValueError(f"unknown schema {unknown[0]!r}; known schemas: {', '.join(SCHEMAS)}")
        return value

    @field_validator("stype_in")
    @classmethod
    def _known_stype(cls, value: str) -> str:
        if value not in STYPES:
            raise ValueError(f"unknown stype_in {value!r}; known: {', '.join(STYPES)}")
        return value

    @model_validator(mode="after")
    def _dates_in_order(self) -> IngestRequest:
        start, end = self.start_date, self.end_date
        if isinstance(start, dt.date) and isinstance(end, dt.date) and end < start:
            raise ValueError(f"end date {self.end_date} is before start date {self.start_date}")
        return self

    @model_validator(mode="after")
    def _files_are_ingested_whole(self) -> IngestRequest:
        """What selects and limits API downloads would be silently ignored with files."""
        api_only = self.fields_of(SELECTS, RUN_OPTION)
        given = [name for name in api_only if name in self.model_fields_set]
        if self.from_file and given:
            flag = self.flag(given[0])
            raise ValueError(
                f"{flag} ({given[0]}) selects API downloads; with --from-file (from_file) every"
                " record of the files is ingested: drop it"
            )
        return self


def first_error(exc: ValidationError) -> str:
    """A validation error as one line: where (dotted path) and what."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def make_request(**fields: Any) -> IngestRequest:
    """An ingest request from CLI flags; a bad value is a UsageError naming the flag."""
    try:
        return IngestRequest(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise UsageError(first_error(exc)) from None


# libyaml's parser where PyYAML was built with it (about 10x faster than the pure-Python one;
# the constructor, resolvers and error marks stay PyYAML's).
SafeLoader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _JobLoader(SafeLoader):
    """YAML without implicit timestamps: pydantic parses dates, so a bad one names its field."""


_JobLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(path: Path, what: str, loader: type[Any] = SafeLoader) -> Any:
    """A YAML file's document; one ConfigError line naming the file (and line) otherwise."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None


def load_calendars(path: Path | None) -> dict[str, str]:
    """Dataset -> exchange calendar name (``path`` None: the packaged default); a malformed
    file names the file."""
    path = config_file(path, CALENDARS_FILE)
    document = read_yaml(path, "calendars file") or {}
    calendars = document.get("calendars") if isinstance(document, dict) else None
    if not isinstance(calendars, dict) or not all(isinstance(v, str) for v in calendars.values()):
        raise ConfigError(f"{path}: calendars: expected a mapping of dataset to calendar name")
    return {str(k): v for k, v in calendars.items()}


def load_jobs(path: Path | None) -> dict[str, IngestRequest]:
    """Jobs by name (``path`` None: the packaged default); a malformed file names the file and
    the field."""
    path = config_file(path, JOBS_FILE)
    document = read_yaml(path, "jobs file", _JobLoader) or {}
    jobs = document.get("jobs") if isinstance(document, dict) else None
    if not isinstance(jobs, dict):
        raise ConfigError(f"{path}: jobs: expected a mapping of job name to job settings")
    result = {}
    for name, body in jobs.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: jobs.{name}: expected a mapping of settings")
        try:
            result[str(name)] = IngestRequest(name=str(name), **body)
        except ValidationError as exc:
            raise ConfigError(f"{path}: jobs.{name}.{first_error(exc)}") from None
    return result
