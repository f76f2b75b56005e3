"""A real PostgreSQL for the shared-journal tests: Debian's server binaries, a throwaway cluster
per test session (initdb in a temporary folder, as `nobody` when the tests run as root), a unix
socket plus a loopback port, and a fresh database per test. Installed by tests/tools.sh;
without the binaries or psycopg, the tests that need them skip and say why."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROLE = "ingestd"
PASSWORD_ROLE = "fleet"
PASSWORD = "s3cret-Pa55"  # the password-checking role's, on a throwaway loopback cluster


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Postgres:
    bin: Path
    root: Path
    port: int
    as_user: list[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sockets(self) -> Path:
        return self.root / "run"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, *args], check=True, capture_output=True, timeout=60, cwd=self.root
        )

    def start(self) -> None:
        options = f"-k {self.sockets} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", options, "-w", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, db: str, tcp: bool = False, user: str = ROLE) -> str:
        if tcp:
            return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"
        return f"postgresql://{user}@/{db}?host={self.sockets}&port={self.port}"

    def sql(self, statement: str, db: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(db), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def new_database(self) -> str:
        name = f"t_{secrets.token_hex(6)}"
        self.sql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name


def start_cluster() -> Iterator[Postgres]:
    bin_dir = _binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL's binaries are not installed (tests/tools.sh installs them)")
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the `test` extra has it)")
    # In /tmp itself (not $TMPDIR, which a package build may put under a folder only root can
    # enter): `nobody` must reach it, and a unix socket's path must stay short.
    root = Path(tempfile.mkdtemp(prefix="ingestd-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root: the cluster is nobody's, in a folder it owns.
        shutil.chown(root, "nobody", "nogroup")
        as_user = ["runuser", "-u", "nobody", "--"]
    root.chmod(0o755)
    pg = Postgres(bin_dir, root, _free_port(), as_user)
    (root / "run").mkdir()
    if as_user:
        shutil.chown(root / "run", "nobody", "nogroup")
    pg._run(
        str(bin_dir / "initdb"), "-D", str(pg.data), "-U", ROLE, "--auth-local=trust",
        "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    pg.start()
    pg.sql(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")
    try:
        yield pg
    finally:
        try:
            pg.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    yield from start_cluster()


@pytest.fixture
def pg_db(postgres: Postgres) -> str:
    """A fresh, empty database on the session's cluster; its name."""
    return postgres.new_database()
