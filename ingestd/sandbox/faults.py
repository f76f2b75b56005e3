"""Fault injection: what the sandbox does wrong on purpose, and for which requests.

Faults are kept in the order they were added; a request takes the first one that matches its API
and route, and that fault is used up after `times` requests.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

FAULT_APIS = frozenset({"leyr", "nymbl", "fhir", "token", "any"})
ACTIONS = frozenset({"status", "delay", "drop", "commit_drop", "revoke"})
# "any" covers the APIs a client talks to, never the control plane that adds and clears faults.
_ANY = frozenset({"leyr", "nymbl", "fhir", "token"})


@dataclass(frozen=True)
class Fault:
    """One misbehaviour.

    status: answer `status` with a small JSON error (and Retry-After, verbatim, when given);
    delay: sleep `delay_seconds`, then handle normally; drop: close the connection without an
    answer and store nothing; commit_drop: handle normally (an upload is stored), then close the
    connection without an answer; revoke: handle normally, then revoke every access token
    issued so far (a token revoked or a signing key rotated on the server's side: with the
    token route, the client gets a token that is already invalid).
    """

    api: str
    route: str | None = None  # e.g. "upload"; None: every route of `api`
    action: str = "status"
    status: int = 503
    retry_after: str | None = None
    delay_seconds: float = 0.0
    times: int | None = 1  # None: until cleared

    def __post_init__(self) -> None:
        if self.api not in FAULT_APIS:
            raise ValueError(f"api must be one of {sorted(FAULT_APIS)}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {sorted(ACTIONS)}")
        if self.route is not None and not isinstance(self.route, str):
            raise ValueError("route must be a string or None")
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise ValueError("status must be an integer")
        if not 200 <= self.status <= 599:
            raise ValueError("status must be between 200 and 599")
        if self.retry_after is not None and (
            not isinstance(self.retry_after, str) or any(c in self.retry_after for c in "\r\n")
        ):
            raise ValueError("retry_after must be a one-line string")
        if (
            isinstance(self.delay_seconds, bool)
            or not isinstance(self.delay_seconds, int | float)
            or not math.isfinite(self.delay_seconds)
            or self.delay_seconds < 0
        ):
            raise ValueError("delay_seconds must be a non-negative number")
        if self.times is not None and (
            isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1
        ):
            raise ValueError("times must be a positive integer or None")

    def matches(self, api: str, route: str) -> bool:
        api_ok = self.api == api or (self.api == "any" and api in _ANY)
        return api_ok and (self.route is None or self.route == route)

    @classmethod
    def from_json(cls, data: object) -> Fault:
        """Build from the control plane's JSON object; unknown keys and wrong types are errors."""
        if not isinstance(data, Mapping):
            raise ValueError("a fault is a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault keys: {', '.join(sorted(map(str, unknown)))}")
        if "api" not in data:
            raise ValueError("a fault needs an api")
        return cls(**data)

    def to_json(self) -> dict[str, object]:
        return {
            "api": self.api,
            "route": self.route,
            "action": self.action,
            "status": self.status,
            "retry_after": self.retry_after,
            "delay_seconds": self.delay_seconds,
            "times": self.times,
        }


@dataclass
class _Pending:
    fault: Fault
    left: int | None  # None: until cleared


class FaultQueue:
    """Thread-safe list of pending faults with how many uses each has left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._pending.append(_Pending(fault, fault.times))

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def take(self, api: str, route: str) -> Fault | None:
        """The first pending fault matching this request, used up once."""
        with self._lock:
            for index, entry in enumerate(self._pending):
                if not entry.fault.matches(api, route):
                    continue
                if entry.left is not None:
                    entry.left -= 1
                    if entry.left <= 0:
                        del self._pending[index]
                return entry.fault
        return None

    def pending(self) -> list[Fault]:
        with self._lock:
            return [entry.fault for entry in self._pending]
