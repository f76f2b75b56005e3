"""`ingestd run` (the daemon in the foreground) and `ingestd once` (what is in the inbox now)."""

from __future__ import annotations

import argparse

from ingestd.commands.common import EXIT_FAILED, EXIT_OK, as_state_owner, load, warn
from ingestd.observe import logs


def run_run(args: argparse.Namespace) -> int:
    from ingestd.daemon.loop import Daemon  # only these two commands need the daemon

    config = load(args)
    warn(config)
    as_state_owner(config)
    logs.setup(args.log_level)
    daemon = Daemon(config)
    daemon.signals.install()
    daemon.run()
    return EXIT_OK


def run_once(args: argparse.Namespace) -> int:
    from ingestd.daemon.loop import Daemon  # only these two commands need the daemon

    config = load(args)
    warn(config)
    as_state_owner(config)
    logs.setup(args.log_level)
    daemon = Daemon(config, once=True)
    daemon.signals.install()
    summary = daemon.run()
    print(f"done {summary.done}, failed {summary.failed}, waiting {summary.waiting}")
    return EXIT_FAILED if summary.failed or summary.waiting else EXIT_OK
