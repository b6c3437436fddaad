"""The benchmark database: creating, resetting and inspecting it, and a few server figures."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections

REPO_ROOT = Path(__file__).resolve().parent.parent


def server_url(dbname: str | None = None) -> str:
    """A libpq URL for the benchmark server (``dbname`` defaults to the benchmark database)."""
    db = settings.DATABASES["default"]
    return f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{dbname or db['NAME']}"


def create_database(name: str) -> None:
    """``CREATE DATABASE name`` unless it exists."""
    with psycopg.connect(server_url("postgres"), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with psycopg.connect(server_url("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def ensure_database() -> None:
    """Create the benchmark database if it is missing, then migrate it."""
    create_database(str(settings.DATABASES["default"]["NAME"]))
    call_command("migrate", verbosity=0)


def reset_runs() -> None:
    """Empty the durably tables (runs, steps, attempts, signals, logs, audit records)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE durably_auditrecord, durably_runlog, durably_step, durably_runattempt, "
            "durably_signal, durably_run"
        )


def analyze_runs(*, vacuum: bool = False) -> None:
    """Refresh planner statistics (and the visibility map with ``vacuum``) of the runs table."""
    with connection.cursor() as cursor:
        cursor.execute(f"{'VACUUM ' if vacuum else ''}ANALYZE durably_run")


def scalar(sql: str, params: list[Any] | None = None) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        row = cursor.fetchone()
    return None if row is None else row[0]


def close_django_connections() -> None:
    """Close this process's Django connections (their backends exit and flush their statistics)."""
    connections.close_all()


def xact_commits() -> int:
    """Committed transactions of the benchmark database so far (``pg_stat_database``).

    Backends report their counts when they exit (or at most once a second when idle), so close the
    connections whose transactions should be counted and let them exit before reading.
    """
    time.sleep(0.3)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def server_settings() -> dict[str, str]:
    names = [
        "server_version",
        "fsync",
        "synchronous_commit",
        "wal_sync_method",
        "full_page_writes",
        "shared_buffers",
        "work_mem",
        "max_connections",
        "jit",
    ]
    with psycopg.connect(server_url("postgres"), autocommit=True) as conn:
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in names}  # type: ignore[index]


def worker_env() -> dict[str, str]:
    """Environment of subprocesses: the bench settings, and this checkout first on the path."""
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT),
    }


@contextmanager
def autocommit_psycopg(dbname: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(server_url(dbname), autocommit=True) as conn:
        yield conn
