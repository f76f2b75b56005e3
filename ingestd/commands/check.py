"""`ingestd check`: validate the config offline."""

from __future__ import annotations

import argparse

from ingestd.commands.common import EXIT_OK, load, warn
from ingestd.journal import probe


def run_check(args: argparse.Namespace) -> int:
    online = getattr(args, "online", False)
    # Online, the journal's password is needed: `${credential:…}` must resolve as in the service.
    config = load(args, in_service=online)
    warn(config)
    if online and config.journal is not None:
        # A bad URL, a refused password or no route fails here as a JournalError (exit 2).
        print(f"journal: connected to {probe(config.journal)}")
    print(f"{config.file}: ok")
    if config.journal is not None:
        print("  journal: shared (PostgreSQL)")
    for name, target in config.targets.items():
        converts = ", ".join(sorted(target.common.convert_to_pdf))
        also = f", sends {converts} as PDF" if converts else ""
        print(f"  target {name}: {target.kind}, {target.common.concurrency} at once{also}")
    for rule in config.rules:
        print(f"  rule {rule.name!r} (line {rule.line})")
    return EXIT_OK
