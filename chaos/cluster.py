"""The PostgreSQL server the chaos suite runs against, and restarting it.

By default the suite uses a cluster of its own, never the machine's shared one: on Debian (the
``postgresql-common`` tools) it creates ``<version>/durably_chaos`` on port 5444 once, with trust
authentication on localhost and ``start.conf`` manual, starts it when it is down, and restarts it
with ``pg_ctlcluster ... restart -m fast|immediate``. ``--postgres-url`` and ``--restart-command``
point the suite at any other server instead (see docs/chaos.md).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from chaos.records import Restart

DEFAULT_CLUSTER = "durably_chaos"
DEFAULT_PORT = 5444
DEFAULT_DATABASE = "durably_chaos"
UP_TIMEOUT = 120.0


class ClusterError(RuntimeError):
    """The suite's PostgreSQL server could not be created, started or reached."""


@dataclass
class Server:
    """A server the suite may restart, and its chaos database."""

    url: str  # the chaos database
    restart_command: list[str] | None  # tokens; ``{mode}`` is replaced by fast or immediate
    description: str

    @property
    def admin_url(self) -> str:
        """The same server's maintenance database, to create and drop the chaos database."""
        return make_conninfo(self.url, dbname="postgres")

    @property
    def database(self) -> str:
        return str(conninfo_to_dict(self.url).get("dbname", DEFAULT_DATABASE))

    def accepts_connections(self) -> bool:
        try:
            psycopg.connect(self.admin_url, connect_timeout=2).close()
        except psycopg.Error:
            return False
        return True

    def wait_up(self, timeout: float = UP_TIMEOUT) -> float | None:
        """Wait until the server accepts a connection; return when it did (``None``: timed out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.accepts_connections():
                return time.time()
            time.sleep(0.1)
        return None

    def restart(self, mode: str) -> Restart:
        """Run the restart command with ``mode`` and wait for the server to accept connections."""
        if self.restart_command is None:
            raise ClusterError("no restart command for this server")
        command = [token.replace("{mode}", mode) for token in self.restart_command]
        started_at = time.time()
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=UP_TIMEOUT, check=False
        )
        done_at = time.time()
        if finished.returncode != 0:
            print(f"   restart command exited {finished.returncode}: {finished.stderr.strip()}")
        return Restart(mode=mode, started_at=started_at, done_at=done_at, up_at=self.wait_up())

    def recreate_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.database}"')

    def drop_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def external_server(url: str, restart_command: str | None) -> Server:
    """A server given by ``--postgres-url`` (restarted by ``--restart-command``, if any)."""
    params = conninfo_to_dict(url)
    if params.get("dbname") in (None, "", "postgres", "template0", "template1"):
        url = make_conninfo(url, dbname=DEFAULT_DATABASE)
    command = shlex.split(restart_command) if restart_command else None
    server = Server(url=url, restart_command=command, description=f"external server {url}")
    if server.wait_up(10) is None:
        raise ClusterError(f"PostgreSQL at {url} does not accept connections")
    return server


def own_cluster(version: str | None, name: str, port: int, database: str) -> Server:
    """The suite's own Debian cluster, created once and started when down."""
    for tool in ("pg_lsclusters", "pg_createcluster", "pg_ctlcluster"):
        if shutil.which(tool) is None:
            raise ClusterError(
                f"{tool} is not installed (Debian's postgresql-common); install PostgreSQL, or "
                "pass --postgres-url and --restart-command"
            )
    found = _cluster(name, version)
    if found is None:
        version = version or _newest_version()
        _create(version, name, port)
        found = _cluster(name, version)
        if found is None:
            raise ClusterError(f"pg_createcluster did not create {version}/{name}")
    version, actual_port, status = found
    if not status.startswith("online"):
        _run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"])
    url = f"postgresql://postgres@127.0.0.1:{actual_port}/{database}"
    server = Server(
        url=url,
        restart_command=[
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            "-m",
            "{mode}",
            version,
            name,
            "restart",
        ],
        description=f"cluster {version}/{name} on port {actual_port}",
    )
    if server.wait_up(60) is None:
        raise ClusterError(f"cluster {version}/{name} does not accept connections on {actual_port}")
    return server


def _cluster(name: str, version: str | None) -> tuple[str, int, str] | None:
    """``(version, port, status)`` of this machine's cluster ``name`` (of ``version``, if given)."""
    for line in _run(["pg_lsclusters", "--no-header"]).stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == name and version in (None, fields[0]):
            return fields[0], int(fields[2]), fields[3]
    return None


def _newest_version() -> str:
    versions = sorted(
        (p.name for p in Path("/usr/lib/postgresql").glob("*") if (p / "bin/postgres").exists()),
        key=lambda v: [int(part) for part in v.split(".") if part.isdigit()],
    )
    if not versions:
        raise ClusterError("no PostgreSQL server is installed under /usr/lib/postgresql")
    return versions[-1]


def _create(version: str, name: str, port: int) -> None:
    if os.geteuid() != 0:
        raise ClusterError(
            f"creating the cluster {version}/{name} needs root; run once as root:\n"
            f"  pg_createcluster --start-conf manual -p {port} {version} {name} -- "
            "--auth-local=trust --auth-host=trust"
        )
    print(f"   creating PostgreSQL cluster {version}/{name} on port {port} (once)")
    _run(
        [
            "pg_createcluster",
            "--start-conf",
            "manual",
            "--port",
            str(port),
            "-o",
            "max_connections=300",
            version,
            name,
            "--",
            "--auth-local=trust",
            "--auth-host=trust",
        ]
    )


def _run(command: list[str]) -> subprocess.CompletedProcess[Any]:
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if finished.returncode != 0:
        raise ClusterError(
            f"{' '.join(command)} exited {finished.returncode}: "
            f"{(finished.stderr or finished.stdout).strip()}"
        )
    return finished
