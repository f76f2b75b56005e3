"""`ingestd check`: validate the config offline."""

from __future__ import annotations

import argparse

from ingestd.commands.common import EXIT_OK, load, warn


def run_check(args: argparse.Namespace) -> int:
    config = load(args, in_service=False)
    warn(config)
    print(f"{config.file}: ok")
    for name, target in config.targets.items():
        converts = ", ".join(sorted(target.common.convert_to_pdf))
        also = f", sends {converts} as PDF" if converts else ""
        print(f"  target {name}: {target.kind}, {target.common.concurrency} at once{also}")
    for rule in config.rules:
        print(f"  rule {rule.name!r} (line {rule.line})")
    return EXIT_OK
