"""Inserting pending runs on PostgreSQL: one prepared statement, whatever their number, which also
wakes the workers of their queues (SQLite uses ``bulk_create``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django_durably.leases.statements import INSERT_RUNS_SQL, cursor_for
from django_durably.models import Run
from django_durably.notifications import CHANNEL
from django_durably.serialization import dump


@dataclass(frozen=True)
class NewRun:
    """A validated, unsaved pending run, and what inserting it needs besides the instance."""

    run: Run
    input_json: str | None
    """``run.input`` as the JSON text to store (``None``: SQL NULL, as the ORM stores ``None``)."""
    run_after: datetime | None
    """The trigger's ``run_after``; ``None``: the database clock's now, as the column's default."""


def insert_runs(alias: str, job_name: str, new_runs: Sequence[NewRun]) -> None:
    """Insert pending runs of one job with one statement, whatever their number, and wake the
    workers of their queues when it commits.

    Each run gets the stored ``run_after``, ``created_at`` and ``updated_at`` and is marked saved,
    as ``bulk_create`` would leave it.
    """
    runs = {new.run.pk: new.run for new in new_runs}
    with cursor_for(alias) as cursor:
        cursor.execute(
            INSERT_RUNS_SQL,
            [
                job_name,
                [new.run.pk for new in new_runs],
                [new.run.queue for new in new_runs],
                [new.run.priority for new in new_runs],
                [new.input_json for new in new_runs],
                [new.run.idempotency_key for new in new_runs],
                [new.run.concurrency_key for new in new_runs],
                [dump(new.run.labels) for new in new_runs],
                [new.run_after for new in new_runs],
                [new.run.parent_id for new in new_runs],
                CHANNEL,
            ],
        )
        rows = cursor.fetchall()
    if len(rows) != len(runs):  # pragma: no cover - INSERT ... SELECT inserts every row or raises
        raise RuntimeError(f"Inserted {len(rows)} of {len(runs)} runs.")
    for run_id, run_after, created_at, updated_at in rows:
        run = runs[run_id]
        run.run_after, run.created_at, run.updated_at = run_after, created_at, updated_at
        run._state.adding = False
        run._state.db = alias
