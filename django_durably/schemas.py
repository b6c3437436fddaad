"""Request and response schemas of the HTTP API (``api``).

Every output schema lists its fields explicitly. Lease fields (``lease_owner``, ``lease_expires_at``,
``lease_generation``) are internal to workers: they appear only under ``lease``, and only when a
caller asks for them with ``?include=lease``.

No ``from __future__ import annotations`` here: ninja and pydantic read these annotations at runtime.
"""

import inspect
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q
from ninja import FilterLookup, FilterSchema, Schema
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from django_durably.conf import durably_settings
from django_durably.jobs import registered_jobs
from django_durably.models import TERMINAL_STATUSES, RunStatus
from django_durably.validation import (
    LABEL_KEY_CHARACTERS,
    MAX_KEY_LENGTH,
    MAX_LABEL_KEY_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    MAX_QUEUE_LENGTH,
    PRIORITY_RANGE,
)

logger = logging.getLogger(__name__)

RunStatusName = Literal["pending", "leased", "waiting", "completed", "failed", "cancelled"]
"""The values of ``RunStatus`` (a test keeps the two equal)."""
RunStatusFilterName = Literal[
    "pending", "leased", "running", "waiting", "completed", "failed", "cancelled"
]
STATUS_ALIASES = {"running": RunStatus.LEASED}
"""Filter values that name a status by another name (DESIGN.md section 3: "Running" is ``leased``)."""
StepStatusName = Literal["completed", "failed", "cancelled", "waiting"]
"""The values of ``StepStatus`` (a test keeps the two equal)."""
LogLevelName = Literal["info", "warning", "error"]
AttemptOutcomeName = Literal[
    "completed", "failed", "timed_out", "step_retry", "cancelled", "lost", "released", "waiting"
]
"""The values of ``AttemptOutcome`` (a test keeps the two equal)."""
DispositionName = Literal["created", "idempotent", "coalesced"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

# Text that databases can store: PostgreSQL refuses NUL characters in text and JSON.
NO_NUL = r"^[^\x00]*$"
LABEL_KEY = f"^{LABEL_KEY_CHARACTERS}$"


def _utc(value: datetime) -> datetime:
    """Aware datetimes that exist in UTC (``0001-01-01T00:00+01:00`` does not)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("datetime is out of range once converted to UTC") from None


def _text_only(value: Any) -> Any:
    """Refuse a JSON number (pydantic would read it as a Unix time): dates are ISO 8601 text."""
    if not isinstance(value, str | datetime):
        raise ValueError("must be an ISO 8601 date-time string")
    return value


def _json_integer(value: Any) -> Any:
    """An integer as JSON has them (``5`` or ``5.0``), never ``true`` nor ``"5"`` (pydantic's lax
    mode would read both as integers, which the OpenAPI schema does not allow)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_utc)]
"""A timezone-aware datetime (naive datetimes are refused: their meaning depends on the server)."""
StrictInstant = Annotated[AwareDatetime, BeforeValidator(_text_only), AfterValidator(_utc)]
""":data:`Instant` in a request body: ISO 8601 text only, no numbers."""

QueryText = Annotated[str, StringConstraints(pattern=NO_NUL, max_length=MAX_KEY_LENGTH)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH, pattern=NO_NUL)]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LABEL_KEY_LENGTH, pattern=LABEL_KEY)]  # fmt: skip
LabelValue = Annotated[str, StringConstraints(max_length=MAX_LABEL_VALUE_LENGTH, pattern=NO_NUL)]
QueueName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUEUE_LENGTH, pattern=NO_NUL)]  # fmt: skip
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(max_length=MAX_LABELS),
    # pydantic documents the key pattern as patternProperties, which lets other keys through; say
    # what the API accepts: every key matches, every value is a string.
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_LABELS,
            "propertyNames": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_LABEL_KEY_LENGTH,
                "pattern": LABEL_KEY,
            },
            "additionalProperties": {
                "type": "string",
                "maxLength": MAX_LABEL_VALUE_LENGTH,
                "pattern": NO_NUL,
            },
        }
    ),
]


# -- errors ------------------------------------------------------------------------------------


class ErrorOut(Schema):
    """An error response (400, 401, 403, 404, 409, 413).

    ``detail`` is always present. Errors raised by django-durably also carry a machine-readable
    ``code``; 409 conflicts carry the run's current ``status``. Authentication (401) and CSRF (403)
    failures come from django-ninja and carry ``detail`` only.
    """

    detail: str = Field(description="What went wrong, for people.")
    code: str | None = Field(
        None,
        description="Machine-readable: run_not_found, job_not_found, permission_denied, "
        "run_not_cancellable, run_not_resumable, run_not_retriggerable, run_not_deletable, "
        "run_not_waiting, pending_run_exists, conflict, payload_too_large.",
    )
    status: RunStatusName | None = Field(None, description="The run's current status (409).")
    run_id: UUID | None = Field(None, description="The run the error is about, when visible.")
    concurrency_key: str | None = Field(None, description="The conflicting concurrency key.")


class FieldErrorOut(Schema):
    """One invalid field, in pydantic's (and django-ninja's) format."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="The kind of error, e.g. missing, string_too_long, invalid_labels."
    )
    loc: list[str | int] = Field(description='Where: e.g. ["body", "payload", "labels"].')
    msg: str = Field(description="What is wrong with the value.")


class ValidationErrorOut(Schema):
    """A 422 response: the request was well-formed JSON, but some values are invalid."""

    detail: list[FieldErrorOut]


# -- jobs --------------------------------------------------------------------------------------


class JobOut(Schema):
    name: str = Field(description="The registered job name; use it in POST /jobs/{name}/runs.")
    description: str = Field(description="The first paragraph of the job function's docstring.")
    queue: str = Field(description="The queue its runs go to unless a trigger says otherwise.")
    priority: int = Field(description="The default priority of its runs (higher runs first).")
    input_schema: dict[str, Any] | None = Field(
        description="JSON schema of the input, when the job declares a pydantic input model; "
        "null means any JSON value is accepted."
    )
    output_schema: dict[str, Any] | None = Field(
        description="JSON schema of the output, when the job declares a pydantic output model."
    )

    # Read from a registered Job.
    @staticmethod
    def resolve_description(job: Any) -> str:
        return str((inspect.getdoc(job.fn) or "").split("\n\n")[0].strip())

    @staticmethod
    def resolve_queue(job: Any) -> str:
        return str(job.queue or durably_settings.DEFAULT_QUEUE)

    @staticmethod
    def resolve_priority(job: Any) -> int:
        return int(durably_settings.DEFAULT_PRIORITY if job.priority is None else job.priority)

    @staticmethod
    def resolve_input_schema(job: Any) -> dict[str, Any] | None:
        return _json_schema(job.input_schema)

    @staticmethod
    def resolve_output_schema(job: Any) -> dict[str, Any] | None:
        return _json_schema(job.output_schema)


def _json_schema(model: Any) -> dict[str, Any] | None:
    if model is None:
        return None
    try:
        schema: dict[str, Any] = model.model_json_schema()
    except Exception:
        # A model pydantic cannot describe must not break the listing: show it as free-form.
        logger.warning("No JSON schema for %s.", model, exc_info=True)
        return None
    return schema


# -- runs --------------------------------------------------------------------------------------


class RunErrorOut(Schema):
    """A stored exception (never a pickle)."""

    type: str = Field("", description="The exception's class path.")
    message: str = ""
    traceback: str = ""


class ProgressOut(Schema):
    current: int | float
    total: int | float | None = None
    message: str | None = None


class LeaseOut(Schema):
    """Worker-internal lease fields (only with ``?include=lease``)."""

    owner: str = Field(description="The worker holding (or last holding) the lease.")
    expires_at: datetime | None = Field(description="When the lease runs out, by the DB clock.")
    generation: int = Field(description="Incremented by every claim; fences stale workers.")


class WaitingForOut(Schema):
    """What a waiting run waits for (its ``waiting_for``). Kept on a woken run (pending, then
    running) until the wait returns; null once it has, and on runs that never waited."""

    kind: str = Field(description="sleep, signal or runs.")
    step: str = Field(description="The name of the step that waits.")
    until: datetime | None = Field(
        None, description="The wait's deadline (a sleep's end, a wait's timeout); null: none."
    )
    signal: str | None = Field(None, description="kind signal: the signal's name.")
    runs: list[UUID] | None = Field(None, description="kind runs: the child runs waited for.")


class RunOut(Schema):
    id: UUID
    job_name: str
    queue: str
    priority: int
    status: RunStatusName
    is_terminal: bool = Field(
        description="The run has finished (completed, failed or cancelled) and will not change "
        "by itself."
    )
    is_active: bool = Field(
        description="The run has not finished: pending, leased (running) or waiting. The "
        "opposite of is_terminal."
    )
    labels: dict[str, str]
    progress: ProgressOut | None
    attempt: int = Field(description="How many times a worker has started this run.")
    failed_attempts: int = Field(
        description="Attempts that failed, timed out or lost their worker since the run was "
        "triggered or last resumed (what the retry policy's max_attempts counts)."
    )
    retry_at: datetime | None = Field(
        description="When a pending run waiting for a retry will be tried again; null otherwise."
    )
    wake_at: datetime | None = Field(
        description="When a waiting run's timer wakes it (a sleep's end, a wait's timeout); null "
        "otherwise, and for a wait without a deadline."
    )
    waiting_for: WaitingForOut | None = Field(
        description="What the run waits for (kept once it is woken, until the wait returns)."
    )
    parent_id: UUID | None = Field(
        description="The run whose step.trigger() created this one; null for other runs."
    )
    completed_step_count: int
    idempotency_key: str | None
    concurrency_key: str | None
    run_after: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    lease: LeaseOut | None = Field(
        None, description="Present only when the request asks for it with include=lease."
    )

    @staticmethod
    def resolve_is_terminal(run: Any) -> bool:
        return run.status in TERMINAL_STATUSES

    @staticmethod
    def resolve_is_active(run: Any) -> bool:
        return run.status not in TERMINAL_STATUSES

    @staticmethod
    def resolve_retry_at(run: Any) -> datetime | None:
        # Waiting for a retry means what ``Run.objects.retrying()`` (and ?retrying=) means.
        return run.retry_at if run.status == RunStatus.PENDING else None


class RunDetailOut(RunOut):
    input: Any = Field(description="The input stored at trigger time (JSON).")
    output: Any = Field(description="The job's return value (JSON), once completed.")
    error: RunErrorOut | None = Field(description="The exception, once failed.")
    current_step_index: int
    max_attempts: int | None = Field(
        description="The max_attempts of the job's retry policy as registered now (1: no "
        "retry); null when no job is registered under the run's job_name (or its policy is "
        "misconfigured)."
    )

    @staticmethod
    def resolve_max_attempts(run: Any) -> int | None:
        job = registered_jobs().get(run.job_name)
        if job is None:
            return None
        try:
            return int(job.retry_policy.max_attempts)
        except ImproperlyConfigured:
            # A bad DURABLY_DEFAULT_RETRY must not turn a read, or an action already done, into
            # a 500: workers report it where it matters.
            logger.warning("No retry policy for job %s.", run.job_name, exc_info=True)
            return None


class TriggerOut(RunDetailOut):
    disposition: DispositionName = Field(
        description="created (201), or idempotent / coalesced (200) when an existing run was "
        "returned instead of a new one."
    )


class RunPage(Schema):
    items: list[RunOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= to get the next page; null on the last page."
    )


class CancelOut(Schema):
    cancelled: bool = Field(description="False when the run was already cancelled (a no-op).")
    from_status: RunStatusName
    run: RunDetailOut


class ResumeOut(Schema):
    from_status: RunStatusName
    run: RunDetailOut


class RetriggerOut(Schema):
    retriggered_from: UUID = Field(description="The finished run that was copied.")
    run: RunDetailOut = Field(description="The new pending run.")


class StepOut(Schema):
    id: int
    index: int = Field(description="Position of the step in its run's execution.")
    name: str
    status: StepStatusName
    attempt: int = Field(description="The run's attempt this row was written in.")
    step_attempt: int = Field(
        description="Which try of the step's function this row records (1, 2, ... on retries)."
    )
    output: Any = Field(
        description="The step's return value; for a waiting row (a durable wait's record), what "
        "it waits for."
    )
    error: RunErrorOut | None
    started_at: datetime
    completed_at: datetime


class StepPage(Schema):
    count: int = Field(description="How many steps the run has in total.")
    items: list[StepOut]


class AttemptOut(Schema):
    """One attempt of a run: from a worker's claim to how it ended.

    No ``id``: the attempt that completed a run has no stored row (it is read from the run), and
    nothing else names an attempt by id. ``number`` and the order of the history identify one."""

    number: int = Field(description="The run's attempt number (its attempt field then).")
    worker: str = Field(description="The worker that held the run during this attempt.")
    started_at: datetime | None = Field(description="When the worker started the attempt.")
    ended_at: datetime
    duration_seconds: float | None = Field(
        description="ended_at minus started_at; null when the start is unknown."
    )
    outcome: AttemptOutcomeName = Field(
        description="completed, failed (the run failed or was scheduled to be retried), "
        "timed_out, step_retry (released until a failed step's next try), cancelled, lost (its "
        "worker stopped renewing the lease), released (handed back at shutdown) or waiting "
        "(released at a durable wait)."
    )
    error: RunErrorOut | None = Field(description="The exception that ended the attempt, if any.")
    retry_at: datetime | None = Field(
        description="When the run was scheduled to be tried again after this attempt, if it was."
    )


class AttemptPage(Schema):
    count: int = Field(
        description="How many attempts of the run have ended in total, the one that completed it "
        "included."
    )
    items: list[AttemptOut]


class LogOut(Schema):
    id: int
    step_name: str
    level: LogLevelName
    message: str
    data: Any
    attempt: int
    created_at: datetime


class LogPage(Schema):
    count: int = Field(description="How many log lines the run has in total.")
    items: list[LogOut]


class SignalOut(Schema):
    """A signal sent to a run, consumed or not yet."""

    id: int
    name: str
    payload: Any = Field(description="The JSON sent with it (null when none).")
    idempotency_key: str | None
    sent_by: str = Field(description="Who sent it (empty when unknown).")
    source: str = Field(description="Where it was sent from: python, admin or api.")
    sent_at: datetime
    consumed_at: datetime | None = Field(
        description="When a step.wait_for_signal() took it; null while it waits for one."
    )
    consumed_by_step: str = Field(description="The step that took it (empty until then).")


class SignalPage(Schema):
    count: int = Field(description="How many signals the run has been sent in total.")
    items: list[SignalOut]


class SignalSentOut(Schema):
    """The result of ``POST /runs/{run_id}/signals/{name}``."""

    signal_id: int = Field(description="The stored signal (the first one, for a repeated key).")
    run_id: UUID
    name: str
    created: bool = Field(
        description="False when the idempotency key had been used: nothing new was stored."
    )
    woke: bool = Field(description="The run was waiting for this signal and is pending again.")
    run_status: RunStatusName = Field(description="The run's status after the signal.")


# -- inputs ------------------------------------------------------------------------------------


class EnqueueIn(Schema):
    """A trigger request. Every field is optional; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    input: Any = Field(None, description="The job's input (JSON), validated by its input schema.")
    idempotency_key: Key | None = Field(
        None, description="A second trigger with the same key returns the first run (200)."
    )
    concurrency_key: Key | None = Field(
        None, description="Overrides the job's concurrency key for this run."
    )
    labels: Labels | None = Field(
        None, description="String labels to filter runs by (and to scope callers with)."
    )
    queue: QueueName | None = Field(None, description="Overrides the job's queue for this run.")
    coalesce: Literal["error", "skip"] = Field(
        "error",
        description="When a pending run holds the concurrency key: error (409) or skip "
        "(return that run, 200).",
    )
    run_after: StrictInstant | None = Field(
        None, description="Not before this timezone-aware ISO 8601 time."
    )
    priority: Annotated[int, BeforeValidator(_json_integer)] | None = Field(
        None, ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1], description="Higher runs first."
    )


class SignalIn(Schema):
    """A signal's body. Both fields are optional; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    payload: Any = Field(
        None, description="Any JSON, returned by the step.wait_for_signal() that takes it."
    )
    idempotency_key: Key | None = Field(
        None,
        description="A second signal to the run with the same key stores nothing and returns the "
        "first (200).",
    )


class RunFilter(FilterSchema):
    """Filters of GET /runs. Repeat ``job`` or ``status`` to match any of several values."""

    job: Annotated[list[QueryText] | None, FilterLookup("job_name__in")] = Field(
        None, description="Job name (repeatable: any of)."
    )
    status: list[RunStatusFilterName] | None = Field(
        None, description="Run status (repeatable: any of); running is an alias of leased."
    )
    parent: Annotated[UUID | None, FilterLookup("parent_id")] = Field(
        None, description="Only the child runs of this run (created by its step.trigger())."
    )
    retrying: bool | None = Field(
        None,
        description="true: only pending runs waiting for a retry (retry_at set); false: every "
        "other run.",
    )
    created_after: Annotated[Instant | None, FilterLookup("created_at__gte")] = Field(
        None, description="Created at or after this timezone-aware time."
    )
    created_before: Annotated[Instant | None, FilterLookup("created_at__lt")] = Field(
        None, description="Created before this timezone-aware time."
    )

    def filter_status(self, value: list[str] | None) -> Q:
        if not value:
            return Q()
        return Q(status__in=sorted({STATUS_ALIASES.get(name, name) for name in value}))

    def filter_retrying(self, value: bool | None) -> Q:  # noqa: FBT001 - ninja passes it positionally
        if value is None:
            return Q()
        waiting = Q(status=RunStatus.PENDING, retry_at__isnull=False)  # Run.objects.retrying()
        return waiting if value else ~waiting
