"""Sizes as people write them in the config: `10 MB` (10^6), `500 KiB` (2^10), `3145728`."""

from __future__ import annotations

import re

SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
SIZE_UNITS = {
    "": 1,
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_size(value: object) -> int:
    """Bytes from an int or a string like `10 MB` (10^6) or `500 KiB` (2^10); ValueError else."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '10 MB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str) and (found := SIZE.fullmatch(value)):
        unit = SIZE_UNITS.get(found.group(2).lower())
        if unit is not None:
            return int(float(found.group(1)) * unit)
    raise ValueError("a size is a number of bytes or a string like '10 MB' or '500 KiB'")
