"""Errors a user can act on: caught once at the CLI and printed as one line."""

from __future__ import annotations


class MarketpipeError(Exception):
    """Base of every error meant for the user, not for a traceback."""

    exit_code = 1


class UsageError(MarketpipeError):
    """Bad arguments or configuration: nothing was read or stored."""

    exit_code = 2


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
