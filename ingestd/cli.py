"""The command line: one `run_<action>()` per command, and the one place that turns errors into
a message and an exit code (nothing below it calls sys.exit)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import sys
from collections.abc import Callable, Sequence

from ingestd import __version__
from ingestd.config.load import Config, ConfigError, load_config
from ingestd.journal import JournalError
from ingestd.observe import logs

DEFAULT_CONFIG = "/etc/ingestd/ingestd.yaml"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


class UsageError(Exception):
    """A command was used wrongly; the message says how to use it."""


def config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("INGESTD_CONFIG") or DEFAULT_CONFIG


def _load(args: argparse.Namespace, in_service: bool = True) -> Config:
    return load_config(config_path(args), in_service=in_service)


def _as_state_owner(config: Config) -> None:
    """Run as the owner of the state folder when started as root (`sudo ingestd status`):
    a journal, WAL or key file created by root would lock the service out of its own state."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(config.paths.state.parent)
    except FileNotFoundError:
        return
    if st.st_uid == 0:
        return
    try:
        os.initgroups(pwd.getpwuid(st.st_uid).pw_name, st.st_gid)
    except KeyError:
        os.setgroups([st.st_gid])
    os.setgid(st.st_gid)
    os.setuid(st.st_uid)


def _warn(config: Config) -> None:
    for problem in config.warnings:
        print(problem, file=sys.stderr)


def run_run(args: argparse.Namespace) -> int:
    from ingestd.daemon.loop import Daemon

    config = _load(args)
    _warn(config)
    _as_state_owner(config)
    logs.setup(args.log_level)
    daemon = Daemon(config)
    daemon.install_signals()
    daemon.run()
    return EXIT_OK


def run_once(args: argparse.Namespace) -> int:
    from ingestd.daemon.loop import Daemon

    config = _load(args)
    _warn(config)
    _as_state_owner(config)
    logs.setup(args.log_level)
    daemon = Daemon(config, once=True)
    daemon.install_signals()
    summary = daemon.run()
    print(f"done {summary.done}, failed {summary.failed}, waiting {summary.waiting}")
    return EXIT_FAILED if summary.failed or summary.waiting else EXIT_OK


def run_check(args: argparse.Namespace) -> int:
    config = _load(args, in_service=False)
    _warn(config)
    print(f"{config.file}: ok")
    for name, target in config.targets.items():
        print(f"  target {name}: {target.kind}, {target.concurrency} at once")
    for rule in config.rules:
        print(f"  rule {rule.name!r} (line {rule.line})")
    return EXIT_OK


def run_explain(args: argparse.Namespace) -> int:
    from ingestd.commands.explain import NotInInbox, explain, inbox_paths, offline_targets, render

    config = _load(args, in_service=False)
    targets = offline_targets(config)
    try:
        items = [explain(config, targets, rel) for rel in inbox_paths(config, args.paths)]
    except NotInInbox as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps([item.to_dict() for item in items], indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(render(item) for item in items))
    return EXIT_OK


def run_retry(args: argparse.Namespace) -> int:
    from ingestd.commands.retry import RetryError, failed_receipts, retry_one
    from ingestd.journal import Journal

    if not (args.paths or args.patient or args.all):
        raise UsageError("name failed files, --patient FOLDER or --all")
    config = _load(args, in_service=False)
    _as_state_owner(config)
    journal = Journal(config.paths.state)
    try:
        selected = list(failed_receipts(config, args.paths, args.patient or [], args.all))
        back = [retry_one(config, journal, receipt) for receipt in selected]
    except RetryError as exc:
        raise UsageError(str(exc)) from None
    finally:
        journal.close()
    for item in back:
        if item is not None:
            print(f"failed/{item.failed} -> inbox/{item.inbox}")
    print(f"{sum(1 for item in back if item is not None)} file(s) back in the inbox")
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    from ingestd.commands.status import render, report

    config = _load(args, in_service=False)
    _as_state_owner(config)
    status = report(config)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return EXIT_OK


def run_sandbox(args: argparse.Namespace) -> int:
    from ingestd.sandbox import serve_forever

    def announce(text: str) -> None:
        print(text, flush=True)

    serve_forever(args.host, args.port, latency_seconds=args.latency_ms / 1000.0, announce=announce)
    return EXIT_OK


def run_demo(args: argparse.Namespace) -> int:
    from ingestd.commands.demo import run_demo as demo

    return demo(keep=args.keep)


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
    command("check", run_check, "validate the config offline")
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
    except (JournalError, UsageError) as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        logging.getLogger("ingestd").debug("os error", exc_info=True)
        print(f"ingestd: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
