"""Ending attempts on time: the job's ``timeout`` per attempt and ``step.run(..., timeout=)`` per step
call.

A thread stuck in user code cannot be stopped from outside, so the worker does not try: the lease
keeper, which already wakes up for every renewal, also wakes up at each attempt's deadline and ends
the attempt with one fenced write (:func:`end_on_time`) that

* records the error (``RunTimedOut`` or ``StepTimedOut``; a timed-out step also gets its failed
  ``Step`` row), retries the run (or the step, on the next claim) as the policies say, or fails it;
* bumps the lease generation, so the thread still inside user code can checkpoint nothing more,
  whatever it does next (every write it tries is refused, and it stops at its next step boundary).

The worker then gives the slot a fresh thread and counts the stuck one as abandoned
(``Worker`` caps how many it keeps before restarting itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import DatabaseError
from django.utils import timezone

from django_durably import leases, signals
from django_durably.database import db_alias
from django_durably.events import send_after_commit, send_attempt_end
from django_durably.exceptions import RunTimedOut, StepTimedOut, TimedOut
from django_durably.leases import FinishRow, LeaseHandle
from django_durably.limits import AttemptLimits, Expired, StepCall, step_retry_marker
from django_durably.models import AttemptOutcome, RunStatus, StepStatus
from django_durably.retries import next_delay
from django_durably.serialization import describe_exception


@dataclass(frozen=True)
class TimedOutEnd:
    """How :func:`end_on_time` ended an attempt: the error, and when the run is due again."""

    error: dict[str, str]
    retry_at: datetime | None


def end_on_time(handle: LeaseHandle, expired: Expired) -> TimedOutEnd | None:
    """End ``handle``'s attempt because ``expired`` ran out; return how, or ``None`` when the
    lease no longer held the run (cancelled, lost, or ended by the job itself just before).

    Marks the handle ``timed_out`` when it won, before returning: the job's thread stops at its
    next step boundary, or at once if it waits in place.
    """
    limits: AttemptLimits = handle.limits
    step = limits.step if expired == "step" else None
    error_obj: TimedOut
    if step is not None:
        error_obj = StepTimedOut(
            f"Step {step.name!r} ran past its timeout of {step.timeout:g}s "
            f"(try {step.step_attempt}); the worker ended the attempt.",
            seconds=step.timeout,
        )
    else:
        timeout = limits.timeout or 0.0  # set: the attempt's deadline passed
        error_obj = RunTimedOut(
            f"Attempt {limits.run_attempt} ran past the job's timeout of {timeout:g}s; "
            "the worker ended it.",
            seconds=timeout,
        )
    error = describe_exception(error_obj)
    error["traceback"] = ""
    row = _ending(handle, limits, step, error_obj, error)
    failed = None
    if step is not None:
        failed = leases.step_row(
            handle.run_id,
            StepStatus.FAILED,
            index=step.index,
            name=step.name,
            attempt=limits.run_attempt,
            step_attempt=step.step_attempt,
            error=error,
            started_at=step.started_at,
            completed_at=timezone.now(),
        )

    def also(alias: str, won: dict[UUID, Any]) -> None:
        """In the end's transaction: the timed-out step's failed row, and, when the run failed, the
        wake-up of a parent waiting for it."""
        if failed is not None:
            failed.save(using=alias, force_insert=True)
        if won.get(handle.run_id, 0) is None and limits.parent_id is not None:
            leases.wake_parents([limits.parent_id])

    try:
        needed = failed is not None or limits.parent_id is not None
        won = leases.finish([row], also=also if needed else None)
    except DatabaseError:
        return None  # the lease will expire; the attempt is then reclaimed as lost
    if handle.run_id not in won:
        return None
    handle.state = "timed_out"
    ended = TimedOutEnd(error=row.value, retry_at=won[handle.run_id])  # type: ignore[arg-type]
    _send_signals(handle, limits, step, ended)
    return ended


def _send_signals(
    handle: LeaseHandle, limits: AttemptLimits, step: StepCall | None, ended: TimedOutEnd
) -> None:
    alias = db_alias()
    if step is not None:
        send_after_commit(
            signals.step_failed,
            using=alias,
            run_id=handle.run_id,
            step_name=step.name,
            index=step.index,
            error=ended.error,
            step_attempt=step.step_attempt,
        )
    send_attempt_end(
        using=alias,
        run_id=handle.run_id,
        job_name=limits.job_name,
        attempt=limits.run_attempt,
        error=ended.error,
        retry_at=ended.retry_at,
        outcome="timed_out",
        step_name=None if step is None else step.name,
    )


def _ending(
    handle: LeaseHandle,
    limits: AttemptLimits,
    step: StepCall | None,
    error_obj: TimedOut,
    error: dict[str, str],
) -> FinishRow:
    common = {"outcome": AttemptOutcome.TIMED_OUT, "bump_generation": True}
    if step is not None:
        delay = next_delay(step.policy, error_obj, step.step_attempt)
        if delay is not None:  # the step's next try, on the next claim (this thread is stuck)
            value = {**error, **step_retry_marker(step.name, step.step_attempt)}
            return FinishRow(
                handle.run_id,
                handle.generation,
                RunStatus.PENDING,
                value,
                retry_delay=delay,
                counted=False,
                **common,  # type: ignore[arg-type]
            )
    delay = next_delay(limits.policy, error_obj, limits.failed_attempts + 1)
    if delay is None:
        return FinishRow(handle.run_id, handle.generation, RunStatus.FAILED, error, **common)  # type: ignore[arg-type]
    return FinishRow(
        handle.run_id,
        handle.generation,
        RunStatus.PENDING,
        error,
        retry_delay=delay,
        **common,  # type: ignore[arg-type]
    )
