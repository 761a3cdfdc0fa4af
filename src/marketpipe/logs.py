"""structlog set-up: JSON lines to the log file, readable lines on the console (stderr).

Every record, marketpipe's and other libraries' alike, passes the same scrubber, so a secret
(the API key) never reaches the console or the file, wherever a library put it (a gateway URL).
Retries and waits are shown on the console as they happen whatever the console level (but
``--quiet``'s): a user watching a quiet terminal should know it is retrying.

Used as a library (``marketpipe.open``, ``marketpipe.ingest``), marketpipe configures no
handler: its records go to the standard ``logging`` loggers under ``marketpipe`` and print
nothing unless the application configures logging (``as_library``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import structlog

# Events shown on the console as they happen, whatever the console level.
ALWAYS_SHOWN = frozenset({"api.retry", "db.retry", "chunk.retry", "chunk.waiting"})
REDACTED = "***"
_OURS = "marketpipe_handler"  # set on the handlers configure adds, so that it replaces only those


class _FileHandler(logging.FileHandler):
    """A log file that stops being writable (disk full, removed device) is said once."""

    def __init__(self, path: Path, owner: logging.Logger) -> None:
        super().__init__(path)
        self.owner = owner
        setattr(self, _OURS, True)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        error = sys.exc_info()[1]
        self.owner.removeHandler(self)
        with suppress(OSError):  # closing flushes, which fails the same way
            self.close()
        print(
            f"warning: cannot write the log file {self.baseFilename}: {error}; logging to the console only",
            file=sys.stderr,
        )


def _scrubber(secrets: Sequence[str]) -> structlog.types.Processor:
    def scrub(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        for key, value in event.items():
            if isinstance(value, str):
                for secret in secrets:
                    value = value.replace(secret, REDACTED)
                event[key] = value
        return event

    return scrub


def _console_filter(level: int) -> logging.Filter:
    class Shown(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            event = record.msg.get("event") if isinstance(record.msg, dict) else None
            return record.levelno >= level or (event in ALWAYS_SHOWN and level < logging.CRITICAL)

    return Shown()


def configure(log_file: Path, console_level: str, secrets: Sequence[str] = (), scope: str = "") -> None:
    """The console's and the log file's handlers, on the root logger for the CLI (the
    application: other libraries' records are scrubbed and filed too) or on the ``scope``
    logger alone (``"marketpipe"`` on a Dask worker, whose own logging is not ours). Only
    handlers marketpipe added earlier are replaced; the application's are left alone."""
    secrets = [s for s in secrets if s]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    target = logging.getLogger(scope or None)
    for handler in list(target.handlers):
        if getattr(handler, _OURS, False):
            target.removeHandler(handler)
            handler.close()
    target.setLevel(logging.INFO)
    target.propagate = not scope

    def drop_traceback(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        event.pop("traceback", None)  # tracebacks belong in the log file, never on the console
        return event

    level = logging.getLevelName(console_level.upper())
    level = level if isinstance(level, int) else logging.ERROR
    console = logging.StreamHandler()
    setattr(console, _OURS, True)
    console.setLevel(min(level, logging.WARNING))
    console.addFilter(_console_filter(level))
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                drop_traceback,
                _scrubber(secrets),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
        )
    )
    target.addHandler(console)

    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = _FileHandler(log_file, target)
    except OSError as exc:
        # An unwritable log location must not stop an ingest; the console still logs.
        print(f"warning: cannot write the log file {log_file}: {exc.strerror or exc}", file=sys.stderr)
        return
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _scrubber(secrets),
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    target.addHandler(file_handler)
    # Third-party chatter (HTTP connection pools) stays out of the user's console.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def as_library(secrets: Sequence[str] = ()) -> None:
    """Logging for marketpipe called from Python: a ``NullHandler`` on the ``marketpipe``
    logger (the logging HOWTO's advice to libraries: nothing is printed until the application
    configures logging), and structlog rendering into the standard loggers, one line per
    event (``event=chunk.start chunk=...``), with ``secrets`` scrubbed. An application that
    configured structlog itself keeps its configuration."""
    library = logging.getLogger("marketpipe")
    if not any(isinstance(h, logging.NullHandler) for h in library.handlers):
        library.addHandler(logging.NullHandler())
    processors = structlog.get_config()["processors"] if structlog.is_configured() else []
    if structlog.is_configured() and not any(getattr(p, "marketpipe_library", False) for p in processors):
        return
    scrub = _scrubber([s for s in secrets if s])
    scrub.marketpipe_library = True  # type: ignore[attr-defined]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.format_exc_info,
            scrub,
            structlog.processors.LogfmtRenderer(key_order=["event"]),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
