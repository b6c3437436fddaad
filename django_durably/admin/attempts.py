"""A run's attempts and its job's retry policy, in the admin's words: whether a run is waiting for
its retry, ``attempt 3 of 5``, and the job's timeout.

The policy is the job's as *this* process registered it: the admin may run without the workers'
job modules, and a run may outlive its job, so every helper copes with an unknown job.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils.translation import gettext, ngettext

from django_durably.admin.display import format_duration
from django_durably.exceptions import JobNotFound
from django_durably.jobs import Job, get_job
from django_durably.models import Run, RunStatus


def registered_job(name: str) -> Job[Any, Any] | None:
    """The job registered under ``name`` in this process, or None."""
    try:
        return get_job(name)
    except JobNotFound:
        return None


def is_retrying(run: Run) -> bool:
    """Whether ``run`` waits to be tried again after a failure: what ``Run.objects.retrying()``
    selects."""
    return run.status == RunStatus.PENDING and run.retry_at is not None


def attempt_note(run: Run) -> tuple[str, str]:
    """``attempt 3 of 5``, and a tooltip with the failed attempts and the job's retry policy.

    Just ``attempt 3`` (and no tooltip) when the job is not registered here or its policy does not
    retry. The number is the run's attempt, as the attempt timeline numbers them, while the policy
    counts failed attempts only: when hand-backs took the number past ``max_attempts``, the note
    says ``attempt 7`` and the tooltip tells how many failed.
    """
    number = {"number": run.attempt}
    job = registered_job(run.job_name)
    policy = job.retry_policy if job is not None else None
    if policy is None or policy.max_attempts <= 1:
        return gettext("attempt %(number)d") % number, ""
    failed = ngettext(
        "%(count)d failed attempt counts against the retry policy (%(policy)s)",
        "%(count)d failed attempts count against the retry policy (%(policy)s)",
        run.failed_attempts,
    ) % {"count": run.failed_attempts, "policy": policy.describe()}
    if run.attempt > policy.max_attempts:
        return gettext("attempt %(number)d") % number, failed
    text = gettext("attempt %(number)d of %(total)d") % {**number, "total": policy.max_attempts}
    return text, failed


def timeout_text(timeout: float | None) -> str:
    """A job's timeout: ``1 min 30 s``, or ``none``."""
    if timeout is None:
        return gettext("none")
    return format_duration(timedelta(seconds=timeout))
