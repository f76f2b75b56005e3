"""The command line: the parser, each command's `run_<name>` from `ingestd.commands`, and the one
place that turns errors into a message and an exit code (nothing below it calls sys.exit)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ingestd import __version__
from ingestd.commands.check import run_check
from ingestd.commands.common import DEFAULT_CONFIG, EXIT_CONFIG, EXIT_FAILED, UsageError
from ingestd.commands.demo import run_demo
from ingestd.commands.explain import run_explain
from ingestd.commands.hashpassword import run_hash_password
from ingestd.commands.retry import run_retry
from ingestd.commands.run import run_once, run_run
from ingestd.commands.sandbox import run_sandbox
from ingestd.commands.status import run_status
from ingestd.commands.verify import run_verify
from ingestd.config.model import ConfigError
from ingestd.journal import JournalError, JournalUnreachable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingestd",
        description="Upload finished files from patient inbox folders to an EHR.",
    )
    parser.add_argument("--version", action="version", version=f"ingestd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], text: str, config: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        if config:
            sub.add_argument(
                "-c",
                "--config",
                metavar="FILE",
                help=f"config file (default: $INGESTD_CONFIG, else {DEFAULT_CONFIG})",
            )
        return sub

    for name, handler, text in (
        ("run", run_run, "run the daemon in the foreground"),
        ("once", run_once, "process what is in the inbox now, then exit"),
    ):
        sub = command(name, handler, text)
        sub.add_argument(
            "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
        )
    check = command("check", run_check, "validate the config offline")
    check.add_argument(
        "--online", action="store_true", help="also connect to the shared journal's database"
    )
    explain = command("explain", run_explain, "what would happen to these inbox files, and why")
    explain.add_argument("paths", nargs="+", metavar="PATH", help="files or folders in the inbox")
    explain.add_argument("--json", action="store_true", help="one JSON list, for scripts")
    status = command("status", run_status, "counts, oldest waiting file, targets, failures")
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    retry = command("retry", run_retry, "put failed files back in line")
    retry.add_argument("paths", nargs="*", metavar="PATH", help="failed files (or their receipts)")
    retry.add_argument(
        "--patient", action="append", metavar="FOLDER", help="every failed file of this folder"
    )
    retry.add_argument("--all", action="store_true", help="every failed file")
    verify = command("verify", run_verify, "prove that the EHR holds what each done/ receipt says")
    verify.add_argument(
        "paths", nargs="*", metavar="PATH", help="done files, their receipts or folders in done/"
    )
    verify.add_argument("--since", metavar="DATE", help="receipts finished on or after DATE")
    verify.add_argument("--target", metavar="NAME", help="receipts of this target only")
    verify.add_argument("--again", action="store_true", help="re-check what was verified before")
    verify.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    verify.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    command(
        "hash-password",
        run_hash_password,
        "the status page's password_hash, from a password on standard input",
        config=False,
    )
    sandbox = command(
        "sandbox", run_sandbox, "serve a local stand-in EHR (both APIs)", config=False
    )
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8700)
    sandbox.add_argument(
        "--latency-ms", type=float, default=0.0, help="added to every upload, like a WAN API"
    )
    demo = command("demo", run_demo, "sandbox + daemon + sample files, end to end", config=False)
    demo.add_argument("--keep", action="store_true", help="keep the demo folder afterwards")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except JournalUnreachable as exc:
        # The shared journal's server is not up (yet): a failure that a restart may fix.
        print(f"ingestd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (JournalError, UsageError) as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        logging.getLogger("ingestd").debug("os error", exc_info=True)
        print(f"ingestd: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
