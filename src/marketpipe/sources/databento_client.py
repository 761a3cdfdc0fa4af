"""Every call to Databento's Historical API, through the official client.

The client retries nothing itself; here each call goes through one tenacity policy: 408, 429
(honouring Retry-After), 5xx, connection resets, timeouts and truncated streams are retried
with capped exponential back-off and jitter; other HTTP errors fail at once in one line. The
API key is only ever handed to the client: every message is scrubbed of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import databento as db
import requests
import structlog
from databento.common.error import BentoError, BentoHttpError
from tenacity import Retrying

from marketpipe.components import ApiConfig
from marketpipe.errors import ApiRejected, Exhausted, SourceError, TransientApiError, UsageError
from marketpipe.retries import retrying

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
T = TypeVar("T")
log = structlog.get_logger("marketpipe.databento_api")


class ApiCalls:
    """The official client for one dataset, with the retry policy and the error translation."""

    def __init__(self, config: ApiConfig, dataset: str) -> None:
        if config.key is None or not config.key.strip():
            raise UsageError("no Databento API key: set DATABENTO_API_KEY (environment or .env)")
        self.config = config
        self.dataset = dataset
        self._key = config.key
        # The client misparses a gateway without a scheme (host:port) and only speaks https.
        gateway = config.gateway.strip()
        gateway = gateway if "://" in gateway else f"https://{gateway}"
        try:
            self.client = db.Historical(key=self._key, gateway=gateway)
        except ValueError as exc:
            raise UsageError(f"bad Databento gateway {config.gateway!r}: {self.scrub(exc)}") from None
        for api in (self.client.metadata, self.client.symbology, self.client.timeseries):
            api.TIMEOUT = config.timeout

    def policy(self, what: str, retry_on: type[TransientApiError]) -> Retrying:
        def log_retry(attempt: int, reason: str, wait: float) -> None:
            log.warning("api.retry", call=what, attempt=attempt, reason=reason, wait=wait)

        return retrying(
            self.config.retries,
            self.config.retry_wait,
            log_retry,
            retry_on=retry_on,
            max_wait=self.config.retry_max_wait,
            asked_wait=_retry_after,
        )

    def call(self, what: str, action: Callable[[], T]) -> T:
        """One API call under the retry policy; errors translated and scrubbed of the key."""
        try:
            for attempt in self.policy(what, TransientApiError):
                with attempt:
                    try:
                        return action()
                    except (BentoError, requests.RequestException, OSError) as exc:
                        raise self._translate(exc) from None
        except TransientApiError as exc:
            raise Exhausted(
                f"{what}: Databento API still failing after {self.config.retries} attempts: {exc}"
            ) from None
        except ApiRejected as exc:
            raise ApiRejected(f"{what}: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, exc: BaseException) -> SourceError:
        if isinstance(exc, BentoHttpError):
            status = exc.http_status
            detail = self.scrub(getattr(exc, "message", None) or exc.http_body or "")
            if status in TRANSIENT_STATUS:
                return TransientApiError(f"HTTP {status}: {detail}", _seconds(exc.headers, status))
            return ApiRejected(_rejection(status, self.dataset, detail))
        if isinstance(exc, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
            # An untrusted certificate will not be trusted on the next attempt either; a TLS
            # session cut short (EOF, reset) is a transport fault like any other.
            return ApiRejected(
                f"TLS to {self.config.gateway} failed: the server's certificate is not"
                " trusted (REQUESTS_CA_BUNDLE names the CA file requests trusts)"
            )
        if isinstance(exc, requests.RequestException):
            return TransientApiError(f"{type(exc).__name__}: {self.scrub(_root_reason(exc))}")
        if isinstance(exc, BentoError):
            return TransientApiError(f"{type(exc).__name__}: {self.scrub(exc)}")
        return SourceError(f"cannot write the download: {exc}")

    def scrub(self, value: object) -> str:
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        return text.replace(self._key, "***").splitlines()[0] if text else ""


def _retry_after(error: BaseException) -> float | None:
    return error.retry_after if isinstance(error, TransientApiError) else None


def _root_reason(exc: requests.RequestException) -> str:
    """What went wrong, without urllib3's pool, URL and retry wrapping around it."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None  # urllib3's MaxRetryError
    return str(reason or exc).split("): ", 1)[-1]


def _seconds(headers: Any, status: int | None) -> float | None:
    if status != 429 or headers is None:
        return None
    try:
        return float(headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None


def _rejection(status: int | None, dataset: str, detail: str) -> str:
    if status == 401:
        return "authentication failed: check DATABENTO_API_KEY"
    if status == 402:
        return f"payment required (402): {detail}"
    if status == 403:
        return f"access denied (403): {detail}"
    if status == 404:
        return f"not found (404): {detail or f'dataset {dataset}'}"
    return f"request rejected ({status}): {detail}"
