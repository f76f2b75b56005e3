"""deliver(): retries, backoff, Retry-After, deferral and reconciliation, against a fake target.

No real waiting: `sleep` is a fake that records the delays it was asked for.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from ingestd.delivery.retrying import (
    Deferred,
    Delivered,
    Refused,
    RetryPolicy,
    SendCrashed,
    backoff_delay,
    deliver,
)
from ingestd.targets.base import AuthError, PermanentError, Refusal, TransientError, Upload
from ingestd.targets.oauth2 import TokenRefused

UPLOAD = Upload(
    patient_id="12345",
    file_name="scan.pdf",
    mime="application/pdf",
    size=3,
    known_sha256="0" * 64,
    title="Scan",
    doc_type="Referral",
)

Outcome = str | BaseException


class FakeTarget:
    """Answers `send` and `find` from scripted outcomes: a str is a document id, else raised."""

    name = "fake"
    kind = "fake"
    max_bytes = 1000
    accept = frozenset({"application/pdf"})

    def __init__(self, sends: Iterable[Outcome], finds: Iterable[Outcome | None] = ()) -> None:
        self._sends = list(sends)
        self._finds = list(finds)
        self.calls: list[str] = []

    def refusal(self, upload: Upload) -> Refusal | None:
        return None

    def send(self, upload: Upload) -> str:
        self.calls.append("send")
        return self._next(self._sends)

    def find(self, upload: Upload) -> str | None:
        self.calls.append("find")
        if not self._finds:
            return None
        outcome = self._finds.pop(0)
        if outcome is None or isinstance(outcome, str):
            return outcome
        raise outcome

    def close(self) -> None:
        pass

    @staticmethod
    def _next(outcomes: list[Outcome]) -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, str):
            return outcome
        raise outcome


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def busy(retry_after: float | None = None) -> TransientError:
    return TransientError("EHR busy: HTTP 503", 503, retry_after=retry_after)


def lost() -> TransientError:
    return TransientError("connection lost", sent=True, outcome_unknown=True)


def refused() -> TransientError:
    return TransientError("could not connect", sent=False)


def test_two_server_errors_then_success_counts_three_attempts() -> None:
    target, sleeps = FakeTarget([busy(), busy(), "doc-1"]), Sleeps()
    result = deliver(target, UPLOAD, sleep=sleeps)
    assert result == Delivered("doc-1", attempts=3, found_existing=False)
    assert len(sleeps) == 2
    policy = RetryPolicy()
    assert 0 <= sleeps[0] <= policy.backoff_initial
    assert 0 <= sleeps[1] <= 2 * policy.backoff_initial


def test_retry_after_is_honoured() -> None:
    sleeps = Sleeps()
    result = deliver(FakeTarget([busy(retry_after=7.5), "doc-1"]), UPLOAD, sleep=sleeps)
    assert result.attempts == 2
    assert sleeps == [7.5]


def test_exhausting_max_sends_defers() -> None:
    target, sleeps = FakeTarget([busy()] * 10), Sleeps()
    info = deliver(target, UPLOAD, policy=RetryPolicy(max_sends=3), sleep=sleeps)
    assert isinstance(info, Deferred)
    deferred = info
    assert deferred.attempts == 3
    assert target.calls == ["send"] * 3
    assert len(sleeps) == 2
    assert deferred.http_status == 503
    assert deferred.outcome_unknown is False
    assert 0 <= deferred.retry_in <= RetryPolicy().backoff_max
    assert "503" in deferred.reason


def test_a_long_retry_after_defers_without_sleeping() -> None:
    target, sleeps = FakeTarget([busy(retry_after=120), "doc-1"]), Sleeps()
    info = deliver(target, UPLOAD, sleep=sleeps)
    assert isinstance(info, Deferred)
    assert sleeps == []
    assert info.retry_in == 120
    assert info.attempts == 1
    assert target.calls == ["send"]


def test_retry_after_equal_to_the_inline_limit_is_slept() -> None:
    sleeps = Sleeps()
    deliver(FakeTarget([busy(retry_after=15), "doc-1"]), UPLOAD, sleep=sleeps)
    assert sleeps == [15]


def test_unknown_outcome_is_settled_by_find_before_sending_again() -> None:
    target = FakeTarget([lost(), "doc-should-not-be-sent"], finds=["doc-1"])
    result = deliver(target, UPLOAD, sleep=Sleeps())
    assert result == Delivered("doc-1", attempts=1, found_existing=True)
    assert target.calls == ["send", "find"]


def test_unknown_outcome_not_found_is_sent_again() -> None:
    target = FakeTarget([lost(), "doc-2"], finds=[None])
    result = deliver(target, UPLOAD, sleep=Sleeps())
    assert result == Delivered("doc-2", attempts=2, found_existing=False)
    assert target.calls == ["send", "find", "send"]


def test_unknown_outcome_left_when_sends_run_out_is_reported() -> None:
    target = FakeTarget([lost()] * 5)
    info = deliver(target, UPLOAD, policy=RetryPolicy(max_sends=2), sleep=Sleeps())
    assert isinstance(info, Deferred)
    assert info.outcome_unknown is True
    assert info.attempts == 2
    assert target.calls == ["send", "find", "send"]


def test_a_settled_unknown_outcome_is_not_reported_unknown() -> None:
    target = FakeTarget([lost(), busy()], finds=[None])
    info = deliver(target, UPLOAD, policy=RetryPolicy(max_sends=2), sleep=Sleeps())
    assert isinstance(info, Deferred)
    assert info.outcome_unknown is False


def test_find_failing_transiently_defers_with_unknown_outcome() -> None:
    target = FakeTarget([lost()], finds=[busy(retry_after=3)])
    info = deliver(target, UPLOAD, sleep=Sleeps())
    assert isinstance(info, Deferred)
    assert info.outcome_unknown is True
    assert info.attempts == 1
    assert info.retry_in == 3
    assert target.calls == ["send", "find"]


def test_permanent_error_after_exactly_one_attempt() -> None:
    target, sleeps = FakeTarget([PermanentError("refused: HTTP 400", 400), "doc-1"]), Sleeps()
    info = deliver(target, UPLOAD, sleep=sleeps)
    assert isinstance(info, Refused)
    assert isinstance(info.error, PermanentError)
    assert info.attempts == 1
    assert info.error.http_status == 400
    assert target.calls == ["send"]
    assert sleeps == []


def test_permanent_error_after_retries_carries_all_attempts() -> None:
    target = FakeTarget([busy(), PermanentError("refused", 422)])
    info = deliver(target, UPLOAD, sleep=Sleeps())
    assert isinstance(info, Refused)
    assert isinstance(info.error, PermanentError)
    assert info.attempts == 2


def test_auth_error_propagates_with_attempts() -> None:
    info = deliver(FakeTarget([AuthError("refused", 401)]), UPLOAD, sleep=Sleeps())
    assert isinstance(info, Refused)
    assert isinstance(info.error, AuthError)
    assert info.attempts == 1


def test_token_refused_counts_no_attempt() -> None:
    info = deliver(FakeTarget([TokenRefused("token refused", 400)]), UPLOAD, sleep=Sleeps())
    assert isinstance(info, Refused)
    assert isinstance(info.error, AuthError)
    assert info.attempts == 0


def test_unsent_errors_are_not_counted() -> None:
    result = deliver(FakeTarget([refused(), refused(), "doc-1"]), UPLOAD, sleep=Sleeps())
    assert result == Delivered("doc-1", attempts=1, found_existing=False)


def test_a_target_that_never_connects_is_deferred_with_no_attempts() -> None:
    target = FakeTarget([refused()] * 100)
    info = deliver(target, UPLOAD, policy=RetryPolicy(max_sends=2), sleep=Sleeps())
    assert isinstance(info, Deferred)
    assert info.attempts == 0
    assert info.outcome_unknown is False
    assert target.calls == ["send"] * 4


def test_reconcile_first_finds_an_earlier_upload_without_sending() -> None:
    sent: list[int] = []
    target = FakeTarget([], finds=["doc-old"])
    result = deliver(
        target, UPLOAD, reconcile_first=True, before_send=lambda: sent.append(1), sleep=Sleeps()
    )
    assert result == Delivered("doc-old", attempts=0, found_existing=True)
    assert target.calls == ["find"]
    assert sent == []


def test_reconcile_first_not_found_sends() -> None:
    target = FakeTarget(["doc-1"], finds=[None])
    result = deliver(target, UPLOAD, reconcile_first=True, sleep=Sleeps())
    assert result == Delivered("doc-1", attempts=1, found_existing=False)
    assert target.calls == ["find", "send"]


def test_before_send_runs_before_every_send() -> None:
    log: list[str] = []

    class Logging(FakeTarget):
        def send(self, upload: Upload) -> str:
            log.append("send")
            return super().send(upload)

    deliver(
        Logging([busy(), "doc-1"]), UPLOAD, before_send=lambda: log.append("before"), sleep=Sleeps()
    )
    assert log == ["before", "send", "before", "send"]


def test_should_stop_defers_instead_of_sleeping() -> None:
    target, sleeps = FakeTarget([busy(), "doc-1"]), Sleeps()
    info = deliver(target, UPLOAD, should_stop=lambda: True, sleep=sleeps)
    assert isinstance(info, Deferred)
    assert sleeps == []
    assert info.attempts == 1
    assert target.calls == ["send"]


def test_an_unexpected_exception_carries_attempts() -> None:
    with pytest.raises(SendCrashed) as info:
        deliver(FakeTarget([busy(), RuntimeError("bug")]), UPLOAD, sleep=Sleeps())
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.attempts == 2


@pytest.mark.parametrize("failures", range(1, 12))
def test_backoff_is_full_jitter_and_capped(failures: int) -> None:
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=15.0)
    ceiling = min(15.0, 0.5 * 2 ** (failures - 1))
    delays = [backoff_delay(failures, policy) for _ in range(200)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling / 2  # spread over the range, not a constant


def test_backoff_never_goes_below_retry_after() -> None:
    policy = RetryPolicy()
    assert backoff_delay(1, policy, retry_after=40.0) == 40.0
    assert backoff_delay(9, policy, retry_after=0.0) == 0.0
    assert backoff_delay(1, policy, retry_after=-5.0) == 0.0


def test_a_stop_during_the_backoff_defers_without_sending_again() -> None:
    stopping: list[bool] = []
    target = FakeTarget([busy(), "doc-1"])

    def interrupted_sleep(seconds: float) -> bool:
        stopping.append(True)  # the stop event fired while waiting
        return True

    info = deliver(target, UPLOAD, should_stop=lambda: bool(stopping), sleep=interrupted_sleep)
    assert isinstance(info, Deferred)
    assert target.calls == ["send"]
    assert info.attempts == 1
    assert info.http_status == 503


def test_each_retry_is_reported_with_its_delay() -> None:
    heard: list[tuple[int | None, float]] = []
    sleeps = Sleeps()
    result = deliver(
        FakeTarget([busy(), busy(retry_after=2.0), "doc-1"]),
        UPLOAD,
        sleep=sleeps,
        on_retry=lambda error, delay: heard.append((error.http_status, delay)),
    )
    assert result.attempts == 3
    assert heard == [(503, sleeps[0]), (503, 2.0)]
