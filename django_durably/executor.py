"""Runs one claimed run to an outcome, and the in-process entry points built on it.

:func:`process_one` and :func:`process_until_idle` claim and execute runs in the calling process. They
are what the worker loop is made of, and on their own they serve cron jobs, serverless functions and
tests: anywhere a long-running worker is not wanted.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from django_durably import leases
from django_durably.checkpoints import ModelStepStore
from django_durably.conf import durably_settings
from django_durably.context import StepContext
from django_durably.database import db_alias, ensure_outside_transaction
from django_durably.events import send_attempt_end, send_worker_error
from django_durably.exceptions import (
    JobCancelled,
    JobNotFound,
    LeaseLost,
    RunWaiting,
    StepRetryLater,
    WorkerLost,
)
from django_durably.jobs import Job, get_job
from django_durably.keeper import LeaseKeeper
from django_durably.leases import LeaseHandle
from django_durably.limits import AttemptLimits
from django_durably.maintenance import Retention
from django_durably.models import AttemptOutcome, Run, RunStatus
from django_durably.retries import Retry, next_delay, reclaim_limit
from django_durably.serialization import describe_exception
from django_durably.types import JSON
from django_durably.waits import wake_due_runs, wake_parents_of

logger = logging.getLogger(__name__)

OutcomeStatus = Literal[
    "completed", "failed", "retrying", "timed_out", "waiting", "cancelled", "lost", "released"
]


@dataclass(frozen=True)
class RunOutcome:
    """How one execution of a run ended, from the executing worker's point of view.

    ``retrying`` means the attempt failed (or a step's next try is due later) and the run is
    pending again until ``retry_at``; ``waiting`` that the job reached a durable wait and the run
    waits, without a worker, until it is woken (at ``wake_at`` at the latest, if set); ``timed_out`` that the worker ended the attempt at its
    timeout (the run was then retried or failed); ``lost`` that the lease was lost (this worker
    wrote nothing more); ``released`` that the run was handed back because the process is exiting.
    """

    run_id: UUID
    job_name: str
    attempt: int
    status: OutcomeStatus
    duration: float
    error: dict[str, str] | None = None
    retry_at: datetime | None = None
    wake_at: datetime | None = None


def default_worker_id() -> str:
    """``host:pid:random``, unique per process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class AttemptEnd:
    """How one attempt's job function ended, before anything is recorded: ``completed`` with
    ``output``, ``failed`` with ``error``, or stopped (``cancelled``, ``lost``) with nothing left to
    write. :func:`record` turns it into a :class:`~django_durably.leases.FinishRow` and then a
    :class:`RunOutcome`."""

    run: Run
    lease: LeaseHandle
    status: Literal[
        "completed", "failed", "step_retry", "waiting", "cancelled", "lost", "timed_out"
    ]
    started: float
    output: JSON = None
    error: dict[str, str] | None = None
    retry_delay: float | None = None
    """Seconds until the next try (``failed`` with attempts left, ``step_retry``), else ``None``."""
    step_name: str | None = None
    wake_at: datetime | None = None
    """When a waiting run's timer wakes it (``waiting``), if it has one."""
    counted: bool = True
    """Whether a failure counts against the retry policy (not when the claim counted it already:
    a run failed for losing its worker too often)."""


def execute(run: Run, lease: LeaseHandle) -> RunOutcome:
    """Execute a run this process has just claimed, and record the outcome with fenced writes.

    Never raises for anything the job does, except ``KeyboardInterrupt`` and ``SystemExit``: those
    hand the run back (so another worker can take it at once) and propagate.
    """
    return record([run_job(run, lease)])[0]


def run_job(run: Run, lease: LeaseHandle) -> AttemptEnd:
    """Call the run's job function (replaying checkpointed steps) and say how it ended; only its
    steps are written. :func:`record` writes the end; a worker records the ends of its slots together.

    ``KeyboardInterrupt`` and ``SystemExit`` hand the run back and propagate.
    """
    started = time.monotonic()
    job = None
    try:
        job = get_job(run.job_name)
        lease.limits = AttemptLimits(
            job_name=run.job_name,
            started=started,
            run_attempt=run.attempt,
            failed_attempts=run.failed_attempts,
            policy_of=lambda: job.retry_policy,
            timeout=job.timeout,
            timeout_at=None if job.timeout is None else started + job.timeout,
            parent_id=run.parent_id,
        )
        if job.timeout is not None and lease.wake_keeper is not None:
            lease.wake_keeper()
        if run.failed_attempts:  # a retry, or a reclaim: maybe a poison run
            _refuse_poison(run, job.retry_policy)
        context = StepContext(
            run_id=run.pk,
            job_name=run.job_name,
            attempt=run.attempt,
            store=ModelStepStore(run, lease),
        )
        value = job.load_input(run.input)
        with context.activate():
            result = job.fn(context, value)
        output = job.prepare_output(result)
    except RunWaiting as waiting:
        return AttemptEnd(run, lease, "waiting", started, wake_at=waiting.wake_at)
    except JobCancelled:
        return AttemptEnd(run, lease, "cancelled", started)
    except LeaseLost:
        return AttemptEnd(
            run, lease, "timed_out" if lease.state == "timed_out" else "lost", started
        )
    except StepRetryLater as later:
        return AttemptEnd(
            run,
            lease,
            "step_retry",
            started,
            error=later.error,
            retry_delay=later.delay,
            step_name=later.step_name,
        )
    except (KeyboardInterrupt, SystemExit):
        try:
            leases.release(run.pk, lease.generation)
        except DatabaseError:  # the interrupt matters more; the lease will expire instead
            logger.exception("Run %s: could not hand the run back.", run.pk)
        raise
    except Exception as exc:
        error = describe_exception(exc)
        if isinstance(exc, (JobNotFound, WorkerLost)):
            error["traceback"] = ""
        if isinstance(exc, WorkerLost):
            return AttemptEnd(run, lease, "failed", started, error=error, counted=False)
        # No policy when the job is not registered here: the run fails, as it did before
        # retries, rather than retry under a guess.
        policy = None if job is None else _policy(job)
        delay = None if policy is None else next_delay(policy, exc, run.failed_attempts + 1)
        return AttemptEnd(run, lease, "failed", started, error=error, retry_delay=delay)
    return AttemptEnd(run, lease, "completed", started, output=output)


def _policy(job: Job[Any, Any]) -> Retry | None:
    """The job's retry policy, or ``None`` (no retry) when ``DURABLY_DEFAULT_RETRY`` is not one
    (check ``django_durably.E008`` says so at start-up)."""
    try:
        return job.retry_policy
    except ImproperlyConfigured:
        logger.exception("Job %s: no retry policy could be read; no retry.", job.name)
        return None


def _refuse_poison(run: Run, policy: Retry) -> None:
    """Raise :class:`WorkerLost` instead of running a run whose failed or lost attempts reached the
    limit: only a reclaim gets there (a failure at the limit fails the run), so its worker died."""
    limit, source = reclaim_limit(policy)
    if run.failed_attempts >= limit:
        raise WorkerLost(
            f"Attempt {run.attempt - 1} lost its worker, and {run.failed_attempts} attempts of this "
            f"run have failed or lost their worker ({source} is {limit}): the run is failed "
            "instead of being run again, in case the job itself kills its worker."
        )


def record(ends: Sequence[AttemptEnd], *, worker_id: str = "") -> list[RunOutcome]:
    """Write the ends of completed, failed and retried attempts in one fenced statement (each with
    its attempt's history row), send their signals after commit, and return each run's outcome, in
    order. The parents waiting for runs that ended are woken in the same transaction. A refused
    write reports ``cancelled``, ``timed_out`` (the worker ended it first) or
    ``lost``; a database error reports ``lost`` (the lease will expire and the run be retried).
    Both a database error and a lost lease send ``worker_error``."""
    writes = [_finish_row(end) for end in ends if end.status in _WRITTEN]
    failure: BaseException | None = None
    won: dict[UUID, datetime | None]
    parents = {
        end.run.pk: end.run.parent_id
        for end in ends
        if end.status in _WRITTEN and end.run.parent_id is not None
    }

    def wake_parents(alias: str, won: dict[UUID, datetime | None]) -> None:
        # In the ends' own transaction: one commit for both, and no savepoint (a database error
        # here fails the ends with it: they are then lost, and retried, as any end that could not
        # be written). Each wake-up locks its parent before it reads, so the last of several
        # children to end, in whatever order, sees every end.
        ended = [parent for run_id, parent in parents.items() if won.get(run_id, 0) is None]
        if ended:
            wake_parents_of(ended)

    try:
        won = leases.finish(writes, also=wake_parents if parents else None)
    except DatabaseError as exc:
        logger.exception(
            "Could not record the end of %d run(s); their leases will expire.", len(writes)
        )
        won, failure = {}, exc
    alias = db_alias()
    outcomes = []
    for end in ends:
        status: OutcomeStatus = "failed" if end.status == "step_retry" else end.status
        retry_at = None
        if end.status in _WRITTEN:
            if end.run.pk in won:
                retry_at = won[end.run.pk]
                if retry_at is not None:
                    status = "retrying"
                _send_end_signal(end, alias, retry_at)
            elif end.lease.state == "timed_out":
                status = "timed_out"  # the worker ended it on time just before: nothing to report
            else:
                status = _refused_status(end) if failure is None else "lost"
                if status == "lost":
                    send_worker_error(
                        failure or LeaseLost(end.run.pk),
                        context="run_completion" if end.status == "completed" else "run_failure",
                        worker_id=worker_id,
                        run_id=end.run.pk,
                    )
        outcomes.append(
            RunOutcome(
                run_id=end.run.pk,
                job_name=end.run.job_name,
                attempt=end.run.attempt,
                status=status,
                duration=time.monotonic() - end.started,
                error=end.error if status in ("failed", "retrying") else None,
                retry_at=retry_at,
                wake_at=end.wake_at,
            )
        )
    return outcomes


# The ends that are written: the others were written by someone else (a cancel, the worker ending
# the attempt on time) or must not be (a lost lease).
_WRITTEN = ("completed", "failed", "step_retry")


def _finish_row(end: AttemptEnd) -> leases.FinishRow:
    run_id, generation = end.run.pk, end.lease.generation
    if end.status == "completed":
        return leases.FinishRow(run_id, generation, RunStatus.COMPLETED, end.output)
    if end.status == "step_retry":
        return leases.FinishRow(
            run_id,
            generation,
            RunStatus.PENDING,
            end.error,
            outcome=AttemptOutcome.STEP_RETRY,
            retry_delay=end.retry_delay or 0.0,
            counted=False,
        )
    if end.retry_delay is None:
        return leases.FinishRow(
            run_id, generation, RunStatus.FAILED, end.error, counted=end.counted
        )
    return leases.FinishRow(
        run_id, generation, RunStatus.PENDING, end.error, retry_delay=end.retry_delay
    )


def _send_end_signal(end: AttemptEnd, alias: str, retry_at: datetime | None) -> None:
    send_attempt_end(
        using=alias,
        run_id=end.run.pk,
        job_name=end.run.job_name,
        attempt=end.run.attempt,
        error=end.error,
        retry_at=retry_at,
        outcome="step_retry" if end.status == "step_retry" else "failed",
        step_name=end.step_name,
        completed=end.status == "completed",
        output=end.output,
    )


def _refused_status(end: AttemptEnd) -> OutcomeStatus:
    try:
        refused = leases.refusal(end.run.pk, end.lease.generation)
    except DatabaseError:
        return "lost"
    return "cancelled" if isinstance(refused, JobCancelled) else "lost"


# -- in-process entry points -------------------------------------------------------------------


def process_one(
    worker_id: str | None = None,
    *,
    queues: list[str] | None = None,
    lease_seconds: float | None = None,
) -> bool:
    """Claim one ready run, execute it to an outcome in this process, and return whether one was
    claimed.

    The lease is renewed from a background thread while the job runs, so a long job keeps it.
    ``queues`` limits the claim to those queues (default: all).
    """
    return process_next(worker_id, queues=queues, lease_seconds=lease_seconds) is not None


def process_next(
    worker_id: str | None = None,
    *,
    queues: list[str] | None = None,
    lease_seconds: float | None = None,
) -> RunOutcome | None:
    """Like :func:`process_one`, but return the :class:`RunOutcome` (``None`` when idle)."""
    ensure_outside_transaction("process_one()")
    seconds = durably_settings.LEASE_SECONDS if lease_seconds is None else lease_seconds
    claimed_by = worker_id or default_worker_id()
    wake_due_runs()  # a waiting run whose timer is due is as claimable as a due pending run
    claimed_at = time.monotonic()
    claimed = leases.claim(worker_id=claimed_by, queues=queues, limit=1, lease_seconds=seconds)
    if not claimed:
        return None
    run = claimed[0]
    interval = min(durably_settings.RENEW_INTERVAL, seconds / 3)
    with LeaseKeeper(lease_seconds=seconds, interval=interval) as keeper:
        handle = keeper.track(run, claimed_at=claimed_at)
        result = execute(run, handle)
    log_outcome(result, worker_id=claimed_by)
    return result


def log_outcome(outcome: RunOutcome, *, worker_id: str, log: logging.Logger = logger) -> None:
    """The one line an execution's outcome is logged as, by ``process_one`` (on this module's
    logger) and by the worker (on its own): ``run=<id> job=<name> attempt=<n> outcome=<status>
    duration=<s>s`` (and the error of a failed run); a warning for ``failed`` and ``lost``."""
    level = (
        logging.WARNING
        if outcome.status in ("failed", "lost", "retrying", "timed_out")
        else logging.INFO
    )
    log.log(
        level,
        "run=%s job=%s attempt=%d outcome=%s duration=%.3fs%s%s%s",
        outcome.run_id,
        outcome.job_name,
        outcome.attempt,
        outcome.status,
        outcome.duration,
        f" retry_at={outcome.retry_at.isoformat()}" if outcome.retry_at else "",
        f" wake_at={outcome.wake_at.isoformat()}" if outcome.wake_at else "",
        f" error={outcome.error['type']}: {outcome.error['message']}" if outcome.error else "",
        extra={
            "action": outcome.status,
            "run_id": str(outcome.run_id),
            "job": outcome.job_name,
            "attempt": outcome.attempt,
            "duration": outcome.duration,
            "worker_id": worker_id,
        },
    )


# One per process, like one per worker: a process calling process_until_idle() in a loop purges at
# most once per DURABLY_RETENTION_INTERVAL.
_retention = Retention()


def process_until_idle(
    max_runs: int | None = None,
    *,
    worker_id: str | None = None,
    queues: list[str] | None = None,
    lease_seconds: float | None = None,
) -> int:
    """Process ready runs one after another until none is ready (or ``max_runs`` were processed);
    return how many were processed. Runs scheduled for later (``run_after``) are not waited for.

    Finding none ready, it does an idle worker's housekeeping: with ``DURABLY_RETENTION`` set, one
    purge of finished runs past it, at most once per ``DURABLY_RETENTION_INTERVAL`` per process.
    (Runs whose lease expired need nothing: they are ready, so they were processed.)
    """
    count = 0
    worker = worker_id or default_worker_id()
    while max_runs is None or count < max_runs:
        if not process_one(worker, queues=queues, lease_seconds=lease_seconds):
            _retention.apply_if_due(worker_id=worker)
            break
        count += 1
    return count
