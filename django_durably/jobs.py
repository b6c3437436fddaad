"""The ``@job()`` decorator, the :class:`Job` definition and the registry of jobs by name.

Importing this module never touches models (user code imports it before the app registry is ready);
the triggering methods reach ``triggering`` through one lazy import in :func:`_triggering`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError

from django_durably.exceptions import (
    ImproperlyConfiguredJob,
    InvalidInput,
    InvalidTrigger,
    JobNotFound,
    NotJSONSerializable,
    OutputInvalid,
)
from django_durably.retries import Retry, default_policy, seconds
from django_durably.serialization import to_json
from django_durably.types import JSON, Coalesce
from django_durably.validation import (
    MAX_KEY_LENGTH,
    MAX_QUEUE_LENGTH,
    PRIORITY_RANGE,
    RESERVED_KEY_PREFIXES,
    ReservedKey,
    check_job_defaults,
    check_job_name,
    check_key,
    check_optional_key,
    output_json,
)

if TYPE_CHECKING:
    from django_durably.context import StepContext
    from django_durably.models import Run

__all__ = [
    # The limits and key rules live in ``validation``; importable from here as they were.
    "MAX_KEY_LENGTH",
    "MAX_QUEUE_LENGTH",
    "PRIORITY_RANGE",
    "RESERVED_KEY_PREFIXES",
    "ConcurrencyKey",
    "Job",
    "ReservedKey",
    "TriggerItem",
    "check_key",
    "define_job",
    "get_job",
    "job",
    "register",
    "registered_jobs",
    "registry_conflicts",
    "unregister",
]

I = TypeVar("I")  # noqa: E741 - the job's input type
O = TypeVar("O")  # noqa: E741 - the job's output type

ConcurrencyKey = str | Callable[[Any], str] | None


@dataclass(frozen=True, kw_only=True)
class TriggerItem:
    """One run to create with :meth:`Job.trigger_many`, when items need their own options."""

    input: Any = None
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    labels: dict[str, str] | None = None
    queue: str | None = None
    priority: int | None = None
    run_after: datetime | None = None
    coalesce: Coalesce = "error"
    parent_id: UUID | None = None
    """The run whose ``step.trigger()`` creates this one (set by it)."""


@dataclass(frozen=True, kw_only=True)
class Job(Generic[I, O]):
    """A registered job: a module-level function plus the options it was declared with.

    Use :func:`job` to make one. ``Job`` objects are immutable; :meth:`using` returns a copy with
    other defaults.
    """

    fn: Callable[[StepContext, I], O]
    name: str
    queue: str | None = None
    priority: int | None = None
    concurrency_key: ConcurrencyKey = None
    input_schema: type[BaseModel] | None = None
    output_schema: type[BaseModel] | None = None
    retry: Retry | None = None
    timeout: float | None = None
    module: str = field(default="", compare=False)

    @property
    def retry_policy(self) -> Retry:
        """The job's ``retry``, or ``DURABLY_DEFAULT_RETRY`` (read now, so settings overrides apply)."""
        return self.retry if self.retry is not None else default_policy()

    def __call__(self, step: StepContext, input: I) -> O:
        """Call the function directly (in tests, with a test context); nothing is stored."""
        return self.fn(step, input)

    def using(self, *, queue: str | None = None, priority: int | None = None) -> Job[I, O]:
        """A copy of this job that triggers onto another queue or priority by default."""
        check_job_defaults(self.name, queue, priority)
        changes: dict[str, Any] = {}
        if queue is not None:
            changes["queue"] = queue
        if priority is not None:
            changes["priority"] = priority
        return dataclasses.replace(self, **changes)

    # -- triggering (thin shims over ``triggering``) -------------------------------------------

    def trigger(
        self,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
        labels: dict[str, str] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        run_after: datetime | None = None,
        coalesce: Coalesce = "error",
    ) -> Run:
        """Create a pending run of this job and return it, with ``run.disposition`` set.

        ``disposition`` is ``"created"`` for a new run, ``"idempotent"`` when a run with the same
        ``idempotency_key`` already exists (it is returned whatever its status), and ``"coalesced"``
        when ``coalesce="skip"`` and a pending run has the same concurrency key.
        """
        item = TriggerItem(
            input=input,
            idempotency_key=idempotency_key,
            concurrency_key=concurrency_key,
            labels=labels,
            queue=queue,
            priority=priority,
            run_after=run_after,
            coalesce=coalesce,
        )
        runs: list[Run] = _triggering().trigger_runs(self, [item])
        return runs[0]

    def trigger_many(self, items: Iterable[Any]) -> list[Run]:
        """Validate every item, then create all runs in one transaction (all or nothing).

        Each item is either a :class:`TriggerItem` or a plain input.
        """
        prepared = [
            item if isinstance(item, TriggerItem) else TriggerItem(input=item) for item in items
        ]
        runs: list[Run] = _triggering().trigger_runs(self, prepared, batch=True)
        return runs

    def trigger_and_wait(
        self,
        input: Any = None,
        *,
        timeout: float,
        **options: Any,
    ) -> Run:
        """Trigger, then wait up to ``timeout`` seconds for the run to finish.

        Returns the completed run, or raises :class:`~django_durably.exceptions.RunFailed`,
        :class:`~django_durably.exceptions.RunCancelled` or
        :class:`~django_durably.exceptions.WaitTimeout` (which does not cancel the run).
        A worker must be running for the run to make progress.
        """
        finished: Run = _triggering().trigger_and_wait(self, input, timeout=timeout, **options)
        return finished

    # -- input and output ------------------------------------------------------------------------

    def prepare_input(self, value: Any) -> tuple[JSON, Any]:
        """Validate a trigger's input; return ``(stored JSON, value the job function receives)``."""
        if self.input_schema is None:
            try:
                stored = to_json(value, what=f"Input of job {self.name!r}")
            except NotJSONSerializable as exc:
                raise InvalidInput(str(exc), field="input") from exc
            return stored, stored
        try:
            model = self.input_schema.model_validate(value)
        except ValidationError as exc:
            raise _invalid_input(
                exc, f"Input of job {self.name!r} does not match {self.input_schema.__name__}"
            ) from exc
        return model.model_dump(mode="json"), model

    def load_input(self, stored: JSON) -> Any:
        """The value the job function receives for an input stored at trigger time."""
        if self.input_schema is None:
            return stored
        try:
            return self.input_schema.model_validate(stored)
        except ValidationError as exc:
            raise _invalid_input(
                exc,
                f"Stored input of job {self.name!r} no longer matches {self.input_schema.__name__}",
            ) from exc

    def prepare_output(self, value: Any) -> JSON:
        """Validate and normalise the job's return value, or raise :class:`OutputInvalid`."""
        if self.output_schema is not None:
            try:
                value = self.output_schema.model_validate(
                    value.model_dump() if isinstance(value, BaseModel) else value
                )
            except ValidationError as exc:
                raise OutputInvalid(
                    f"Output of job {self.name!r} does not match "
                    f"{self.output_schema.__name__}: {_summarise(exc)}"
                ) from exc
        try:
            return output_json(value, what=f"Output of job {self.name!r}")
        except NotJSONSerializable as exc:
            raise OutputInvalid(str(exc)) from exc

    def resolve_concurrency_key(self, explicit: str | None, parsed_input: Any) -> str | None:
        """The run's concurrency key: the trigger's own, else the job's string or callable."""
        key: Any = explicit
        if key is None and self.concurrency_key is not None:
            if callable(self.concurrency_key):
                try:
                    key = self.concurrency_key(parsed_input)
                except Exception as exc:
                    raise InvalidTrigger(
                        f"The concurrency_key callable of job {self.name!r} failed: {exc!r}",
                        field="concurrency_key",
                    ) from exc
            else:
                key = self.concurrency_key
        return check_optional_key(key, "concurrency_key")


def _invalid_input(exc: ValidationError, mismatch: str) -> InvalidInput:
    """An input that fails the job's schema: ``mismatch`` says which (``"Input of job 'x' does not
    match XIn"``), pydantic's errors say why."""
    return InvalidInput(
        f"{mismatch}: {_summarise(exc)}",
        field="input",
        errors=_error_details(exc, "input"),
    )


def _summarise(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    )


def _error_details(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = json.loads(exc.json(include_url=False, include_input=False))
    for detail in details:
        detail["loc"] = [prefix, *detail.get("loc", [])]
    return details


def _triggering() -> ModuleType:
    # The one lazy import: ``triggering`` needs models, and user code imports this module (to
    # decorate functions) before Django's app registry is ready.
    from django_durably import triggering

    return triggering


# -- the decorator -----------------------------------------------------------------------------


def job(
    _misused: Any = None,
    /,
    *,
    name: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    concurrency_key: ConcurrencyKey = None,
    input_schema: type[BaseModel] | None = None,
    output_schema: type[BaseModel] | None = None,
    retry: Retry | None = None,
    timeout: float | timedelta | None = None,
) -> Callable[[Callable[[StepContext, I], O]], Job[I, O]]:
    """Register a module-level function ``fn(step, input)`` as a durable job.

    Always called with parentheses: ``@job()`` or ``@job(queue="emails")``. All options are
    keyword-only:

    * ``name``: registry name, stored on each run (default ``"<module>.<qualname>"``). Renaming a
      job orphans its pending runs, so set it explicitly for jobs you expect to move.
    * ``queue``: the default queue (``DURABLY_DEFAULT_QUEUE`` when unset).
    * ``priority``: the default priority; higher runs first (``DURABLY_DEFAULT_PRIORITY``).
    * ``concurrency_key``: a string, or a callable receiving the validated input and returning one.
      At most one pending run exists per job and key, and at most one run per key is leased.
    * ``input_schema`` / ``output_schema``: pydantic models. When omitted, they are taken from the
      ``input`` parameter's and the return annotation when those are pydantic models.
    * ``retry``: a :class:`~django_durably.Retry` policy for the whole run: a run that raises with
      attempts left goes back to pending and is tried again after the policy's delay, replaying
      its completed steps (``DURABLY_DEFAULT_RETRY`` when unset).
    * ``timeout``: seconds (or a ``timedelta``) one attempt may take; past it the worker ends the
      attempt with ``RunTimedOut``, which the retry policy may retry.
    """
    if callable(_misused) or callable(name):
        raise ImproperlyConfiguredJob("Use @job() with parentheses, not @job.")
    if _misused is not None:
        raise TypeError("job() options are keyword-only, e.g. @job(name=...).")

    def decorate(fn: Callable[[StepContext, I], O]) -> Job[I, O]:
        return register(
            define_job(
                fn,
                name=name,
                queue=queue,
                priority=priority,
                concurrency_key=concurrency_key,
                input_schema=input_schema,
                output_schema=output_schema,
                retry=retry,
                timeout=timeout,
            )
        )

    return decorate


def define_job(
    fn: Callable[[StepContext, I], O],
    *,
    name: str | None,
    queue: str | None,
    priority: int | None,
    concurrency_key: ConcurrencyKey,
    input_schema: type[BaseModel] | None,
    output_schema: type[BaseModel] | None,
    retry: Retry | None = None,
    timeout: float | timedelta | None = None,
) -> Job[I, O]:
    """Check ``fn`` and the options, and build the :class:`Job` (without registering it)."""
    _validate_function(fn)
    qualified = f"{fn.__module__}.{fn.__qualname__}"
    job_name = check_job_name(name if name is not None else qualified)
    check_job_defaults(job_name, queue, priority)
    if concurrency_key is not None and not (
        isinstance(concurrency_key, str) or callable(concurrency_key)
    ):
        raise ImproperlyConfiguredJob(
            f"Job {job_name!r}: concurrency_key must be a string or a callable of the input."
        )
    inferred_input, inferred_output = _schemas_from_annotations(fn)
    for label, schema in (("input_schema", input_schema), ("output_schema", output_schema)):
        if schema is not None and not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise ImproperlyConfiguredJob(
                f"Job {job_name!r}: {label} must be a pydantic model class."
            )
    if retry is not None and not isinstance(retry, Retry):
        raise ImproperlyConfiguredJob(
            f"Job {job_name!r}: retry must be a django_durably.Retry, got {retry!r}."
        )
    return Job(
        fn=fn,
        name=job_name,
        queue=queue,
        priority=priority,
        concurrency_key=concurrency_key,
        input_schema=input_schema or inferred_input,
        output_schema=output_schema or inferred_output,
        retry=retry,
        timeout=_timeout(job_name, timeout),
        module=qualified,
    )


def _timeout(job_name: str, value: float | timedelta | None) -> float | None:
    try:
        timeout = seconds(value, what="timeout")
    except ValueError as exc:
        raise ImproperlyConfiguredJob(f"Job {job_name!r}: {exc}") from None
    if timeout == 0:
        raise ImproperlyConfiguredJob(f"Job {job_name!r}: timeout must be more than 0 seconds.")
    return timeout


def _validate_function(fn: Any) -> None:
    if not inspect.isfunction(fn):
        raise ImproperlyConfiguredJob(f"@job() decorates plain functions, not {fn!r}.")
    if "<locals>" in fn.__qualname__ or fn.__name__ == "<lambda>":
        raise ImproperlyConfiguredJob(
            f"Job function {fn.__qualname__!r} must be defined at module level, so that every "
            "worker process can import it by name."
        )
    try:
        inspect.signature(fn).bind(object(), object())
    except TypeError as exc:
        raise ImproperlyConfiguredJob(
            f"Job function {fn.__qualname__!r} must accept two positional arguments, (step, input)."
        ) from exc


def _schemas_from_annotations(fn: Any) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: no inference, not an error
        return None, None
    params = list(inspect.signature(fn).parameters)
    input_hint = hints.get(params[1]) if len(params) > 1 else None

    def model_or_none(hint: Any) -> type[BaseModel] | None:
        return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None

    return model_or_none(input_hint), model_or_none(hints.get("return"))


# -- the registry ------------------------------------------------------------------------------


@dataclass
class _Registry:
    jobs: dict[str, Job[Any, Any]] = field(default_factory=dict)
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)


_registry = _Registry()


def register(definition: Job[I, O]) -> Job[I, O]:
    """Add a job to the registry and return it.

    Re-registering the same function (a module imported twice) replaces the entry. Registering a
    *different* function under a taken name keeps the first and records a conflict, which the
    ``django_durably.E001`` system check reports at startup.
    """
    existing = _registry.jobs.get(definition.name)
    if existing is not None and existing.module != definition.module:
        conflict = (definition.name, existing.module, definition.module)
        if conflict not in _registry.conflicts:
            _registry.conflicts.append(conflict)
        return definition
    _registry.jobs[definition.name] = definition
    return definition


def unregister(name: str) -> None:
    """Remove a job from the registry (mainly for tests)."""
    _registry.jobs.pop(name, None)
    _registry.conflicts[:] = [c for c in _registry.conflicts if c[0] != name]


def get_job(name: str) -> Job[Any, Any]:
    """The job registered under ``name``, or :class:`JobNotFound`."""
    try:
        return _registry.jobs[name]
    except KeyError:
        raise JobNotFound(name) from None


def registered_jobs() -> dict[str, Job[Any, Any]]:
    """A snapshot of the registry, by name."""
    return dict(_registry.jobs)


def registry_conflicts() -> Sequence[tuple[str, str, str]]:
    """``(name, first function, other function)`` for each name registered twice."""
    return tuple(_registry.conflicts)
