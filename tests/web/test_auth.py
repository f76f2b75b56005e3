"""The page's gate: HTTP Basic against an scrypt hash, the lockout per client, the CSRF token."""

from __future__ import annotations

import base64
import threading

import pytest

from ingestd.config.statuspage import PasswordHash
from ingestd.web import auth
from ingestd.web.auth import (
    HASHING_AT_ONCE,
    LOCKOUT_SECONDS,
    MAX_FAILURES,
    Csrf,
    Gate,
    basic_credentials,
    check_password,
    hash_password,
)

PASSWORD = "front desk secret"
STORED = hash_password(PASSWORD, n=2**10)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gate(clock: Clock) -> Gate:
    return Gate("desk", STORED, clock=clock)


def test_hash_checks_the_password_and_salts_each_hash() -> None:
    assert check_password(STORED, PASSWORD)
    assert not check_password(STORED, PASSWORD + " ")
    assert hash_password(PASSWORD, n=2**10).salt != STORED.salt


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (basic("desk", "pa:ss"), ("desk", "pa:ss")),
        ("basic " + base64.b64encode("dësk:pw".encode()).decode(), ("dësk", "pw")),
        ("Bearer abc", None),
        ("Basic !!!", None),
        ("Basic " + base64.b64encode(b"no colon").decode(), None),
        (None, None),
    ],
)
def test_basic_credentials(header: str | None, expected: tuple[str, str] | None) -> None:
    assert basic_credentials(header) == expected


def test_right_user_and_password_pass_anything_else_does_not(gate: Gate) -> None:
    assert gate.check("192.0.2.7", basic("desk", PASSWORD)).allowed
    assert not gate.check("192.0.2.7", basic("other", PASSWORD)).allowed
    assert not gate.check("192.0.2.7", basic("desk", "wrong")).allowed
    asked = gate.check("192.0.2.7", None)
    assert not asked.allowed
    assert not asked.failed


def test_no_password_configured_lets_everyone_in() -> None:
    assert Gate("desk", None).check("127.0.0.1", None).allowed


def test_five_failures_lock_that_address_out_for_a_while(gate: Gate, clock: Clock) -> None:
    for _ in range(MAX_FAILURES - 1):
        verdict = gate.check("192.0.2.7", basic("desk", "guess"))
        assert verdict.failed
        assert not verdict.locked_for
    locked = gate.check("192.0.2.7", basic("desk", "guess"))
    assert locked.locked_for == LOCKOUT_SECONDS
    # Locked out: even the right password is refused, without being checked.
    assert gate.check("192.0.2.7", basic("desk", PASSWORD)).locked_for > 0
    # Another address is not affected.
    assert gate.check("192.0.2.8", basic("desk", PASSWORD)).allowed
    clock.now += LOCKOUT_SECONDS + 1
    assert gate.check("192.0.2.7", basic("desk", PASSWORD)).allowed


def test_failures_spread_over_more_than_the_window_do_not_lock(gate: Gate, clock: Clock) -> None:
    for _ in range(MAX_FAILURES * 2):
        assert not gate.check("192.0.2.7", basic("desk", "guess")).locked_for
        clock.now += 100


def test_a_checked_password_is_remembered_until_the_password_changes(gate: Gate) -> None:
    header = basic("desk", PASSWORD)
    assert gate.check("192.0.2.7", header).allowed
    gate.use("desk", hash_password("another password", n=2**10))
    assert not gate.check("192.0.2.7", header).allowed


def test_csrf_token_is_bound_to_the_session_and_the_process() -> None:
    csrf = Csrf()
    token = csrf.token("session-one")
    assert csrf.valid("session-one", token)
    assert not csrf.valid("session-two", token)
    assert not csrf.valid("session-one", token[:-1] + "0" if token[-1] != "0" else token[:-1] + "1")
    assert not csrf.valid(None, token)
    assert not csrf.valid("session-one", None)
    assert not csrf.valid("session-one", "")
    assert not Csrf().valid("session-one", token)  # another key: a restarted daemon


class SlowCheck:
    """Stands in for the scrypt check: records how many run at once and how many ran. Each
    check stays running until as many run as the gate should allow (or every expected check has
    started), so a gate letting more through would be seen doing it."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.running = self.most = self.calls = 0
        self.changed = threading.Condition()

    def __call__(self, stored: PasswordHash, password: str) -> bool:
        with self.changed:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
            self.changed.notify_all()
            self.changed.wait_for(
                lambda: self.running >= HASHING_AT_ONCE or self.calls >= self.expected,
                timeout=10,
            )
            self.running -= 1
            self.changed.notify_all()
        return False


def run_at_once(gate: Gate, clients: list[str]) -> list[auth.Verdict]:
    verdicts: list[auth.Verdict] = []
    start = threading.Barrier(len(clients))

    def one(client: str) -> None:
        start.wait()
        verdicts.append(gate.check(client, basic("desk", "guess")))

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return verdicts


def test_concurrent_wrong_logins_hash_a_few_at_a_time_and_lock_out_the_rest(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = SlowCheck(expected=MAX_FAILURES)
    monkeypatch.setattr(auth, "check_password", check)
    verdicts = run_at_once(gate, ["192.0.2.7"] * 40)
    assert len(verdicts) == 40
    assert check.most <= HASHING_AT_ONCE
    assert check.calls == MAX_FAILURES  # pending ones count: the 6th+ are refused unhashed
    assert sum(1 for v in verdicts if v.locked_for) == 40 - MAX_FAILURES + 1
    assert not any(v.allowed for v in verdicts)
    assert gate.check("192.0.2.7", basic("desk", PASSWORD)).locked_for > 0


def test_many_clients_at_once_still_hash_a_few_at_a_time(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = SlowCheck(expected=20)
    monkeypatch.setattr(auth, "check_password", check)
    run_at_once(gate, [f"192.0.2.{i}" for i in range(20)])
    assert check.calls == 20
    assert check.most <= HASHING_AT_ONCE


def test_the_failure_counts_kept_are_capped(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "_FAILURES_MAX", 10)
    monkeypatch.setattr(auth, "check_password", lambda stored, password: False)
    for i in range(50):
        gate.check(f"198.51.100.{i}", basic("desk", "guess"))
    assert len(gate._failures) <= 10
