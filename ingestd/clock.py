"""UTC timestamps as receipts and the journal write them: ISO 8601 with a Z, to the millisecond."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_iso(timestamp: float | None = None) -> str:
    """`timestamp` (seconds since the epoch; now when None) as ISO 8601 UTC with a Z."""
    moment = datetime.fromtimestamp(time.time() if timestamp is None else timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
