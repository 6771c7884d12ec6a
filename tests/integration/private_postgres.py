"""A private PostgreSQL cluster for fault tests: initdb in a temporary directory, started with
pg_ctl on a free port, restartable mid-test, stopped and deleted at the end. Never the machine's
own server: restarting that would hit every other test using it."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.local import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is missing (Debian: apt-get install postgresql)")
    return found[-1]


@dataclass
class PrivatePostgres:
    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        # PostgreSQL refuses to run as root: the cluster belongs to the postgres user then. Output
        # goes to a file, never a pipe: the server pg_ctl leaves running would hold a pipe open.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        with open(self.directory / "pg_ctl.log", "ab") as log:
            subprocess.run(
                [*prefix, *argv], check=True, stdout=log, stderr=log, stdin=subprocess.DEVNULL, timeout=120
            )

    def pg_ctl(self, *args: str) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.directory / "data"), "-w", *args)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off"
        self.pg_ctl("-l", str(self.directory / "postgres.log"), "-o", options, "start")

    def restart(self) -> None:
        """A real restart: every connection gone, the server away until it is back up."""
        self.pg_ctl("-l", str(self.directory / "postgres.log"), "-m", "fast", "restart")


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    directory = Path(tempfile.mkdtemp(prefix="pg-faults-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    cluster = PrivatePostgres(directory, free_port())
    cluster._run(_bin("initdb"), "-D", str(directory / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
    cluster.start()
    try:
        yield cluster
    finally:
        try:
            cluster.pg_ctl("-m", "immediate", "stop")  # by the postmaster's PID file
        finally:
            shutil.rmtree(directory, ignore_errors=True)


LOCAL_POSTGRES_URL = os.environ.get(
    "TOOLS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new database on the machine's own PostgreSQL (127.0.0.1:5432), its URL; dropped at the end."""
    from sqlalchemy import create_engine, make_url

    admin = create_engine(LOCAL_POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(LOCAL_POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
