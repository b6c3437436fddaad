"""Creating and resetting the benchmark database."""

from __future__ import annotations

import os

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.db import connection


def ensure_database() -> None:
    """Create the benchmark database if it is missing, then migrate it."""
    db = settings.DATABASES["default"]
    url = f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/postgres"
    with psycopg.connect(url, autocommit=True) as admin:
        exists = admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
        ).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{db["NAME"]}"')
    call_command("migrate", verbosity=0)


def reset_runs() -> None:
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE durably_runlog, durably_step, durably_run")


def worker_env() -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings"}
