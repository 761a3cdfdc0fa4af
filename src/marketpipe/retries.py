"""One retry policy for transient faults (tenacity): exponential back-off with jitter, capped."""

from __future__ import annotations

from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from marketpipe.errors import TransientStoreError


def retrying(
    attempts: int,
    first_wait: float,
    on_retry: Callable[[int, str], None],
    retry_on: type[BaseException] = TransientStoreError,
) -> Retrying:
    """Retry ``retry_on`` up to ``attempts`` times; ``on_retry(attempt, reason)`` logs each one."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        on_retry(state.attempt_number, str(error))

    return Retrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(multiplier=first_wait, max=30, jitter=first_wait),
        before_sleep=before_sleep,
        reraise=True,
    )
