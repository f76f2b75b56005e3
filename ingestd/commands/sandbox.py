"""`ingestd sandbox`: serve the local stand-in EHR."""

from __future__ import annotations

import argparse

from ingestd.commands.common import EXIT_OK
from ingestd.sandbox import serve_forever


def run_sandbox(args: argparse.Namespace) -> int:
    def announce(text: str) -> None:
        print(text, flush=True)

    serve_forever(args.host, args.port, latency_seconds=args.latency_ms / 1000.0, announce=announce)
    return EXIT_OK
