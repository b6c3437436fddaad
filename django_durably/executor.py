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
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from django.db import DatabaseError

from django_durably import leases, signals
from django_durably.checkpoints import ModelStepStore
from django_durably.conf import durably_settings
from django_durably.context import StepContext
from django_durably.events import send_after_commit
from django_durably.exceptions import JobCancelled, JobNotFound, LeaseLost
from django_durably.jobs import get_job
from django_durably.keeper import LeaseKeeper
from django_durably.leases import LeaseHandle
from django_durably.models import Run
from django_durably.serialization import describe_exception
from django_durably.triggering import ensure_outside_transaction
from django_durably.types import JSON

logger = logging.getLogger(__name__)

OutcomeStatus = Literal["completed", "failed", "cancelled", "lost", "released"]


@dataclass(frozen=True)
class RunOutcome:
    """How one execution of a run ended, from the executing worker's point of view.

    ``lost`` means the lease was lost (this worker wrote nothing more); ``released`` means the run
    was handed back because the process is exiting.
    """

    run_id: UUID
    job_name: str
    attempt: int
    status: OutcomeStatus
    duration: float
    error: dict[str, str] | None = None


def default_worker_id() -> str:
    """``host:pid:random``, unique per process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def execute(run: Run, lease: LeaseHandle) -> RunOutcome:
    """Execute a run this process has just claimed, and record the outcome with fenced writes.

    Never raises for anything the job does, except ``KeyboardInterrupt`` and ``SystemExit``: those
    hand the run back (so another worker can take it at once) and propagate.
    """
    started = time.monotonic()
    try:
        job = get_job(run.job_name)
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
    except JobCancelled:
        return _outcome(run, started, "cancelled")
    except LeaseLost:
        return _outcome(run, started, "lost")
    except (KeyboardInterrupt, SystemExit):
        try:
            leases.release(run.pk, lease.generation)
        except DatabaseError:  # the interrupt matters more; the lease will expire instead
            logger.exception("Run %s: could not hand the run back.", run.pk)
        raise
    except Exception as exc:
        return _record_failure(run, lease, exc, started)
    return _record_completion(run, lease, output, started)


def _record_completion(run: Run, lease: LeaseHandle, output: JSON, started: float) -> RunOutcome:
    try:
        won = leases.complete(run.pk, lease.generation, output)
    except DatabaseError:
        logger.exception("Run %s: could not record completion; its lease will expire.", run.pk)
        return _outcome(run, started, "lost")
    if not won:
        return _outcome(run, started, _refused_status(run.pk))
    alias = leases.db_alias()
    send_after_commit(
        signals.run_completed, using=alias, run_id=run.pk, job_name=run.job_name, output=output
    )
    return _outcome(run, started, "completed")


def _record_failure(run: Run, lease: LeaseHandle, exc: Exception, started: float) -> RunOutcome:
    error = describe_exception(exc)
    if isinstance(exc, JobNotFound):
        error["traceback"] = ""
    try:
        won = leases.fail(run.pk, lease.generation, error)
    except DatabaseError:
        logger.exception("Run %s: could not record failure; its lease will expire.", run.pk)
        return _outcome(run, started, "lost")
    if not won:
        return _outcome(run, started, _refused_status(run.pk))
    alias = leases.db_alias()
    send_after_commit(
        signals.run_failed, using=alias, run_id=run.pk, job_name=run.job_name, error=error
    )
    return _outcome(run, started, "failed", error)


def _refused_status(run_id: UUID) -> OutcomeStatus:
    try:
        return "cancelled" if isinstance(leases.refusal(run_id), JobCancelled) else "lost"
    except DatabaseError:
        return "lost"


def _outcome(
    run: Run, started: float, status: OutcomeStatus, error: dict[str, str] | None = None
) -> RunOutcome:
    return RunOutcome(
        run_id=run.pk,
        job_name=run.job_name,
        attempt=run.attempt,
        status=status,
        duration=time.monotonic() - started,
        error=error,
    )


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
    claimed_at = time.monotonic()
    claimed = leases.claim(
        worker_id=worker_id or default_worker_id(), queues=queues, limit=1, lease_seconds=seconds
    )
    if not claimed:
        return None
    run = claimed[0]
    interval = min(durably_settings.RENEW_INTERVAL, seconds / 3)
    with LeaseKeeper(lease_seconds=seconds, interval=interval) as keeper:
        handle = keeper.track(run, claimed_at=claimed_at)
        result = execute(run, handle)
    logger.info(
        "Run %s (%s) attempt %d %s in %.3fs",
        result.run_id,
        result.job_name,
        result.attempt,
        result.status,
        result.duration,
        extra={"action": result.status, "run_id": str(result.run_id), "job": result.job_name},
    )
    return result


def process_until_idle(
    max_runs: int | None = None,
    *,
    worker_id: str | None = None,
    queues: list[str] | None = None,
    lease_seconds: float | None = None,
) -> int:
    """Process ready runs one after another until none is ready (or ``max_runs`` were processed);
    return how many were processed. Runs scheduled for later (``run_after``) are not waited for.
    """
    count = 0
    worker = worker_id or default_worker_id()
    while max_runs is None or count < max_runs:
        if not process_one(worker, queues=queues, lease_seconds=lease_seconds):
            break
        count += 1
    return count
