"""What the sandbox's FHIR server keeps besides documents: its settings (conditional create on or
off, patients that share an identifier), stored Binaries, and the assertion ids already used."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class FhirState:
    """Thread-safe where it changes (Binaries, used assertion ids)."""

    # False: the CapabilityStatement says no conditional create and If-None-Exist is ignored.
    conditional_create: bool = True
    # Identifier (`system|value`) -> the ids of the Patients carrying it (for duplicates).
    patients: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # The token endpoint's clock runs this far ahead: assertions expire early (clock skew).
    clock_ahead_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _binaries: dict[str, tuple[str, bytes]] = field(default_factory=dict, repr=False)
    _jtis: set[str] = field(default_factory=set, repr=False)

    def add_binary(self, binary_id: str, content_type: str, data: bytes) -> None:
        with self._lock:
            self._binaries[binary_id] = (content_type, data)

    def binary(self, binary_id: str) -> tuple[str, bytes] | None:
        with self._lock:
            return self._binaries.get(binary_id)

    def binaries(self) -> int:
        with self._lock:
            return len(self._binaries)

    def first_use(self, jti: str) -> bool:
        """True the first time an assertion id is seen (a replayed assertion is refused)."""
        with self._lock:
            if jti in self._jtis:
                return False
            self._jtis.add(jti)
            return True

    def reset(self) -> None:
        with self._lock:
            self._binaries.clear()
            self._jtis.clear()
