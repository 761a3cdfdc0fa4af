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
    on_retry: Callable[[int, str, float], None],
    retry_on: type[BaseException] = TransientStoreError,
    max_wait: float = 30.0,
    asked_wait: Callable[[BaseException], float | None] | None = None,
) -> Retrying:
    """Retry ``retry_on`` up to ``attempts`` times; ``on_retry(attempt, reason, wait)`` logs each one.

    ``asked_wait`` reads a wait the fault itself asks for (HTTP Retry-After): the back-off
    is then at least that long, and never longer than ``max_wait``.
    """
    backoff = wait_exponential_jitter(multiplier=first_wait, max=max_wait, jitter=first_wait)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        asked = asked_wait(error) if asked_wait is not None and error is not None else None
        return min(max_wait, max(asked or 0.0, backoff(state)))

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        on_retry(state.attempt_number, str(error), round(wait, 3))

    return Retrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop_after_attempt(attempts),
        wait=wait,
        before_sleep=before_sleep,
        reraise=True,
    )
