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

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from django.conf import settings
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone

from django_durably.database import db_alias
from django_durably.leases.statements import (
    FINISH_RECORDING_SQL,
    FINISH_ROW,
    FINISH_SQL,
    PERSIST_STEP_SQL,
    RECORD_ATTEMPT_SQL,
    SQLITE_NOW,
    cursor_for,
    ended_fields,
    jsonb,
    retry_fields,
)
from django_durably.models import (
    AttemptOutcome,
    DatabaseNow,
    Run,
    RunLog,
    RunQuerySet,
    RunStatus,
    Step,
    StepStatus,
)
from django_durably.serialization import dump
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
    step_attempt: int = 1,
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
                    step_attempt,
                    jsonb(output),
                    started_at,
                    completed_at,
                ],
            )
            return cursor.fetchone() is not None
    return _guarded_insert(
        Run.objects.using(alias).held_by(run_id, generation),
        step_row(
            run_id,
            StepStatus.COMPLETED,
            index=index,
            name=name,
            attempt=attempt,
            step_attempt=step_attempt,
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
    step_attempt: int = 1,
) -> bool:
    """Insert a failed step (try ``step_attempt`` of its function) if this lease still holds the
    run; return whether it did."""
    return _guarded_insert(
        Run.objects.using(db_alias()).held_by(run_id, generation),
        step_row(
            run_id,
            StepStatus.FAILED,
            index=index,
            name=name,
            attempt=attempt,
            step_attempt=step_attempt,
            error=error,
            started_at=started_at,
            completed_at=completed_at,
        ),
    )


def step_row(
    run_id: UUID,
    status: StepStatus,
    *,
    index: int,
    name: str,
    attempt: int,
    started_at: datetime,
    completed_at: datetime | None = None,
    step_attempt: int = 1,
    output: JSON = None,
    error: dict[str, str] | None = None,
) -> Step:
    """A step row (unsaved): a completed checkpoint with its ``output``, a failed try with its
    ``error``, a cancelled step, or a durable wait's record. ``completed_at`` ``None``: the
    database clock's now, the column's default."""
    row = Step(
        run_id=run_id,
        index=index,
        name=name,
        status=status,
        attempt=attempt,
        step_attempt=step_attempt,
        output=output,
        error=error,
        started_at=started_at,
    )
    if completed_at is not None:
        row.completed_at = completed_at
    return row


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
        step_row(
            run_id,
            StepStatus.CANCELLED,
            index=index,
            name=name,
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


# -- the attempt's end -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FinishRow:
    """One attempt's end to write under its lease (a row of :func:`finish`).

    ``status`` is where the run goes: ``completed`` (``value`` is the output), ``failed`` (``value``
    is the error) or ``pending`` to be tried again in ``retry_delay`` seconds (``value`` is the
    error). ``outcome`` is what the attempt's history row says (by default: ``completed``, or
    ``failed``); ``counted`` whether the attempt counts against the retry policy (by default: a
    failure does); ``bump_generation`` fences out for good a thread that may still be running (an
    attempt ended on time)."""

    run_id: UUID
    generation: int
    status: Literal[RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.PENDING]
    value: JSON | dict[str, str]
    outcome: AttemptOutcome | None = None
    retry_delay: float = 0.0
    counted: bool | None = None
    bump_generation: bool = False

    @property
    def attempt_outcome(self) -> AttemptOutcome:
        if self.outcome is not None:
            return self.outcome
        if self.status == RunStatus.COMPLETED:
            return AttemptOutcome.COMPLETED
        return AttemptOutcome.FAILED

    @property
    def counts(self) -> bool:
        if self.counted is not None:
            return self.counted
        return self.attempt_outcome in (AttemptOutcome.FAILED, AttemptOutcome.TIMED_OUT)


def finish(
    rows: Sequence[FinishRow], *, also: Callable[[str, dict[UUID, Any]], None] | None = None
) -> dict[UUID, Any]:
    """Record each attempt's end if its lease still holds the run, with the history row of an
    attempt that did not complete its run (a completed run is its last attempt's record), all in
    one transaction (one statement on PostgreSQL); return the ids of the runs recorded, each
    with its ``retry_at`` (``None`` unless it goes back to pending). A run left out was cancelled, or
    its lease was lost (``holding.refusal`` tells which).

    ``also(alias, won)`` runs in the same transaction after the ends were written, when at least one
    was (an attempt ended on time records its timed-out step this way)."""
    if not rows:
        return {}
    alias = db_alias()
    won: dict[UUID, Any] = {}
    if connections[alias].vendor == "postgresql":
        params: list[Any] = []
        for row in rows:
            params += [
                row.run_id,
                row.generation,
                row.status.value,
                row.attempt_outcome.value,
                jsonb(row.value),
                float(row.retry_delay),
                int(row.counts),
                int(row.bump_generation),
            ]
        recorded = any(row.attempt_outcome != AttemptOutcome.COMPLETED for row in rows)
        sql = (FINISH_RECORDING_SQL if recorded else FINISH_SQL).format(
            rows=", ".join([FINISH_ROW] * len(rows))
        )
        with contextlib.nullcontext() if also is None else transaction.atomic(using=alias):
            with cursor_for(alias) as cursor:
                cursor.execute(sql, params)
                won.update(cursor.fetchall())
            if won and also is not None:
                also(alias, won)
        return won
    with transaction.atomic(using=alias):
        for row in rows:
            if not _finish_one(alias, row):
                continue
            won[row.run_id] = None
            if row.attempt_outcome != AttemptOutcome.COMPLETED:
                won[row.run_id] = record_attempt(alias, row.run_id, row.attempt_outcome, row.value)
        if won and also is not None:
            also(alias, won)
    return won


def _finish_one(alias: str, row: FinishRow) -> bool:
    """SQLite: one run's end (the caller adds its history row)."""
    if row.status == RunStatus.PENDING:
        fields = {**retry_fields(row.retry_delay), "error": row.value}
    else:
        column = "output" if row.status == RunStatus.COMPLETED else "error"
        fields = {**ended_fields(row.status), column: row.value}
    if row.counts:
        fields["failed_attempts"] = F("failed_attempts") + 1
    if row.bump_generation:
        fields["lease_generation"] = F("lease_generation") + 1
    return bool(Run.objects.using(alias).held_by(row.run_id, row.generation).update(**fields))


def record_attempt(
    alias: str,
    run_id: UUID,
    outcome: AttemptOutcome,
    error: JSON | dict[str, str] | None = None,
    *,
    worker: str | None = None,
) -> datetime | None:
    """Insert the history row of the run's current attempt (number, worker and start from the run
    as it is now), ended now by the database clock; for the caller's transaction, after the write
    that ended the attempt. ``worker`` is who held the attempt when the write cleared the run's
    owner (a hand back). Returns the run's ``retry_at``."""
    connection = connections[alias]
    if connection.vendor == "postgresql":
        sql = RECORD_ATTEMPT_SQL.format(now="statement_timestamp()", error="%s::jsonb")
    else:
        sql = RECORD_ATTEMPT_SQL.format(now=SQLITE_NOW, error="%s")
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            [
                worker,
                outcome.value,
                None if error is None else dump(error),
                Run._meta.pk.get_db_prep_value(run_id, connection),
            ],
        )
        found = cursor.fetchone()
    if found is None or found[0] is None:
        return None
    value: datetime = Run._meta.get_field("retry_at").to_python(found[0])
    if settings.USE_TZ and timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    return value


def complete(run_id: UUID, generation: int, output: JSON) -> bool:
    """Mark the run completed with ``output``, if this lease still holds it."""
    return run_id in finish([FinishRow(run_id, generation, RunStatus.COMPLETED, output)])


def fail(run_id: UUID, generation: int, error: dict[str, str]) -> bool:
    """Mark the run failed with ``error``, if this lease still holds it."""
    return run_id in finish([FinishRow(run_id, generation, RunStatus.FAILED, error)])
