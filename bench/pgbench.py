"""The machine's ceiling: pgbench single-row UPDATE transactions per second.

A scratch database (``durably_pgbench``) is initialised with ``pgbench -i`` (scale 1: 100,000
accounts), then a custom script of one ``UPDATE pgbench_accounts`` per transaction runs with 1 and 4
clients for a fixed time.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings

from bench.database import create_database, drop_database
from bench.procs import BenchError

DATABASE = "durably_pgbench"
SCRIPT = (
    "\\set aid random(1, 100000)\n"
    "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n"
)
TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)


def pgbench_binary() -> str:
    found = shutil.which("pgbench") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)), None
    )
    if not found:
        raise BenchError("pgbench not found (Debian: apt-get install postgresql-contrib)")
    return found


def _connection_args() -> list[str]:
    db = settings.DATABASES["default"]
    return ["-h", str(db["HOST"]), "-p", str(db["PORT"]), "-U", str(db["USER"])]


@contextmanager
def scratch() -> Iterator[Callable[[int, int], dict[str, Any]]]:
    """Initialise the scratch database; yield ``run(clients, seconds)``, which times one pgbench run
    on it; drop the database afterwards."""
    binary = pgbench_binary()
    create_database(DATABASE)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(SCRIPT)
    try:
        subprocess.run(
            [binary, *_connection_args(), "-i", "-s", "1", "-q", DATABASE],
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield lambda clients, seconds: _run(binary, script.name, clients, seconds)
    finally:
        os.unlink(script.name)
        drop_database(DATABASE)


def measure(clients: list[int], seconds: int) -> list[dict[str, Any]]:
    """One timed run per client count."""
    with scratch() as run:
        return [run(count, seconds) for count in clients]


def _run(binary: str, script: str, clients: int, seconds: int) -> dict[str, Any]:
    threads = min(clients, os.cpu_count() or 1)
    command = [binary, *_connection_args(), "-n", "-f", script]
    command += ["-c", str(clients), "-j", str(threads), "-T", str(seconds), DATABASE]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=seconds + 60)
    tps = TPS.search(done.stdout)
    latency = LATENCY.search(done.stdout)
    if tps is None:
        raise BenchError(f"could not read tps from pgbench output: {done.stdout[-500:]}")
    return {
        "clients": clients,
        "threads": threads,
        "seconds": seconds,
        "tps": round(float(tps.group(1)), 1),
        "latency_ms": float(latency.group(1)) if latency else None,
        "script": SCRIPT,
    }
