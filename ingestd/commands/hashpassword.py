"""`ingestd hash-password`: the status page's `password_hash` from a password on standard input
(asked twice on a terminal, else the first line of a pipe), printed on standard output."""

from __future__ import annotations

import argparse
import getpass
import sys

from ingestd.commands.common import EXIT_OK, UsageError
from ingestd.config.secrets import strip_one_newline
from ingestd.web.auth import hash_password

MIN_LENGTH = 10


def read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("status page password: ")
        if getpass.getpass("again: ") != first:
            raise UsageError("the two passwords differ")
        return first
    return strip_one_newline(sys.stdin.readline())


def run_hash_password(args: argparse.Namespace) -> int:
    password = read_password()
    if len(password) < MIN_LENGTH:
        raise UsageError(f"the password must be {MIN_LENGTH} characters or more")
    print(hash_password(password))
    return EXIT_OK
