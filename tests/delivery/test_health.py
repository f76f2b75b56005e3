"""Target health: pause, one probe at a time, backoff capped near 15 s, logged once."""

from __future__ import annotations

from ingestd.delivery.health import PROBE_MAX_SECONDS, TargetHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healthy_target_admits_everyone() -> None:
    health = TargetHealth("leyr", 2, clock=Clock())
    assert health.admit() == (True, False, 0.0)
    assert health.waiting_until() is None


def test_outage_pauses_then_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    health = TargetHealth("leyr", 2, clock=clock)
    assert health.failed(0.0, "503") is True  # starts the outage: log it
    assert health.failed(0.0, "503") is False  # already paused: do not log again
    go, _, until = health.admit()
    assert not go
    assert until == health.paused_until > clock.now
    clock.now = health.paused_until
    assert health.admit()[:2] == (True, True)  # the probe
    assert health.admit()[0] is False  # everyone else waits for it
    assert health.waiting_until() == clock.now + 1.0
    assert health.succeeded() is True  # outage over
    assert health.admit() == (True, False, 0.0)
    assert health.succeeded() is False


def test_probe_backoff_grows_and_is_capped_and_retry_after_wins() -> None:
    clock = Clock()
    health = TargetHealth("leyr", 1, clock=clock)
    delays = []
    for _ in range(10):
        health.failed(0.0, "down")
        delays.append(health.paused_until - clock.now)
        clock.now = health.paused_until
    assert max(delays) <= PROBE_MAX_SECONDS
    assert delays[-1] >= PROBE_MAX_SECONDS / 2 > delays[0]
    health.failed(40.0, "Retry-After: 40")
    assert health.paused_until - clock.now >= 40.0


def test_misconfigured_pauses_longer_and_a_probe_that_never_answered_frees_the_slot() -> None:
    clock = Clock()
    health = TargetHealth("nymbl", 1, clock=clock)
    assert health.failed(0.0, "401", misconfigured=True)
    assert health.misconfigured
    assert health.paused_until - clock.now == 60.0
    clock.now = health.paused_until
    assert health.admit()[1] is True
    health.released()
    assert health.admit()[1] is True
