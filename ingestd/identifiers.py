"""Checks on patient identifiers shared by the patient map and the targets."""

from __future__ import annotations


def luhn_ok(digits: str) -> bool:
    """Whether a Swedish personal number (YYMMDDNNNC or YYYYMMDDNNNC) has a valid check digit."""
    if len(digits) not in (10, 12) or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(digits[-10:]):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0
