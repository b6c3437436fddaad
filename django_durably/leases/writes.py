"""The writes a lease holder makes: a completed or failed step, progress, a log line, the run's end,
and the record of a step a cancel interrupted.

Each is one guarded statement, or one short transaction that starts with the guarded write, whose
row count says whether this lease still holds the run (``Run.objects.held_by``: status ``leased``
AND the lease's generation; ``statements.HELD_BY_SQL`` restates it for the hand-written
statements). A refused write changes nothing and returns ``False``; ``holding.refusal`` tells the
caller why. Starting with the write takes the row lock (PostgreSQL) or the database's write lock
(SQLite) at once, so nothing can slip in between the guard and the rest of the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.db import connections, transaction
from django.db.models import F

from django_durably.database import db_alias
from django_durably.leases.statements import (
    FINISH_ROW,
    FINISH_SQL,
    PERSIST_STEP_SQL,
    cursor_for,
    ended_fields,
    jsonb,
)
from django_durably.models import DatabaseNow, Run, RunLog, RunQuerySet, RunStatus, Step, StepStatus
from django_durably.types import JSON, LogLevel

# -- steps ---------------------------------------------------------------------------------------


def persist_completed_step(
    run_id: UUID,
    generation: int,
    *,
    index: int,
    name: str,
    attempt: int,
    output: JSON,
    started_at: datetime,
    completed_at: datetime,
) -> bool:
    """Insert a completed step and advance the run's step counters, atomically, if this lease still
    holds the run. Returns whether it did; raises ``IntegrityError`` if the step name already has a
    completed row."""
    alias = db_alias()
    if connections[alias].vendor == "postgresql":
        with cursor_for(alias) as cursor:
            cursor.execute(
                PERSIST_STEP_SQL,
                [
                    index + 1,
                    run_id,
                    generation,
                    index,
                    name,
                    attempt,
                    jsonb(output),
                    started_at,
                    completed_at,
                ],
            )
            return cursor.fetchone() is not None
    return _guarded_insert(
        Run.objects.using(alias).held_by(run_id, generation),
        Step(
            run_id=run_id,
            index=index,
            name=name,
            status=StepStatus.COMPLETED,
            attempt=attempt,
            output=output,
            started_at=started_at,
            completed_at=completed_at,
        ),
        current_step_index=index + 1,
        completed_step_count=F("completed_step_count") + 1,
    )


def persist_failed_step(
    run_id: UUID,
    generation: int,
    *,
    index: int,
    name: str,
    attempt: int,
    error: dict[str, str],
    started_at: datetime,
    completed_at: datetime,
) -> bool:
    """Insert a failed step if this lease still holds the run; return whether it did."""
    return _guarded_insert(
        Run.objects.using(db_alias()).held_by(run_id, generation),
        Step(
            run_id=run_id,
            index=index,
            name=name,
            status=StepStatus.FAILED,
            attempt=attempt,
            error=error,
            started_at=started_at,
            completed_at=completed_at,
        ),
    )


def record_cancelled_step(
    run_id: UUID,
    generation: int,
    *,
    index: int,
    name: str,
    attempt: int,
    started_at: datetime,
    completed_at: datetime,
) -> bool:
    """Record that step ``name`` was running when the run was cancelled under lease ``generation``
    (a ``cancelled`` step row); return whether it was recorded. Nothing is written unless the run is
    still cancelled under that lease: once it was resumed and claimed again, it is not this
    lease's to write."""
    cancelled = Run.objects.using(db_alias()).filter(
        pk=run_id, status=RunStatus.CANCELLED, lease_generation=generation
    )
    return _guarded_insert(
        cancelled,
        Step(
            run_id=run_id,
            index=index,
            name=name,
            status=StepStatus.CANCELLED,
            attempt=attempt,
            started_at=started_at,
            completed_at=completed_at,
        ),
    )


# -- progress and log lines ------------------------------------------------------------------------


def persist_progress(run_id: UUID, generation: int, progress: dict[str, Any]) -> bool:
    """Store the run's progress if this lease still holds the run; return whether it did."""
    alias = db_alias()
    return bool(
        Run.objects.using(alias)
        .held_by(run_id, generation)
        .update(progress=progress, updated_at=DatabaseNow())
    )


def persist_log(
    run_id: UUID,
    generation: int,
    *,
    attempt: int,
    level: LogLevel,
    message: str,
    data: JSON,
    step_name: str | None,
) -> bool:
    """Append a log line to the run if this lease still holds it; return whether it did."""
    return _guarded_insert(
        Run.objects.using(db_alias()).held_by(run_id, generation),
        RunLog(
            run_id=run_id,
            step_name=step_name or "",
            level=level,
            message=message,
            data=data,
            attempt=attempt,
        ),
    )


def _guarded_insert(guard: RunQuerySet, row: Step | RunLog, **run_changes: Any) -> bool:
    """Insert ``row`` if ``guard`` (one run in the state this write needs) matches, in one
    transaction that starts with the guarded UPDATE of the run (``run_changes`` and
    ``updated_at``): it takes the run's row lock (PostgreSQL) or the write lock (SQLite) at once,
    so nothing changes the run between the guard and the insert. Returns whether it inserted."""
    alias = guard.db
    with transaction.atomic(using=alias):
        held = guard.update(updated_at=DatabaseNow(), **run_changes)
        if held:
            row.save(using=alias, force_insert=True)
    return bool(held)


# -- the run's end ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinishRow:
    """One run's end to write under its lease (a row of :func:`finish`): ``value`` is the output of
    a completed run or the error of a failed one."""

    run_id: UUID
    generation: int
    status: Literal[RunStatus.COMPLETED, RunStatus.FAILED]
    value: JSON | dict[str, str]


def finish(rows: Sequence[FinishRow]) -> set[UUID]:
    """Record each run's end (completed with its output, or failed with its error) if its lease still
    holds the run, all in one transaction; return the ids of the runs recorded. A run left out was
    cancelled, or its lease was lost (``holding.refusal`` tells which)."""
    if not rows:
        return set()
    alias = db_alias()
    if connections[alias].vendor == "postgresql":
        params: list[Any] = []
        for row in rows:
            params += [row.run_id, row.generation, row.status.value, jsonb(row.value)]
        sql = FINISH_SQL.format(rows=", ".join([FINISH_ROW] * len(rows)))
        with cursor_for(alias) as cursor:
            cursor.execute(sql, params)
            return {row[0] for row in cursor.fetchall()}
    won: set[UUID] = set()
    with transaction.atomic(using=alias):
        for row in rows:
            column = "output" if row.status == RunStatus.COMPLETED else "error"
            if (
                Run.objects.using(alias)
                .held_by(row.run_id, row.generation)
                .update(**ended_fields(row.status), **{column: row.value})
            ):
                won.add(row.run_id)
    return won


def complete(run_id: UUID, generation: int, output: JSON) -> bool:
    """Mark the run completed with ``output``, if this lease still holds it."""
    return run_id in finish([FinishRow(run_id, generation, RunStatus.COMPLETED, output)])


def fail(run_id: UUID, generation: int, error: dict[str, str]) -> bool:
    """Mark the run failed with ``error``, if this lease still holds it."""
    return run_id in finish([FinishRow(run_id, generation, RunStatus.FAILED, error)])
