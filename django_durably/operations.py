"""Operator actions on runs: cancel, resume, retrigger, delete, and purging old runs.

Apart from the worker path (``leases``, ``checkpoints``, ``executor``), this is the only code that
changes a run's status; the admin, the HTTP API and Python callers all come through here. Every
action is one guarded UPDATE per status of its state set (so the status it changed *from* is known
exactly), written in one transaction with its :class:`~django_durably.models.AuditRecord`. A miss
re-reads the run and raises a typed error carrying the current status. Signals are sent after commit.

Triggering and waiting live in ``triggering`` and are re-exported here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

from django.db import IntegrityError, transaction
from django.dispatch import Signal
from django.utils import timezone

from django_durably import signals
from django_durably.database import db_alias, ensure_outside_transaction, retry_if_locked
from django_durably.events import send_after_commit
from django_durably.exceptions import (
    InvalidTrigger,
    PendingRunExists,
    RunNotCancellable,
    RunNotDeletable,
    RunNotFound,
    RunNotResumable,
    RunNotRetriggerable,
)
from django_durably.jobs import TriggerItem, get_job
from django_durably.leases import (
    lock_oldest_finished,
    record_attempt,
    unfinished_children,
    wake_parents,
)
from django_durably.leases.statements import ended_fields
from django_durably.models import (
    CANCELLABLE_STATUSES,
    RESUMABLE_STATUSES,
    TERMINAL_STATUSES,
    AttemptOutcome,
    AuditAction,
    AuditRecord,
    DatabaseNow,
    Run,
    RunQuerySet,
    RunStatus,
)
from django_durably.notifications import notify_cancelled, notify_ready
from django_durably.triggering import run_of_idempotency_key, trigger, trigger_runs, wait_for_run
from django_durably.validation import MAX_KEY_LENGTH, ReservedKey, check_key, run_pk

__all__ = [
    "CancelResult",
    "DeleteResult",
    "MAX_RETRIGGER_KEY_LENGTH",
    "ResumeResult",
    "cancel_run",
    "delete_run",
    "ensure_outside_transaction",
    "purge_runs",
    "purgeable_runs",
    "resume_run",
    "retrigger_run",
    "trigger",
    "trigger_runs",
    "wait_for_run",
]

logger = logging.getLogger(__name__)

DEFAULT_PURGE_LIMIT = 1000
TRANSITION_ROUNDS = 3

P = ParamSpec("P")
T = TypeVar("T")


def _retried_when_locked(operation: Callable[P, T]) -> Callable[P, T]:
    """Run the whole operation again when SQLite answers "database is locked" (a deferred
    transaction that read, then met a concurrent write): its transaction was rolled back, so
    nothing of it happened. Inside a caller's transaction the error is raised as it is. See
    :func:`django_durably.database.retry_if_locked`."""

    @functools.wraps(operation)
    def retried(*args: P.args, **kwargs: P.kwargs) -> T:
        return retry_if_locked(db_alias(), operation, *args, **kwargs)

    return retried


@dataclass(frozen=True)
class CancelResult:
    """What :func:`cancel_run` did: ``cancelled`` is False when the run was already cancelled."""

    run_id: UUID
    cancelled: bool
    from_status: str


@dataclass(frozen=True)
class ResumeResult:
    """A resumed run: now pending again, on the same id."""

    run_id: UUID
    from_status: str


@dataclass(frozen=True)
class DeleteResult:
    """A deleted run, with the status it had."""

    run_id: UUID
    from_status: str


def _actor_name(actor: Any) -> str:
    """``request.user``, a username, or anything with a useful ``str()``; ``""`` for nobody."""
    if actor is None:
        return ""
    get_username = getattr(actor, "get_username", None)
    name = get_username() if callable(get_username) else str(actor)
    return str(name)[:255]


def _transition(
    alias: str, run_id: UUID, from_statuses: Sequence[str], **changes: Any
) -> tuple[str | None, str, str]:
    """Apply ``changes`` if the run is in one of ``from_statuses``.

    Returns ``(from_status, job_name, status)``: the status the run left (``None`` when no UPDATE
    matched), then the run's job and status as read afterwards, which on a miss is the status for
    the typed error. Raises :class:`RunNotFound`.

    One guarded UPDATE per status, so the winner knows exactly what it changed from; each is a
    compare-and-swap on its own, and the first that matches wins. Between two of them the run can
    move into a status already tried (a resume puts a failed run back to pending while a cancel
    tries ``pending``, then ``leased``), so a miss whose re-read finds a status of the set tries
    again: a typed error never carries a status the action could have changed.
    """
    runs = Run.objects.using(alias)
    for _round in range(TRANSITION_ROUNDS):
        for status in from_statuses:
            if runs.filter(pk=run_id, status=status).update(**changes):
                return (status, *_current(alias, run_id))
        job_name, current = _current(alias, run_id)
        if current not in from_statuses:
            break
    return None, job_name, current


def _current(alias: str, run_id: UUID) -> tuple[str, str]:
    """``(job_name, status)`` of a run, or :class:`RunNotFound`."""
    row = Run.objects.using(alias).filter(pk=run_id).values_list("job_name", "status").first()
    if row is None:
        raise RunNotFound(run_id)
    return row


def _record(
    alias: str,
    signal: Signal,
    action: AuditAction,
    *,
    run_id: UUID,
    job_name: str,
    actor: Any,
    source: str,
    from_status: str,
    to_status: str = "",
    detail: dict[str, Any] | None = None,
    **signal_kwargs: Any,
) -> None:
    """Write the action's audit record (in the caller's transaction) and send its signal once that
    transaction commits."""
    actor_name = _actor_name(actor)
    AuditRecord.objects.using(alias).create(
        run_id=run_id,
        run_uuid=run_id,
        job_name=job_name,
        action=action,
        actor=actor_name,
        source=source,
        from_status=from_status,
        to_status=to_status,
        detail=detail or {},
    )
    send_after_commit(
        signal,
        using=alias,
        run_id=run_id,
        job_name=job_name,
        actor=actor_name,
        source=source,
        from_status=from_status,
        **signal_kwargs,
    )


# -- cancel ------------------------------------------------------------------------------------


@_retried_when_locked
def cancel_run(run_id: UUID | str, *, actor: Any = None, source: str = "python") -> CancelResult:
    """Cancel a pending, leased or waiting run, and then its unfinished child runs.

    A worker running it stops before its next step starts (on PostgreSQL a notification reaches
    it when the cancel commits; elsewhere the step boundary reads the run), writes nothing more but
    a ``cancelled`` row for the step it was in, and never overwrites the cancelled status.
    Cancelling an already cancelled run is a no-op reporting ``cancelled=False``; a completed or
    failed run raises :class:`RunNotCancellable`; an unknown id raises :class:`RunNotFound`.
    """
    run_id = run_pk(run_id)
    alias = db_alias()
    with transaction.atomic(using=alias):
        from_status, job_name, status = _transition(
            alias,
            run_id,
            CANCELLABLE_STATUSES,
            **ended_fields(RunStatus.CANCELLED),
        )
        if from_status is None:
            if status == RunStatus.CANCELLED:
                return CancelResult(run_id=run_id, cancelled=False, from_status=status)
            raise RunNotCancellable(run_id, status)
        _record(
            alias,
            signals.run_cancelled,
            AuditAction.CANCEL,
            run_id=run_id,
            job_name=job_name,
            actor=actor,
            source=source,
            from_status=from_status,
            to_status=RunStatus.CANCELLED,
        )
        if from_status == RunStatus.LEASED:
            # The holder's generation, read under the row lock the cancel took: the worker holding
            # that lease stops before its next step (delivered when this commits).
            generation, owner = (
                Run.objects.using(alias)
                .filter(pk=run_id)
                .values_list("lease_generation", "lease_owner")
                .get()
            )
            if owner:  # a handed-back lease has no owner: its attempt was recorded then
                record_attempt(alias, run_id, AttemptOutcome.CANCELLED)
            notify_cancelled(alias, run_id, generation)
        # A parent waiting for this run learns of its end in the same transaction (the wake-up
        # locks the parent, then reads this run's new status).
        parent_id = (
            Run.objects.using(alias).filter(pk=run_id).values_list("parent_id", flat=True)[0]
        )
        if parent_id is not None:
            wake_parents([parent_id])
    # Committed: its own unfinished children are cancelled, each on its own.
    _cancel_children(run_id, actor=actor, source=source)
    return CancelResult(run_id=run_id, cancelled=True, from_status=from_status)


def _cancel_children(run_id: UUID, *, actor: Any, source: str) -> None:
    """Cancel the unfinished child runs of a cancelled run (and so theirs), each with its own
    compare-and-swap: a child that ends meanwhile keeps its end."""
    for child_id in unfinished_children([run_id]):
        try:
            cancel_run(child_id, actor=actor, source=source)
        except (RunNotCancellable, RunNotFound):
            continue


# -- resume ------------------------------------------------------------------------------------


@_retried_when_locked
def resume_run(run_id: UUID | str, *, actor: Any = None, source: str = "python") -> ResumeResult:
    """Put a failed or cancelled run back to pending, on the same run id.

    The error and lease fields are cleared; completed steps are kept, so the next attempt replays
    them instead of running them again. ``lease_generation`` keeps counting up, so a worker that
    still runs an earlier attempt stays fenced out. Raises :class:`RunNotResumable` (with the
    current status) for any other status, and :class:`PendingRunExists` when another pending run
    of the job holds the run's concurrency key. Of two concurrent resumes, exactly one wins.
    """
    run_id = run_pk(run_id)
    alias = db_alias()
    try:
        with transaction.atomic(using=alias):
            from_status, job_name, status = _transition(
                alias,
                run_id,
                RESUMABLE_STATUSES,
                status=RunStatus.PENDING,
                error=None,
                output=None,
                lease_owner="",
                lease_expires_at=None,
                completed_at=None,
                run_after=DatabaseNow(),
                retry_at=None,
                failed_attempts=0,
                updated_at=DatabaseNow(),
            )
            if from_status is None:
                raise RunNotResumable(run_id, status)
            _record(
                alias,
                signals.run_resumed,
                AuditAction.RESUME,
                run_id=run_id,
                job_name=job_name,
                actor=actor,
                source=source,
                from_status=from_status,
                to_status=RunStatus.PENDING,
            )
            queue = Run.objects.using(alias).filter(pk=run_id).values_list("queue", flat=True)
            notify_ready(alias, queue)
    except IntegrityError:
        raise _pending_conflict(alias, run_id) from None
    return ResumeResult(run_id=run_id, from_status=from_status)


def _pending_conflict(alias: str, run_id: UUID) -> Exception:
    """The error for a resume refused by the one-pending-run-per-concurrency-key constraint."""
    run = Run.objects.using(alias).filter(pk=run_id).first()
    if run is None:
        return RunNotFound(run_id)
    other = (
        Run.objects.using(alias)
        .awaiting_trigger()
        .filter(job_name=run.job_name, concurrency_key=run.concurrency_key)
        .exclude(pk=run_id)
        .values_list("pk", flat=True)
        .first()
    )
    if other is None or run.concurrency_key is None:
        return RunNotResumable(run_id, run.status)
    return PendingRunExists(
        job_name=run.job_name, concurrency_key=run.concurrency_key, run_id=other
    )


# -- retrigger ---------------------------------------------------------------------------------


@_retried_when_locked
def retrigger_run(
    run_id: UUID | str,
    *,
    actor: Any = None,
    source: str = "python",
    idempotency_key: str | None = None,
) -> Run:
    """Create a new pending run from a finished one, with the same input, labels, concurrency key,
    queue and priority, and return it (``disposition="created"``).

    The input is validated against the job's *current* input schema (so a changed schema gives
    :class:`~django_durably.exceptions.InvalidInput`), and the new run never reuses the original's
    idempotency key. Raises :class:`RunNotRetriggerable` for a run that has not finished,
    :class:`~django_durably.exceptions.JobNotFound` when the job is no longer registered, and
    :class:`PendingRunExists` when a pending run already holds the concurrency key.

    ``idempotency_key`` (at most :data:`MAX_RETRIGGER_KEY_LENGTH` characters) makes a repeated
    request harmless, such as a double click or a client's retry: a retrigger of the same run with
    a key already used returns the run that the first one created (``disposition="idempotent"``),
    and creates, audits and signals nothing, whatever the original's status is by then. The new
    run stores it as ``retrigger:<original id>:<key>``, so keys of different runs never meet.
    """
    run_id = run_pk(run_id)
    key = None if idempotency_key is None else _retrigger_key(run_id, idempotency_key)
    alias = db_alias()
    original = Run.objects.using(alias).filter(pk=run_id).first()
    if original is None:
        raise RunNotFound(run_id)
    if key is not None and (done := run_of_idempotency_key(original.job_name, key)):
        return done
    if original.status not in TERMINAL_STATUSES:
        raise RunNotRetriggerable(run_id, original.status)
    job = get_job(original.job_name)
    item = TriggerItem(
        input=original.input,
        concurrency_key=original.concurrency_key,
        labels=original.labels,
        queue=original.queue,
        priority=original.priority,
        idempotency_key=key,
    )
    with transaction.atomic(using=alias):
        # Re-check under the same transaction as the insert: the original must still be finished.
        from_status, _job_name, status = _transition(
            alias, run_id, TERMINAL_STATUSES, updated_at=DatabaseNow()
        )
        if from_status is None:
            raise RunNotRetriggerable(run_id, status)
        (new_run,) = trigger_runs(job, [item])
        if new_run.disposition != "created":
            return new_run  # the same request raced us and won: it did the audit and the signal
        _record(
            alias,
            signals.run_retriggered,
            AuditAction.RETRIGGER,
            run_id=run_id,
            job_name=original.job_name,
            actor=actor,
            source=source,
            from_status=from_status,
            to_status=from_status,
            detail={"new_run_id": str(new_run.pk)},
            new_run_id=new_run.pk,
        )
    return new_run


# ``retrigger:`` + a run id + ``:`` comes before the caller's key.
MAX_RETRIGGER_KEY_LENGTH = MAX_KEY_LENGTH - len("retrigger::") - 36


def _retrigger_key(run_id: UUID, idempotency_key: Any) -> str:
    if isinstance(idempotency_key, str) and len(idempotency_key) > MAX_RETRIGGER_KEY_LENGTH:
        raise InvalidTrigger(
            f"idempotency_key of a retrigger must be at most {MAX_RETRIGGER_KEY_LENGTH} "
            f"characters, got {len(idempotency_key)}.",
            field="idempotency_key",
        )
    # The caller's part is checked as a key of its own (a reserved prefix inside it is harmless).
    own = check_key(
        ReservedKey(idempotency_key) if isinstance(idempotency_key, str) else idempotency_key,
        "idempotency_key",
    )
    return ReservedKey(f"retrigger:{run_id}:{own}")


# -- delete and purge --------------------------------------------------------------------------


@_retried_when_locked
def delete_run(run_id: UUID | str, *, actor: Any = None, source: str = "python") -> DeleteResult:
    """Delete a finished run with its steps and logs; raises :class:`RunNotDeletable` otherwise.

    The guarded UPDATE that decides the race also locks the row, so a concurrent resume either
    happens first (and the delete is refused) or finds the run gone. The audit record stays, with
    its ``run`` set to NULL and ``run_uuid`` kept.
    """
    run_id = run_pk(run_id)
    alias = db_alias()
    with transaction.atomic(using=alias):
        from_status, job_name, status = _transition(
            alias, run_id, TERMINAL_STATUSES, updated_at=DatabaseNow()
        )
        if from_status is None:
            raise RunNotDeletable(run_id, status)
        _record(
            alias,
            signals.run_deleted,
            AuditAction.DELETE,
            run_id=run_id,
            job_name=job_name,
            actor=actor,
            source=source,
            from_status=from_status,
        )
        Run.objects.using(alias).filter(pk=run_id).delete()
    return DeleteResult(run_id=run_id, from_status=from_status)


def purgeable_runs(
    older_than: timedelta | datetime, statuses: Sequence[str] = TERMINAL_STATUSES
) -> RunQuerySet:
    """Finished runs (of ``statuses``) that finished before ``older_than`` (an age, or a cut-off
    datetime)."""
    unknown = set(statuses) - set(TERMINAL_STATUSES)
    if unknown:
        raise ValueError(f"only finished runs can be purged, not {', '.join(sorted(unknown))}")
    if isinstance(older_than, timedelta):
        if older_than < timedelta(0):
            raise ValueError(f"older_than must not be negative, got {older_than!r}")
        cutoff = timezone.now() - older_than
    elif isinstance(older_than, datetime) and not timezone.is_naive(older_than):
        cutoff = older_than
    else:
        raise ValueError(
            f"older_than must be a timedelta or a timezone-aware datetime, got {older_than!r}"
        )
    return Run.objects.using(db_alias()).filter(status__in=statuses, completed_at__lt=cutoff)


@_retried_when_locked
def purge_runs(
    older_than: timedelta | datetime,
    limit: int = DEFAULT_PURGE_LIMIT,
    *,
    statuses: Sequence[str] = TERMINAL_STATUSES,
) -> int:
    """Delete up to ``limit`` of the :func:`purgeable_runs`, with their steps and logs, and return
    how many were deleted. Call it repeatedly to purge more; each call is one short transaction.

    Retention is housekeeping, not an operator action: it writes no audit records.
    """
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    old = purgeable_runs(older_than, statuses)
    alias = db_alias()
    with transaction.atomic(using=alias):
        ids = lock_oldest_finished(old, limit)
        if not ids:
            return 0
        # Re-guarded by status: a run resumed meanwhile is not deleted.
        deleted = Run.objects.using(alias).filter(pk__in=ids, status__in=statuses).delete()
    count = deleted[1].get(Run._meta.label, 0)
    logger.info(
        "Purged %d finished run(s) older than %s.",
        count,
        older_than,
        extra={"action": "purged", "count": count},
    )
    return count
