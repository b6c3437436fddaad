"""A worker started on a database without durably's tables exits at once, saying to migrate, instead
of retrying its claims forever."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connections

from tests.acceptance.processes import WorkerProcess, worker_env
from tests.databases import empty_database

pytestmark = pytest.mark.slow


def test_durably_worker__exits_at_start_up_on_an_unmigrated_database(db_alias: str, tmp_path: Path):
    vendor = connections[db_alias].vendor
    with empty_database(vendor, tmp_path) as name:
        env = worker_env(db_alias)
        env["DURABLY_WORKER_SQLITE" if vendor == "sqlite" else "DURABLY_WORKER_PG_DB"] = name
        worker = WorkerProcess("unmigrated", ["--until-idle"], env, tmp_path / "worker.log")
        try:
            returncode = worker.wait_exit(30)
        finally:
            worker.close()

    migrate = "python manage.py migrate" + (
        "" if db_alias == "default" else f" --database {db_alias}"
    )
    assert returncode == 1
    assert worker.log().splitlines() == [
        f"CommandError: Database {db_alias!r} is not migrated for django-durably: migrations "
        "durably.0001_initial, durably.0002_database_now_on_sqlite, "
        "durably.0003_retries_and_attempts, durably.0004_waits are not applied. "
        f"Run `{migrate}`."
    ]
