"""The retry policy: how one `deliver` call sends a document to a target, for every target alike.

Owns backoff (full-jitter exponential, capped, honouring Retry-After), settling unknown outcomes
by asking the target before sending again, and the hand-off to the pipeline: `deliver` returns
what happened — `Delivered`, `Deferred` when transient trouble outlasts what a worker thread should
wait for, or `Refused` when the target said no (PermanentError, AuthError, another TargetError) —
each with `attempts`, the upload requests actually sent by this call. Anything else is a bug: it
leaves as `SendCrashed`, which carries the attempts too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryCallState, Retrying, retry_if_exception_type

from ingestd.targets.base import Target, TargetError, TransientError, Upload


@dataclass(frozen=True)
class RetryPolicy:
    max_sends: int = 4  # upload requests per deliver() call
    backoff_initial: float = 0.5
    backoff_max: float = 15.0  # contract: jittered backoff capped at about 15 s
    max_inline_wait: float = 15.0  # a longer Retry-After is not slept in a thread: Deferred instead


@dataclass(frozen=True)
class Delivered:
    document_id: str
    attempts: int  # upload requests sent by this call (unsent tries and look-ups do not count)
    found_existing: bool  # reconciliation found it already stored


class _Deferral(Exception):
    """Carries a `Deferred` out of tenacity's loop."""

    def __init__(
        self,
        retry_in: float,
        attempts: int,
        reason: str,
        http_status: int | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(reason)
        self.deferred = Deferred(retry_in, attempts, reason, http_status, outcome_unknown)


@dataclass(frozen=True)
class Deferred:
    """Transient trouble outlasting this call: the pipeline records `next_attempt_at`.

    `outcome_unknown` means the EHR may hold the document: ask it (`reconcile_first`) next time.
    """

    retry_in: float
    attempts: int
    reason: str
    http_status: int | None = None
    outcome_unknown: bool = False


@dataclass(frozen=True)
class Refused:
    """The target said no: a PermanentError, an AuthError (credentials), or another TargetError."""

    error: TargetError
    attempts: int


Result = Delivered | Deferred | Refused


class SendCrashed(Exception):
    """An unexpected exception (a bug) while delivering; `attempts` were sent before it."""

    def __init__(self, attempts: int) -> None:
        super().__init__(f"delivery crashed after {attempts} sends")
        self.attempts = attempts


def backoff_delay(failures: int, policy: RetryPolicy, retry_after: float | None = None) -> float:
    """Seconds to wait after `failures` transient failures in a row.

    Full jitter: uniform between 0 and min(backoff_max, backoff_initial * 2**(failures-1)). A
    server's Retry-After is obeyed as given, never shortened and not capped (a long one makes the
    caller defer rather than sleep).
    """
    if retry_after is not None:
        return max(0.0, retry_after)
    ceiling = min(policy.backoff_max, policy.backoff_initial * 2 ** max(0, failures - 1))
    return random.uniform(0.0, ceiling)  # noqa: S311 - jitter, not cryptography


@dataclass
class _Progress:
    """What one deliver() call has done so far; shared by the tenacity callbacks."""

    attempts: int = 0
    tries: int = 0
    unknown: bool = False  # the last send may have stored the document
    next_delay: float = 0.0
    planned_for: int = 0  # the tenacity attempt number next_delay was chosen for
    last: TransientError | None = None


def _never_stop() -> bool:
    return False


def _nothing() -> None:
    return None


def deliver(
    target: Target,
    upload: Upload,
    *,
    policy: RetryPolicy = RetryPolicy(),  # frozen: a shared default is safe
    reconcile_first: bool = False,
    before_send: Callable[[], None] = _nothing,
    should_stop: Callable[[], bool] = _never_stop,
    sleep: Callable[[float], object] = time.sleep,  # e.g. a stop Event's wait: its bool is ignored
    on_retry: Callable[[TransientError, float], None] = lambda error, delay: None,
) -> Result:
    """Send `upload` until it is stored, refused, or the trouble outlasts this call.

    `on_retry` hears of each transient error that is retried, with the delay before the retry.
    """
    progress = _Progress(unknown=reconcile_first)

    def waiting(seconds: float) -> object:
        if progress.last is not None:
            on_retry(progress.last, seconds)
        return sleep(seconds)

    try:
        return _deliver(target, upload, policy, progress, before_send, should_stop, waiting)
    except _Deferral as deferral:
        return deferral.deferred
    except TargetError as exc:
        return Refused(exc, progress.attempts)
    except Exception as exc:
        raise SendCrashed(progress.attempts) from exc


def _deliver(
    target: Target,
    upload: Upload,
    policy: RetryPolicy,
    progress: _Progress,
    before_send: Callable[[], None],
    should_stop: Callable[[], bool],
    sleep: Callable[[float], object],
) -> Delivered:
    def settle() -> Delivered | None:
        """Ask the target whether an earlier send (or an earlier run) already stored it."""
        try:
            found = target.find(upload)
        except TransientError as exc:
            raise _Deferral(
                backoff_delay(max(1, progress.tries), policy, exc.retry_after),
                progress.attempts,
                exc.message,
                exc.http_status,
                outcome_unknown=True,
            ) from None
        progress.unknown = False
        if found is None:
            return None
        return Delivered(found, progress.attempts, found_existing=True)

    def attempt() -> Delivered:
        if progress.last is not None and should_stop():
            # Woken early from the backoff (a shutdown): hand back to the pipeline unsent.
            raise _Deferral(
                progress.next_delay,
                progress.attempts,
                progress.last.message,
                progress.last.http_status,
                outcome_unknown=progress.unknown,
            )
        if progress.unknown:
            found = settle()
            if found is not None:
                return found
        before_send()
        progress.tries += 1
        try:
            document_id = target.send(upload)
        except TransientError as exc:
            if exc.sent:
                progress.attempts += 1
            progress.unknown = exc.outcome_unknown
            progress.last = exc
            raise
        except Exception as exc:
            # A TokenRefused (an AuthError from the token endpoint) says it sent nothing.
            if getattr(exc, "sent", True):
                progress.attempts += 1
            raise
        progress.attempts += 1
        return Delivered(document_id, progress.attempts, found_existing=False)

    def plan(state: RetryCallState) -> float:
        # tenacity 8.2 asks `stop` before `wait`, later versions the other way round: whichever
        # comes first picks the delay for this attempt, and the other reuses it.
        if progress.planned_for != state.attempt_number:
            exc = _transient(state)
            progress.next_delay = backoff_delay(state.attempt_number, policy, exc.retry_after)
            progress.planned_for = state.attempt_number
        return progress.next_delay

    def stop(state: RetryCallState) -> bool:
        return (
            progress.attempts >= policy.max_sends
            # Unsent tries (connection refused) need a bound of their own.
            or progress.tries >= 2 * policy.max_sends
            # A delay too long to sleep through in a worker thread goes to the journal instead.
            or plan(state) > policy.max_inline_wait
            or should_stop()
        )

    def pause(seconds: float) -> None:
        sleep(seconds)

    retrying = Retrying(
        stop=stop,
        wait=plan,
        retry=retry_if_exception_type(TransientError),
        reraise=True,
        sleep=pause,
    )
    try:
        result: Delivered = retrying(attempt)
    except TransientError as exc:
        raise _Deferral(
            progress.next_delay,
            progress.attempts,
            exc.message,
            exc.http_status,
            outcome_unknown=progress.unknown,
        ) from None
    return result


def _transient(state: RetryCallState) -> TransientError:
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    if not isinstance(exc, TransientError):  # retry_if_exception_type guarantees it
        raise TypeError("stop() called without a TransientError outcome")
    return exc
