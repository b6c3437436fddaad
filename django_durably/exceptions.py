"""Every error django-durably raises.

A leaf module: it imports nothing from the package. Each class's docstring is its default message,
and errors carry structured attributes (``run_id``, ``status``, ...) rather than text to parse.

Two families:

* :class:`DurablyError` (an ``Exception``): bad input, unknown names, lost races of operator actions,
  and the outcomes a waiter is told about.
* :class:`DurablyInterrupt` (a ``BaseException``): control flow raised *inside* a running job when the
  run was cancelled or its lease was lost. A job's ``except Exception`` cannot swallow them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self
from uuid import UUID

from django.core.exceptions import ImproperlyConfigured


class DurablyError(Exception):
    """A django-durably error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ImproperlyConfiguredJob(DurablyError, ImproperlyConfigured):
    """A job was declared in a way django-durably cannot run."""


class DatabaseNotMigrated(DurablyError, ImproperlyConfigured):
    """django-durably's migrations are not applied to the database that stores runs."""

    def __init__(
        self, alias: str, unapplied_migrations: Sequence[str] = (), *, table: str | None = None
    ) -> None:
        self.alias = alias
        self.unapplied_migrations = tuple(unapplied_migrations)
        self.table = table
        command = "python manage.py migrate" + (
            "" if alias == "default" else f" --database {alias}"
        )
        if self.unapplied_migrations:
            what = f"migrations {', '.join(self.unapplied_migrations)} are not applied"
        elif table is not None:
            what = f"it has no table {table}"
        else:
            what = "its tables are missing"
        super().__init__(
            f"Database {alias!r} is not migrated for django-durably: {what}. Run `{command}`."
        )


class JobNotFound(DurablyError, LookupError):
    """No job is registered under this name."""

    def __init__(self, job_name: str) -> None:
        self.job_name = job_name
        super().__init__(
            f"No job is registered under the name {job_name!r}. Jobs are registered by @job() when "
            "their module is imported; django-durably imports each installed app's `jobs` module."
        )


class InvalidValue(DurablyError, ValueError):
    """A value given to django-durably is invalid; nothing was done.

    The neutral base of :class:`InvalidTrigger` (a trigger's values) and :class:`InvalidQuery` (an
    HTTP API query's). ``field`` names the value; ``errors`` lists the problems in pydantic's
    format: dicts with ``loc`` (where, starting with ``field``), ``msg`` and optionally ``type``
    and ``ctx``.
    """

    def __init__(
        self, message: str, *, field: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        self.field = field
        self.errors = errors or [{"loc": [field], "msg": message}]
        super().__init__(message)


class InvalidTrigger(InvalidValue):
    """The trigger request is invalid; nothing was created.

    ``index`` is the position (from 0) of the offending item when the request was a batch
    (``trigger_many()``), else ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str,
        errors: list[dict[str, Any]] | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message, field=field, errors=errors)
        self.index: int | None = None
        if index is not None:
            self.at_index(index)

    def at_index(self, index: int) -> Self:
        """Say that this error is about item ``index`` of a batch: set :attr:`index`, start the
        message with it and put it first in each error's ``loc``. Returns the error itself."""
        if self.index is None:
            self.index = index
            self.args = (f"Item {index} of the batch: {self.args[0]}", *self.args[1:])
            self.errors = [
                {**error, "loc": [index, *error.get("loc", [self.field])]} for error in self.errors
            ]
        return self


class InvalidQuery(InvalidValue):
    """A query parameter of the HTTP API is invalid (``field`` names it)."""


class InvalidInput(InvalidTrigger):
    """The input is not JSON or fails the job's input schema; nothing was created."""


class InvalidLabels(InvalidTrigger):
    """The labels are not a flat object of valid string keys and string values."""


class InvalidRunAfter(InvalidTrigger):
    """`run_after` must be a timezone-aware datetime."""


class PendingRunExists(DurablyError):
    """A pending run with this concurrency key already exists for this job."""

    def __init__(self, *, job_name: str, concurrency_key: str, run_id: UUID) -> None:
        self.job_name = job_name
        self.concurrency_key = concurrency_key
        self.run_id = run_id
        super().__init__(
            f"Job {job_name!r} already has a pending run ({run_id}) with concurrency key "
            f"{concurrency_key!r}. Pass coalesce='skip' to get that run back instead of this error."
        )


class RunNotFound(DurablyError, LookupError):
    """No run exists with this id."""

    def __init__(self, run_id: UUID | str) -> None:
        self.run_id = run_id
        super().__init__(f"No run exists with id {run_id}.")


class RunStateError(DurablyError):
    """The run is not in a state that allows this operation."""

    action = "change"

    def __init__(self, run_id: UUID, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"Run {run_id} cannot {self.action}: it is {status}.")


class RunNotCancellable(RunStateError):
    """The run already finished, so it cannot be cancelled."""

    action = "be cancelled"


class RunNotResumable(RunStateError):
    """Only failed or cancelled runs can be resumed."""

    action = "be resumed"


class RunNotRetriggerable(RunStateError):
    """Only finished runs (completed, failed or cancelled) can be retriggered."""

    action = "be retriggered"


class RunNotDeletable(RunStateError):
    """Only finished runs (completed, failed or cancelled) can be deleted."""

    action = "be deleted"


class RunNotWaiting(RunStateError):
    """A signal can only be sent to a run that has not finished (pending, running or waiting)."""

    action = "receive signals"


class WaitError(DurablyError):
    """Waiting for a run ended without a completed run."""


class RunFailed(WaitError):
    """The run failed."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.run_id: UUID = run.id
        error = run.error or {}
        super().__init__(
            f"Run {run.id} of {run.job_name!r} failed: {error.get('type', 'error')}: "
            f"{error.get('message', '')}"
        )


class RunCancelled(WaitError):
    """The run was cancelled."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.run_id: UUID = run.id
        super().__init__(f"Run {run.id} of {run.job_name!r} was cancelled.")


class WaitTimeout(WaitError, TimeoutError):
    """The run did not finish within the timeout. It was not cancelled and may still finish."""

    def __init__(self, run_id: UUID, timeout: float, status: str) -> None:
        self.run_id = run_id
        self.timeout = timeout
        self.status = status
        super().__init__(
            f"Run {run_id} did not finish within {timeout:g}s (it is {status}); it was not "
            "cancelled and may still finish."
        )


class StepError(DurablyError):
    """A step was used incorrectly."""


class InvalidWait(StepError, ValueError):
    """A durable wait was given something it cannot wait for (a run that is not a child of this
    run, a naive datetime, a negative duration)."""


class DurableWaitTimeout(DurablyError, TimeoutError):
    """A durable wait (``step.wait_for_signal``, ``step.wait_for_runs``) reached its timeout.

    Raised inside the job, where it can be caught; replays raise it again at the same step, so the
    job takes the same path every time.
    """

    def __init__(self, message: str, *, run_id: UUID, step_name: str, deadline: Any) -> None:
        self.run_id = run_id
        self.step_name = step_name
        self.deadline = deadline
        super().__init__(message)


class SignalTimeout(DurableWaitTimeout):
    """No signal of the awaited name arrived before the wait's timeout."""


class ChildRunsTimeout(DurableWaitTimeout):
    """Child runs waited for by ``step.wait_for_runs`` had not all finished by its timeout."""


class ChildRunFailed(DurablyError):
    """Child runs waited for by ``step.wait_for_runs`` failed or were cancelled.

    ``failed`` maps each such run's id to its status (``failed`` or ``cancelled``) and ``errors``
    each failed run's id to its error. Not checkpointed: resume or retrigger the children and the
    parent's next attempt waits for them again.
    """

    def __init__(
        self,
        failed: dict[UUID, str],
        *,
        errors: dict[UUID, Any] | None = None,
        step_name: str = "",
    ) -> None:
        self.failed = failed
        self.errors = errors or {}
        self.step_name = step_name
        listed = ", ".join(f"{run_id} ({status})" for run_id, status in failed.items())
        super().__init__(f"Child runs did not complete (step {step_name!r}): {listed}.")

    @property
    def run_ids(self) -> list[UUID]:
        return list(self.failed)


class InvalidStepName(StepError, ValueError):
    """A step name must be a non-empty string of at most 255 characters."""


class DuplicateStepName(StepError):
    """A step name was used twice in one execution of a job."""

    def __init__(self, name: str) -> None:
        self.step_name = name
        super().__init__(
            f"Step {name!r} was already run in this execution. Step names are the replay key, so "
            "each step of a run needs its own name (e.g. f'save-{i}' inside a loop)."
        )


class InvalidProgress(StepError, ValueError):
    """Progress needs a non-negative `current`, an optional non-negative `total` and a short message."""


class NotJSONSerializable(StepError, TypeError):
    """A value that must be stored as JSON is not JSON-serializable."""


class StepConflict(StepError):
    """Another execution already completed a step with this name for this run."""


class OutputInvalid(DurablyError, ValueError):
    """The job's return value is not JSON or fails its output schema."""


class OutputTooLarge(OutputInvalid):
    """A job's return value or a step's output is larger than ``DURABLY_MAX_OUTPUT_BYTES`` of JSON.

    A step whose output is too large fails (its function ran; nothing is checkpointed); a job whose
    return value is too large fails its run.
    """

    def __init__(self, what: str, *, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(
            f"{what} is {size} bytes of JSON; the limit is {limit} (DURABLY_MAX_OUTPUT_BYTES). "
            "Store large results elsewhere (a file, a model) and return a reference to them."
        )


class NonRetryable(Exception):  # noqa: N818 - named for what it asks, as in the DESIGN contract
    """Raised by a job or a step to fail at once, whatever its retry policy says.

    ``raise NonRetryable("card declined")``, or ``raise NonRetryable("...") from exc`` to keep the
    cause. Neither the step nor the run is tried again.
    """


class TimedOut(DurablyError, TimeoutError):
    """An attempt or a step call ran past its timeout (the error recorded for it)."""

    def __init__(self, message: str, *, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(message)


class RunTimedOut(TimedOut):
    """The attempt ran past the job's ``timeout``; the worker ended it."""


class StepTimedOut(TimedOut):
    """A step's function ran past ``step.run(..., timeout=...)``; the worker ended the attempt."""


class WorkerLost(DurablyError):
    """The run's worker stopped renewing its lease too many times (DURABLY_MAX_RECLAIMS or the retry
    policy's max_attempts): the run is failed rather than claimed again, so a job that kills its
    worker cannot loop forever."""


class DurablyInterrupt(BaseException):  # noqa: N818 - control flow, not an error
    """Stops a running job at its next step boundary. Derives from BaseException on purpose."""

    def __init__(self, run_id: UUID, message: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message or f"{(self.__doc__ or '').strip()} (run {run_id})")


class JobCancelled(DurablyInterrupt):
    """The run was cancelled; the job stops and nothing more is written for it."""


class LeaseLost(DurablyInterrupt):
    """This worker no longer holds the run's lease; another worker may own it now."""


class AttemptEnded(LeaseLost):
    """The worker ended this attempt on time (``timeout``); its thread may write nothing more."""


class RunWaiting(DurablyInterrupt):
    """The run reached a durable wait and is now ``waiting``: the lease is released and the job
    unwinds; it replays up to the wait once woken. Never catch it."""

    def __init__(self, run_id: UUID, *, step_name: str, kind: str, wake_at: Any = None) -> None:
        self.step_name = step_name
        self.kind = kind
        self.wake_at = wake_at
        super().__init__(run_id, f"Run {run_id} waits at step {step_name!r} ({kind})")


class StepRetryLater(DurablyInterrupt):
    """A step failed and its next try is further off than ``DURABLY_INLINE_RETRY_MAX_DELAY``: the run
    is released until then and the step runs again on the next claim."""

    def __init__(
        self, run_id: UUID, *, step_name: str, step_attempt: int, delay: float, error: Any
    ) -> None:
        self.step_name = step_name
        self.step_attempt = step_attempt
        self.delay = delay
        self.error = error
        super().__init__(
            run_id, f"Step {step_name!r} will be tried again in {delay:.1f}s (run {run_id})"
        )
