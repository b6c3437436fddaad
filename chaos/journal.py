"""The journal the chaos job writes on its own connection, and loading the evidence back.

Each row says what a job function did (``enter``, ``start`` and ``end`` of a step function), under
which attempt, in which process and thread, at which database time. It is written on a psycopg
autocommit connection of the worker thread's own, never Django's, so it survives everything that
happens to a run's transactions. A row is never silently dropped: a failed insert is retried on a
new connection (the row's id makes a retry of a row that did commit harmless) until
``DURABLY_CHAOS_JOURNAL_DEADLINE`` seconds have passed, and then :class:`JournalUnavailable` is
raised, so the step fails instead of counting as run.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import psycopg

from chaos.records import AttemptRow, JournalEvent, JournalKind, RunRow, StepRow

DEFAULT_DEADLINE = 120.0
RETRY_INTERVAL = 0.25

CREATE_SQL = """
CREATE TABLE IF NOT EXISTS chaos_journal (
    id uuid PRIMARY KEY,
    event text NOT NULL,
    run_id uuid NOT NULL,
    step text NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    thread bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at timestamptz NOT NULL
)
"""

INSERT_SQL = """
INSERT INTO chaos_journal (id, event, run_id, step, attempt, pid, thread, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, to_timestamp(%s))
ON CONFLICT (id) DO NOTHING
"""


class JournalUnavailable(Exception):  # noqa: N818 - named for what happened, like DESIGN's errors
    """The journal row could not be written before the deadline."""


def database_url() -> str:
    return os.environ["DURABLY_CHAOS_URL"]


def connect(url: str, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=3,
        application_name=f"chaos-{role}-{os.getpid()}",
        options="-c statement_timeout=10000",
    )


class _Writer(threading.local):
    connection: psycopg.Connection[Any] | None = None


_writer = _Writer()


def record(event: JournalKind, run_id: Any, step: str, attempt: int) -> None:
    """Write one journal row, retrying on a new connection until it is written or the deadline
    passes (then raise :class:`JournalUnavailable`)."""
    row = [
        uuid.uuid4(),
        event,
        str(run_id),
        step,
        attempt,
        os.getpid(),
        threading.get_native_id(),
        time.time(),
    ]
    deadline = time.monotonic() + float(
        os.environ.get("DURABLY_CHAOS_JOURNAL_DEADLINE", DEFAULT_DEADLINE)
    )
    while True:
        try:
            if _writer.connection is None or _writer.connection.closed:
                _writer.connection = connect(database_url(), "journal")
            _writer.connection.execute(INSERT_SQL, row)
            return
        except psycopg.Error as exc:
            _close()
            if time.monotonic() >= deadline:
                raise JournalUnavailable(
                    f"journal row {event} {step!r} of run {run_id} not written: {exc}"
                ) from exc
            time.sleep(RETRY_INTERVAL)


def _close() -> None:
    connection, _writer.connection = _writer.connection, None
    if connection is not None:
        try:
            connection.close()
        except psycopg.Error:
            pass


# -- reading the evidence back ---------------------------------------------------------------------


def create_table(url: str) -> None:
    with connect(url, "harness") as connection:
        connection.execute(CREATE_SQL)


def load_journal(connection: psycopg.Connection[Any]) -> list[JournalEvent]:
    rows = connection.execute(
        "SELECT event, run_id::text, step, attempt, pid, thread, extract(epoch FROM at)::float8, "
        "extract(epoch FROM created_at)::float8 FROM chaos_journal ORDER BY at"
    ).fetchall()
    return [JournalEvent(*row) for row in rows]


def load_runs(connection: psycopg.Connection[Any]) -> list[RunRow]:
    rows = connection.execute(
        "SELECT id::text, status, attempt, idempotency_key, concurrency_key, "
        "coalesce(error->>'type', ''), coalesce(error->>'message', '') FROM durably_run"
    ).fetchall()
    return [RunRow(*row) for row in rows]


def load_attempts(connection: psycopg.Connection[Any]) -> list[AttemptRow]:
    rows = connection.execute(
        "SELECT run_id::text, number, outcome, coalesce(error->>'type', '') "
        "FROM durably_runattempt ORDER BY run_id, number, id"
    ).fetchall()
    return [AttemptRow(*row) for row in rows]


def load_steps(connection: psycopg.Connection[Any]) -> list[StepRow]:
    rows = connection.execute(
        "SELECT run_id::text, name, status, attempt, extract(epoch FROM completed_at)::float8 "
        "FROM durably_step"
    ).fetchall()
    return [StepRow(*row) for row in rows]
