"""What every command shares: where the config is, loading it, the exit codes, running as the
owner of the state folder, and the one error a command raises for misuse."""

from __future__ import annotations

import argparse
import os
import pwd
import sys

from ingestd.config.load import load_config
from ingestd.config.model import Config

DEFAULT_CONFIG = "/etc/ingestd/ingestd.yaml"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


class UsageError(Exception):
    """A command was used wrongly; the message says how to use it."""


def config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("INGESTD_CONFIG") or DEFAULT_CONFIG


def load(args: argparse.Namespace, in_service: bool = True) -> Config:
    return load_config(config_path(args), in_service=in_service)


def as_state_owner(config: Config) -> None:
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


def warn(config: Config) -> None:
    for problem in config.warnings:
        print(problem, file=sys.stderr)
