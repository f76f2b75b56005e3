"""Which instance of a fleet looks at an inbox file first.

On a shared journal every instance sees every file land. Without a rule each would settle it
(stat, the writer probe, reading its head for the type) and try to claim it, and all but one
would lose: N processes on one inbox would do N times the work before any upload. Rendezvous
hashing over the live instances names one owner per path, the same in every instance without a
word exchanged; the others leave the file to it. If the owner has not taken it after
`BACKSTOP_SECONDS` beyond its settle time (a stuck or overloaded host, or one that died and is
not yet known to be), anyone may, and the claim row in the database still lets only one win:
the preference saves work, it never decides correctness.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath

BACKSTOP_SECONDS = 30.0  # after this, any instance may take a file its owner has not taken
RECHECK_SECONDS = 5.0  # a left file is looked at again this soon: the fleet may have changed


def _score(instance: str, rel: PurePosixPath) -> bytes:
    return hashlib.blake2b(f"{instance}\0{rel}".encode(), digest_size=8).digest()


@dataclass
class Owners:
    me: str
    members: tuple[str, ...] = ()  # the live instances (me among them); () alone

    def owner(self, rel: PurePosixPath) -> str:
        if len(self.members) < 2:
            return self.me
        return max(self.members, key=lambda instance: _score(instance, rel))

    def wait(self, rel: PurePosixPath, age: float, settle: float = 0.0) -> float:
        """Seconds to leave `rel` (seen `age` seconds ago, settling for `settle`) to its owner;
        0: look at it now. The owner gets its settle time on top of the backstop."""
        backstop = BACKSTOP_SECONDS + settle
        if age >= backstop or self.owner(rel) == self.me:
            return 0.0
        return min(backstop - age, RECHECK_SECONDS)
