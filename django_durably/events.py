"""Sending signals after the write they describe has committed.

Receivers are user code: one that raises must never break a claim, a checkpoint or a completion, so
signals are sent with ``send_robust`` and a receiver's exception is logged, not propagated.
"""

from __future__ import annotations

import logging
from typing import Any, Literal
from uuid import UUID

from django.db import transaction
from django.dispatch import Signal

logger = logging.getLogger(__name__)


def send_after_commit(signal: Signal, *, using: str, **kwargs: Any) -> None:
    """Send ``signal`` (sender: the ``Run`` model) once the current transaction on ``using`` commits;
    at once in autocommit mode. Nothing is sent if the transaction rolls back, nor queued when the
    signal has no receiver (a worker sends several signals per run)."""
    from django_durably.models import Run

    if not signal.has_listeners(Run):
        return
    transaction.on_commit(lambda: send_now(signal, **kwargs), using=using)


def send_attempt_end(
    *,
    using: str,
    run_id: UUID,
    job_name: str,
    attempt: int,
    error: Any = None,
    retry_at: Any = None,
    outcome: str = "failed",
    step_name: str | None = None,
    completed: bool = False,
    output: Any = None,
) -> None:
    """The signal of an attempt's end, once it commits: ``run_completed`` (``completed``),
    ``run_failed``, or ``run_retry_scheduled`` when the run is pending again until ``retry_at``
    (``outcome``: ``failed``, ``timed_out`` or ``step_retry``; ``step_name`` for a step's retry)."""
    from django_durably import signals

    if completed:
        send_after_commit(
            signals.run_completed, using=using, run_id=run_id, job_name=job_name, output=output
        )
    elif retry_at is None:
        send_after_commit(
            signals.run_failed, using=using, run_id=run_id, job_name=job_name, error=error
        )
    else:
        send_after_commit(
            signals.run_retry_scheduled,
            using=using,
            run_id=run_id,
            job_name=job_name,
            attempt=attempt,
            retry_at=retry_at,
            error=error,
            outcome=outcome,
            step_name=step_name,
        )


WorkerErrorContext = Literal[
    "claim", "lease_renewal", "run_completion", "run_failure", "hand_back", "maintenance", "wake"
]


def send_worker_error(
    error: BaseException | str,
    *,
    context: WorkerErrorContext,
    worker_id: str = "",
    run_id: UUID | None = None,
) -> None:
    """Send ``worker_error`` now (it reports a failure, so there is no write to wait for)."""
    from django_durably import signals
    from django_durably.models import Run

    if not signals.worker_error.has_listeners(Run):
        return
    if isinstance(error, BaseException):
        described = {"type": type(error).__qualname__, "message": str(error)}
    else:
        described = {"type": "", "message": error}
    send_now(
        signals.worker_error, context=context, worker_id=worker_id, run_id=run_id, error=described
    )


def send_now(signal: Signal, **kwargs: Any) -> None:
    from django_durably.models import Run  # events sit below models in the layering

    for receiver, result in signal.send_robust(sender=Run, **kwargs):
        if isinstance(result, BaseException):
            logger.error(
                "Signal receiver %r raised; the run is unaffected.",
                receiver,
                exc_info=(type(result), result, result.__traceback__),
                extra={"action": "receiver_failed"},
            )
