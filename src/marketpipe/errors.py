"""Errors a user can act on: caught once at the CLI and printed as one line."""

from __future__ import annotations

import re


class MarketpipeError(Exception):
    """Base of every error meant for the user, not for a traceback."""

    exit_code = 1


class UsageError(MarketpipeError):
    """Bad arguments or configuration: nothing was read or stored."""

    exit_code = 2


class NothingMatched(MarketpipeError):
    """A read that selects no record (an export of a schema never ingested, of days or
    symbols the store does not hold): said, and exit code 3, so a script can tell."""

    exit_code = 3


class ConfigError(UsageError):
    """A configuration file that cannot be used as it is."""


class SourceError(MarketpipeError):
    """One input (a file, an API chunk) cannot be read; other inputs still run."""


class StoreError(MarketpipeError):
    """The store failed in a way retrying will not fix; the run stops."""


class TransientStoreError(StoreError):
    """A fault worth retrying (connection lost, admin shutdown, serialization failure, deadlock)."""


class StoreRejected(UsageError):
    """The store refused us for good: bad path, missing database, bad credentials, no permission."""


class TransientApiError(SourceError):
    """A Databento API fault worth retrying (429, 408, 5xx, reset, timeout, truncated stream)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ApiRejected(SourceError):
    """Databento refused the request for good (bad key, unknown dataset, bad parameters)."""

    exit_code = 2


class QuarantineRatioExceeded(SourceError):
    """Too many records of one chunk broke rules: the chunk fails as a whole."""


class TruncatedStream(TransientApiError):
    """The download ended early but cleanly: only the quoted record count tells."""


class Exhausted(SourceError):
    """Retries of one call ran out: the chunk fails (the policy of an enclosing call must not retry)."""


class CountMismatch(MarketpipeError):
    """read != stored + quarantined: a bug, never data to keep."""


class ChunkAlreadyStored(MarketpipeError):
    """Another run stored the chunk while this one waited for it: the pipeline skips it (it
    never reaches the user)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, a container or systemd stopping the run), handled as Ctrl-C is:
    the chunks in flight roll back, finished ones are kept, the run is recorded interrupted."""

    # Set by the console script's SIGTERM handler, so that an interrupt a library reported as
    # its own error is still known to be a SIGTERM (``interruption``): the process's signal
    # record, not state of marketpipe's.
    requested = False


def interruption() -> KeyboardInterrupt:
    """The interrupt that a library turned into its own error (DuckDB raises ``RuntimeError:
    Query interrupted`` in place of the exception a signal handler raised during a query)."""
    return Terminated() if Terminated.requested else KeyboardInterrupt()


def interrupted_query(exc: BaseException) -> bool:
    """DuckDB's report of a signal that came while it ran a query on the main thread (a
    validation check, a store's statement): ``Query interrupted``, or the interrupt raised in
    its scan of an Arrow batch, wrapped (``... 'batch' failed: KeyboardInterrupt``); or any
    error raised while an interrupt was being handled. ``interruption()`` is what it was."""
    text = str(exc)
    return (
        text == "Query interrupted"
        or re.search(r"failed: (KeyboardInterrupt|Terminated)\b", text) is not None
        or _while_interrupted(exc)
    )


def _while_interrupted(exc: BaseException) -> bool:
    """Raised while an interrupt was being handled (a rollback on a DuckDB connection the
    signal left with a pending result): the stop, not a fault of its own."""
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False
