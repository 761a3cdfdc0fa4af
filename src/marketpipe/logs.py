"""structlog set-up: JSON lines to the log file, readable lines on the console (stderr)."""

from __future__ import annotations

import logging
from pathlib import Path

import structlog


def configure(log_file: Path, console_level: str) -> None:
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
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO)

    def drop_traceback(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        event.pop("traceback", None)  # tracebacks belong in the log file, never on the console
        return event

    console = logging.StreamHandler()
    console.setLevel(console_level.upper())
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                drop_traceback,
                structlog.dev.ConsoleRenderer(colors=False),
            ],
        )
    )
    root.addHandler(console)

    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
    except OSError:
        return  # an unwritable log location must not stop an ingest; the console still logs
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root.addHandler(file_handler)
    # Third-party chatter (HTTP connection pools) stays out of the user's console.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
