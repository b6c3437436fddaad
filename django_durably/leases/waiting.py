"""The writes of durable waits (DESIGN.md section 7): a lease holder settling a wait (it is over, or
the run goes ``waiting``), and the wake-ups that make a waiting run ``pending`` again (its timer is
due, its signal was sent, its child runs ended).

A wake-up can race with the run unwinding into ``waiting``: a signal sent, or a child ending, just
as the job finds nothing to return and releases its lease. Neither side may miss the other, so each
starts its transaction by *locking the run* (a guarded ``UPDATE`` of ``updated_at``: the row lock on
PostgreSQL, the write lock on SQLite) and only then reads what it decides on, with statements that
see everything committed before the lock was granted:

* the holder (:func:`settle`) locks its run while still leased, then looks for the signal or the
  children's ends; finding none, it writes ``waiting`` and commits;
* the sender (:func:`deliver_signal`) stores the signal, then locks the run: if the holder went
  first, the run is ``waiting`` and the sender wakes it; if the sender went first, the holder's
  read finds the signal;
* a child's end (:func:`wake_parents`) is committed before it locks its parent: the last child to
  end sees every other end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import connections, transaction
from django.db.models import F

from django_durably.awaiting import WaitRequest, WaitResult, checkpoint_of, parse_until
from django_durably.database import db_alias, retry_if_locked
from django_durably.exceptions import InvalidWait, RunNotFound, RunNotWaiting
from django_durably.leases.statements import (
    DUE_TO_WAKE_SQL,
    LOCK_PARENT_SQL,
    WAKE_DUE_SQL,
    WAKE_PARENT_SQL,
    cursor_for,
    woken_fields,
)
from django_durably.leases.writes import record_attempt, step_row
from django_durably.models import (
    SIGNALLABLE_STATUSES,
    AttemptOutcome,
    DatabaseNow,
    Run,
    RunStatus,
    Signal,
    Step,
    StepStatus,
)
from django_durably.notifications import CHANNEL, notify_ready
from django_durably.types import JSON

_FINISHED: set[str] = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
_UNSUCCESSFUL: dict[str, str] = {RunStatus.FAILED: "failed", RunStatus.CANCELLED: "cancelled"}


@dataclass(frozen=True)
class Waiting:
    """The run went ``waiting``: its lease is released and the job must unwind."""

    wake_at: datetime | None
    waiting_for: dict[str, Any]


# -- the lease holder ------------------------------------------------------------------------------


def settle(
    run_id: UUID, generation: int, request: WaitRequest, *, attempt: int
) -> WaitResult | Waiting | None:
    """Settle a wait of the run this lease holds, in one transaction: return the
    :class:`WaitResult` when the wait is over (its checkpoint written, unless child runs failed),
    :class:`Waiting` when the run went ``waiting`` (lease released, the attempt recorded), or
    ``None`` when the lease no longer holds the run (nothing written; ``holding.refusal`` says why).

    The wait's deadline is taken from its record (the ``waiting`` step row) when the run waited
    here before, so a replay never waits longer than the first time; otherwise it is computed
    now, from the database clock, and the record written with the wait.
    """
    alias = db_alias()
    with transaction.atomic(using=alias):
        runs = Run.objects.using(alias)
        if not runs.held_by(run_id, generation).update(updated_at=DatabaseNow()):
            return None  # the lock, taken first: see the module's docstring
        now = _database_now(alias, run_id)
        record = (
            Step.objects.using(alias)
            .filter(run_id=run_id, name=request.step, status=StepStatus.WAITING)
            .order_by("-id")
            .values_list("output", flat=True)
            .first()
        )
        if isinstance(record, dict):
            until = parse_until(record.get("until"))
        elif request.until is not None:
            until = request.until
        elif request.duration is not None:
            until = now + timedelta(seconds=request.duration)
        else:
            until = None
        result = _outcome(alias, run_id, request, until, now)
        if result is not None:
            if result.status != "failed":
                _checkpoint(alias, run_id, generation, request, result, attempt=attempt, now=now)
            return result
        waiting_for = request.describe(until)
        if record is None:
            step_row(
                run_id,
                StepStatus.WAITING,
                index=request.index,
                name=request.step,
                attempt=attempt,
                output=waiting_for,
                started_at=now,
            ).save(using=alias, force_insert=True)
        record_attempt(alias, run_id, AttemptOutcome.WAITING)
        # Guarded as every holder's write (the lock taken above makes it win).
        runs.held_by(run_id, generation).update(
            status=RunStatus.WAITING,
            wake_at=until,
            waiting_for=waiting_for,
            lease_owner="",
            lease_expires_at=None,
            updated_at=DatabaseNow(),
        )
    return Waiting(wake_at=until, waiting_for=waiting_for)


def _database_now(alias: str, run_id: UUID) -> datetime:
    now: datetime = (
        Run.objects.using(alias)
        .filter(pk=run_id)
        .annotate(now=DatabaseNow())
        .values_list("now", flat=True)
        .get()
    )
    return now


def _outcome(
    alias: str, run_id: UUID, request: WaitRequest, until: datetime | None, now: datetime
) -> WaitResult | None:
    """The wait's result if it is over, else ``None`` (the run must wait)."""
    due = until is not None and until <= now
    if request.kind == "sleep":
        return WaitResult("done", until=until) if until is None or due else None
    if request.kind == "signal":
        signal = (
            Signal.objects.using(alias)
            .filter(run_id=run_id, name=request.signal, consumed_at__isnull=True)
            .order_by("id")
            .first()
        )
        if signal is not None:
            Signal.objects.using(alias).filter(pk=signal.pk).update(
                consumed_at=DatabaseNow(), consumed_by_step=request.step
            )
            return WaitResult("done", signal.payload, until=until)
        return WaitResult("timed_out", until=until) if due else None
    return _children_outcome(alias, run_id, request, until, due=due)


def _children_outcome(
    alias: str, run_id: UUID, request: WaitRequest, until: datetime | None, *, due: bool
) -> WaitResult | None:
    rows = {
        row["id"]: row
        for row in Run.objects.using(alias)
        .filter(pk__in=request.runs)
        .values("id", "status", "output", "error", "parent_id")
    }
    strangers = [str(i) for i in request.runs if i not in rows or rows[i]["parent_id"] != run_id]
    if strangers:
        raise InvalidWait(
            f"step.wait_for_runs({request.step!r}) waits for child runs of this run (made by "
            f"step.trigger); these are not: {', '.join(strangers)}."
        )
    failed = {
        i: _UNSUCCESSFUL[rows[i]["status"]]
        for i in request.runs
        if rows[i]["status"] in _UNSUCCESSFUL
    }
    if failed:
        errors = {i: rows[i]["error"] for i in failed if rows[i]["error"] is not None}
        return WaitResult("failed", until=until, failed=failed, errors=errors)
    if all(rows[i]["status"] == RunStatus.COMPLETED for i in request.runs):
        return WaitResult("done", [rows[i]["output"] for i in request.runs], until=until)
    return WaitResult("timed_out", until=until) if due else None


def _checkpoint(
    alias: str,
    run_id: UUID,
    generation: int,
    request: WaitRequest,
    result: WaitResult,
    *,
    attempt: int,
    now: datetime,
) -> None:
    """The wait's completed step, the run's step counters and its wait cleared (the lock held)."""
    step_row(
        run_id,
        StepStatus.COMPLETED,
        index=request.index,
        name=request.step,
        attempt=attempt,
        output=checkpoint_of(result),
        started_at=now,
    ).save(using=alias, force_insert=True)
    Run.objects.using(alias).held_by(run_id, generation).update(
        current_step_index=request.index + 1,
        completed_step_count=F("completed_step_count") + 1,
        waiting_for=None,
        wake_at=None,
    )


# -- waking ----------------------------------------------------------------------------------------


def wake_due(limit: int = 100) -> list[UUID]:
    """Make pending the waiting runs whose timer is due (at most ``limit``, earliest first), and
    wake the workers of their queues; return their ids. The look is one index-driven read
    (``durably_run_waking_idx``), so when nothing is due it costs no write; the due runs found are
    then woken by one guarded statement (PostgreSQL: with the notification)."""
    alias = db_alias()
    runs = Run.objects.using(alias)
    limit = max(1, int(limit))
    if connections[alias].vendor == "postgresql":
        with cursor_for(alias) as cursor:
            cursor.execute(DUE_TO_WAKE_SQL.format(limit=limit))
            due = [run_id for (run_id,) in cursor.fetchall()]
            if not due:
                return []
            cursor.execute(WAKE_DUE_SQL, [due, CHANNEL])
            return [run_id for (run_id,) in cursor.fetchall()]
    due = list(runs.due_to_wake().order_by("wake_at").values_list("pk", flat=True)[:limit])
    if not due:
        return []

    def wake() -> list[UUID]:
        with transaction.atomic(using=alias):
            still_due = list(runs.due_to_wake().filter(pk__in=due).values_list("pk", flat=True))
            if still_due:
                runs.due_to_wake().filter(pk__in=still_due).update(**woken_fields())
            return still_due

    return retry_if_locked(alias, wake)


def wake_parents(parent_ids: Iterable[UUID | None]) -> list[UUID]:
    """After runs ended (committed): wake each parent waiting for child runs whose children are
    now all finished, or one of them failed or was cancelled. Returns the parents woken."""
    alias = db_alias()
    woken = []
    for parent_id in sorted({p for p in parent_ids if p is not None}):
        if retry_if_locked(alias, _wake_parent, alias, parent_id):
            woken.append(parent_id)
    return woken


def _wake_parent(alias: str, parent_id: UUID) -> bool:
    if connections[alias].vendor == "postgresql":
        return _wake_parent_postgres(alias, parent_id)
    with transaction.atomic(using=alias):
        runs = Run.objects.using(alias)
        # The lock, taken first, whatever the parent's status: a parent still leased may be
        # settling its wait right now (it read its children before this child's end committed);
        # this waits for it, then reads what it wrote. Guarding on ``waiting`` here would miss it:
        # PostgreSQL evaluates the guard on the row as it was, and skips it without waiting.
        if (
            not runs.filter(pk=parent_id)
            .exclude(status__in=_FINISHED)
            .update(updated_at=DatabaseNow())
        ):
            return False
        status, waiting_for, queue = (
            runs.filter(pk=parent_id).values_list("status", "waiting_for", "queue").get()
        )
        if status != RunStatus.WAITING or not isinstance(waiting_for, dict):
            return False
        if waiting_for.get("kind") != "runs":
            return False
        children = [UUID(str(i)) for i in waiting_for.get("runs") or ()]
        statuses = dict(runs.filter(pk__in=children).values_list("pk", "status"))
        over = any(statuses.get(i) in _UNSUCCESSFUL for i in children) or all(
            statuses.get(i) in _FINISHED for i in children
        )
        if not over:
            return False
        runs.filter(pk=parent_id, status=RunStatus.WAITING).update(**woken_fields())
        notify_ready(alias, [queue])
    return True


def _wake_parent_postgres(alias: str, parent_id: UUID) -> bool:
    """:func:`_wake_parent` in two prepared statements (the lock and read, then the guarded wake
    with its notification) rather than the ORM's five."""
    # No savepoint of its own inside a caller's transaction (the worker's ends): one round trip less
    # each way; the caller's savepoint, if it wants one, covers it.
    with transaction.atomic(using=alias, savepoint=False), cursor_for(alias) as cursor:
        cursor.execute(LOCK_PARENT_SQL, [parent_id])
        row = cursor.fetchone()
        if row is None or row[0] != RunStatus.WAITING:
            return False
        waiting_for = json.loads(row[1]) if isinstance(row[1], str) else row[1]
        if not isinstance(waiting_for, dict) or waiting_for.get("kind") != "runs":
            return False
        children = [UUID(str(i)) for i in waiting_for.get("runs") or ()]
        cursor.execute(WAKE_PARENT_SQL, [parent_id, children, children, CHANNEL])
        return cursor.fetchone() is not None


# -- signals ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """What :func:`deliver_signal` did."""

    signal: Signal
    created: bool
    woke: bool
    run_status: str
    job_name: str


def deliver_signal(
    run_id: UUID,
    name: str,
    payload: JSON,
    *,
    idempotency_key: str | None,
    sent_by: str,
    source: str,
) -> Delivery:
    """Store a signal for a run that has not finished and wake the run if it waits for it, in the
    caller's transaction (see the module's docstring for the order of the locks). A signal whose
    ``idempotency_key`` the run already has is returned (``created=False``) whatever the run's
    status now. Raises :class:`RunNotFound` and :class:`RunNotWaiting` (the run finished)."""
    alias = db_alias()
    runs = Run.objects.using(alias)
    signals = Signal.objects.using(alias)
    locked = runs.filter(pk=run_id, status__in=SIGNALLABLE_STATUSES).update(
        updated_at=DatabaseNow()
    )
    row = runs.filter(pk=run_id).values_list("status", "job_name", "waiting_for", "queue").first()
    if row is None:
        raise RunNotFound(run_id)
    status, job_name, waiting_for, queue = row
    if idempotency_key is not None:
        existing = signals.filter(run_id=run_id, idempotency_key=idempotency_key).first()
        if existing is not None:
            return Delivery(
                existing, created=False, woke=False, run_status=status, job_name=job_name
            )
    if not locked:
        raise RunNotWaiting(run_id, status)
    signal = signals.create(
        run_id=run_id,
        name=name,
        payload=payload,
        idempotency_key=idempotency_key,
        sent_by=sent_by,
        source=source,
    )
    woke = (
        status == RunStatus.WAITING
        and isinstance(waiting_for, dict)
        and waiting_for.get("kind") == "signal"
        and waiting_for.get("signal") == name
        and bool(runs.filter(pk=run_id, status=RunStatus.WAITING).update(**woken_fields()))
    )
    if woke:
        notify_ready(alias, [queue])
        status = RunStatus.PENDING
    return Delivery(signal, created=True, woke=woke, run_status=status, job_name=job_name)


def unfinished_children(run_ids: Sequence[UUID]) -> list[UUID]:
    """The children of these runs that have not finished, oldest first."""
    return list(
        Run.objects.using(db_alias())
        .filter(parent_id__in=run_ids)
        .exclude(status__in=_FINISHED)
        .order_by("created_at", "id")
        .values_list("pk", flat=True)
    )
