"""django-durably: durable, step-checkpointed background jobs for Django.

Decorate a module-level function with :func:`job`, trigger it, and run a worker (or call
:func:`process_until_idle`). Every completed ``step.run(...)`` is checkpointed, so a run that crashes or
is resumed later skips the steps it already finished.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from django_durably.context import StepContext, current_context
from django_durably.exceptions import (
    ChildRunFailed,
    ChildRunsTimeout,
    DatabaseNotMigrated,
    DuplicateStepName,
    DurableWaitTimeout,
    DurablyError,
    DurablyInterrupt,
    ImproperlyConfiguredJob,
    InvalidInput,
    InvalidLabels,
    InvalidProgress,
    InvalidRunAfter,
    InvalidStepName,
    InvalidTrigger,
    InvalidValue,
    InvalidWait,
    JobCancelled,
    JobNotFound,
    LeaseLost,
    NonRetryable,
    NotJSONSerializable,
    OutputInvalid,
    OutputTooLarge,
    PendingRunExists,
    RunCancelled,
    RunFailed,
    RunNotCancellable,
    RunNotDeletable,
    RunNotFound,
    RunNotResumable,
    RunNotRetriggerable,
    RunNotWaiting,
    RunStateError,
    RunTimedOut,
    RunWaiting,
    SignalTimeout,
    StepConflict,
    StepError,
    StepTimedOut,
    TimedOut,
    WaitError,
    WaitTimeout,
    WorkerLost,
)
from django_durably.jobs import Job, TriggerItem, get_job, job, registered_jobs
from django_durably.retries import Retry

if TYPE_CHECKING:
    from django_durably.executor import RunOutcome, process_next, process_one, process_until_idle
    from django_durably.models import (
        AttemptOutcome,
        AuditRecord,
        Run,
        RunAttempt,
        RunLog,
        RunStatus,
        Signal,
        Step,
        StepStatus,
    )
    from django_durably.operations import (
        CancelResult,
        DeleteResult,
        ResumeResult,
        cancel_run,
        delete_run,
        purge_runs,
        purgeable_runs,
        resume_run,
        retrigger_run,
        trigger,
        wait_for_run,
    )
    from django_durably.waits import SignalResult, send_signal

__version__ = "0.1.0"

# Names whose modules need Django's app registry; imported on first use, so that importing
# django_durably (to decorate jobs) works before Django is set up.
_LAZY = {
    "process_one": "django_durably.executor",
    "process_next": "django_durably.executor",
    "process_until_idle": "django_durably.executor",
    "RunOutcome": "django_durably.executor",
    "Run": "django_durably.models",
    "RunStatus": "django_durably.models",
    "Step": "django_durably.models",
    "StepStatus": "django_durably.models",
    "RunLog": "django_durably.models",
    "trigger": "django_durably.operations",
    "wait_for_run": "django_durably.operations",
    "cancel_run": "django_durably.operations",
    "CancelResult": "django_durably.operations",
    "ResumeResult": "django_durably.operations",
    "DeleteResult": "django_durably.operations",
    "resume_run": "django_durably.operations",
    "retrigger_run": "django_durably.operations",
    "delete_run": "django_durably.operations",
    "purge_runs": "django_durably.operations",
    "purgeable_runs": "django_durably.operations",
    "AuditRecord": "django_durably.models",
    "RunAttempt": "django_durably.models",
    "AttemptOutcome": "django_durably.models",
    "Signal": "django_durably.models",
    "send_signal": "django_durably.waits",
    "SignalResult": "django_durably.waits",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'django_durably' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "InvalidValue",
    "send_signal",
    "SignalResult",
    "Signal",
    "SignalTimeout",
    "RunWaiting",
    "RunNotWaiting",
    "InvalidWait",
    "DurableWaitTimeout",
    "ChildRunsTimeout",
    "ChildRunFailed",
    "AttemptOutcome",
    "AuditRecord",
    "CancelResult",
    "DatabaseNotMigrated",
    "DeleteResult",
    "DuplicateStepName",
    "DurablyError",
    "DurablyInterrupt",
    "ImproperlyConfiguredJob",
    "InvalidInput",
    "InvalidLabels",
    "InvalidProgress",
    "InvalidRunAfter",
    "InvalidStepName",
    "InvalidTrigger",
    "Job",
    "JobCancelled",
    "JobNotFound",
    "LeaseLost",
    "NonRetryable",
    "NotJSONSerializable",
    "OutputInvalid",
    "OutputTooLarge",
    "PendingRunExists",
    "ResumeResult",
    "Retry",
    "Run",
    "RunAttempt",
    "RunCancelled",
    "RunFailed",
    "RunLog",
    "RunNotCancellable",
    "RunNotDeletable",
    "RunNotFound",
    "RunNotResumable",
    "RunNotRetriggerable",
    "RunOutcome",
    "RunStateError",
    "RunStatus",
    "RunTimedOut",
    "Step",
    "StepConflict",
    "StepContext",
    "StepError",
    "StepStatus",
    "StepTimedOut",
    "TimedOut",
    "TriggerItem",
    "WaitError",
    "WaitTimeout",
    "WorkerLost",
    "__version__",
    "cancel_run",
    "current_context",
    "delete_run",
    "get_job",
    "job",
    "process_next",
    "process_one",
    "process_until_idle",
    "purge_runs",
    "purgeable_runs",
    "registered_jobs",
    "resume_run",
    "retrigger_run",
    "trigger",
    "wait_for_run",
]
