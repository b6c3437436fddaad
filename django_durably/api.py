"""The HTTP API: a django-ninja ``Router`` that a host mounts on its own ``NinjaAPI``.

    api.add_router("/durably/", "django_durably.api.router")

(or ``path("durably/", include("django_durably.urls"))`` for a ready-made API with its own docs).
Endpoints are thin: they check the caller (``access``), call ``triggering`` and ``operations``, and
map django-durably's typed errors to responses here, since a router cannot register exception
handlers. Every response code is declared with its schema (``schemas``).

No ``from __future__ import annotations`` here: ninja reads these annotations at runtime.
"""

import base64
import inspect
import json
import logging
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.db.models import Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.db.models.query import QuerySet
from django.http import HttpRequest
from django.urls import register_converter
from ninja import HeaderEx, P, PathEx, Query, QueryEx, Router, Status
from pydantic import Field

from django_durably import access, stream
from django_durably.conf import durably_settings
from django_durably.database import db_alias
from django_durably.exceptions import (
    DurablyError,
    InvalidLabels,
    InvalidQuery,
    InvalidValue,
    JobNotFound,
    PendingRunExists,
    RunNotCancellable,
    RunNotDeletable,
    RunNotFound,
    RunNotResumable,
    RunNotRetriggerable,
    RunStateError,
)
from django_durably.guards import guard_body
from django_durably.jobs import Job, TriggerItem, get_job, registered_jobs
from django_durably.models import Run, RunLog, RunQuerySet, Step
from django_durably.operations import (
    MAX_RETRIGGER_KEY_LENGTH,
    cancel_run,
    delete_run,
    resume_run,
    retrigger_run,
)
from django_durably.schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    CancelOut,
    EnqueueIn,
    ErrorOut,
    JobOut,
    LogPage,
    ResumeOut,
    RetriggerOut,
    RunDetailOut,
    RunFilter,
    RunPage,
    StepPage,
    TriggerOut,
    ValidationErrorOut,
)
from django_durably.serialization import unstorable_text
from django_durably.triggering import trigger_runs
from django_durably.validation import (
    LABEL_KEY_PATTERN,
    MAX_LABEL_KEY_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
)

__all__ = ["router"]

logger = logging.getLogger(__name__)

SOURCE = "api"
"""What operator actions through the API record as their ``source``."""

LABEL_PREFIX = "label."
DETAIL_FIELDS = ("input", "output", "error")
MAX_CURSOR_LENGTH = 200

# exclude_unset: optional fields are omitted rather than null (the lease, unused error fields).
router = Router(auth=access.DurablyAuth(), tags=["durably"], exclude_unset=True)


class JobNameConverter:
    """Job names in paths: any characters, ``/`` and newlines included (``path`` stops at a
    newline, and an unroutable name would get the host's HTML 404 instead of ours)."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(JobNameConverter, "durably_job_name")

# Every response code an endpoint can return, with its schema. 401 (no or bad credentials) and 403
# (a failed CSRF check) come from ninja's auth; 422 also covers ninja's own parameter validation.
READ: dict[int, Any] = {401: ErrorOut, 403: ErrorOut, 422: ValidationErrorOut}
RUN_READ: dict[int, Any] = {**READ, 404: ErrorOut}
WRITE: dict[int, Any] = {**READ, 400: ErrorOut, 413: ErrorOut}
RUN_WRITE: dict[int, Any] = {**WRITE, 404: ErrorOut, 409: ErrorOut}

INCLUDE_HELP = "include=lease adds the worker-internal lease fields under `lease`."
RunId = Annotated[UUID, Field(description="The run's id.")]
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE, description="Page size.")]
Offset = Annotated[int, Field(ge=0, le=2**31 - 1, description="Items to skip.")]


router.add_decorator(guard_body, mode="view")  # before auth: see ``guards``


# -- errors ------------------------------------------------------------------------------------


_STATE_CODES: dict[type[RunStateError], str] = {
    RunNotCancellable: "run_not_cancellable",
    RunNotResumable: "run_not_resumable",
    RunNotRetriggerable: "run_not_retriggerable",
    RunNotDeletable: "run_not_deletable",
}


def _failure(
    request: HttpRequest, exc: Exception, *, loc: tuple[str, ...] = ("body", "payload")
) -> Status[Any]:
    """The response for one of our typed errors (anything else is re-raised)."""
    if isinstance(exc, PermissionDenied):
        detail = str(exc) or "You do not have permission to do this."
        return Status(403, {"detail": detail, "code": "permission_denied"})
    if isinstance(exc, RunNotFound):
        return Status(
            404, {"detail": f"No run exists with id {exc.run_id}.", "code": "run_not_found"}
        )
    if isinstance(exc, JobNotFound):
        return Status(
            404,
            {
                "detail": f"No job is registered under the name {exc.job_name!r}.",
                "code": "job_not_found",
            },
        )
    if isinstance(exc, RunStateError):
        return Status(
            409,
            {
                "detail": str(exc),
                "code": _STATE_CODES.get(type(exc), "conflict"),
                "status": exc.status,
                "run_id": exc.run_id,
            },
        )
    if isinstance(exc, PendingRunExists):
        body = {
            "detail": f"Job {exc.job_name!r} already has a pending run with concurrency key "
            f"{exc.concurrency_key!r}. Send coalesce=skip to get that run instead.",
            "code": "pending_run_exists",
            "status": "pending",
            "concurrency_key": exc.concurrency_key,
        }
        # The pending run may belong to another scope: name it only when the caller can see it.
        if access.is_visible(request, exc.run_id):
            body["run_id"] = str(exc.run_id)
        return Status(409, body)
    if isinstance(exc, InvalidValue):
        return Status(422, {"detail": _field_errors(exc, loc)})
    raise exc


def _field_errors(exc: InvalidValue, prefix: tuple[str, ...]) -> list[dict[str, Any]]:
    """``exc.errors`` in ninja's 422 format, located under ``prefix``."""
    kind = re.sub(
        r"(?<!^)(?=[A-Z])", "_", type(exc).__name__
    ).lower()  # InvalidInput: invalid_input
    return [
        {
            **{key: value for key, value in error.items() if key == "ctx"},
            "type": str(error.get("type", kind)),
            "loc": [*prefix, *error.get("loc", [exc.field])],
            "msg": str(error.get("msg", exc)),
        }
        for error in exc.errors
    ]


# -- output helpers ----------------------------------------------------------------------------


def _with_lease(run: Run, include: str | None) -> Run:
    """Attach the lease fields when the caller asked for them (they are omitted otherwise)."""
    if include == "lease":
        lease = {
            "owner": run.lease_owner,
            "expires_at": run.lease_expires_at,
            "generation": run.lease_generation,
        }
        setattr(run, "lease", lease)  # noqa: B010 - read by the schema, not a model field
    return run


def _fresh(run_id: UUID) -> Run:
    """The run as stored now (database defaults and all), or :class:`RunNotFound`."""
    run = Run.objects.using(db_alias()).filter(pk=run_id).first()
    if run is None:
        raise RunNotFound(run_id)
    return run


def _job_out(job: Job[Any, Any]) -> dict[str, Any]:
    doc = inspect.getdoc(job.fn) or ""
    return {
        "name": job.name,
        "description": doc.split("\n\n")[0].strip(),
        "queue": job.queue or durably_settings.DEFAULT_QUEUE,
        "priority": job.priority if job.priority is not None else durably_settings.DEFAULT_PRIORITY,
        "input_schema": _json_schema(job.input_schema),
        "output_schema": _json_schema(job.output_schema),
    }


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


# -- jobs --------------------------------------------------------------------------------------


@router.get(
    "/jobs",
    response={200: list[JobOut], **READ},
    operation_id="durably_list_jobs",
    url_name="list_jobs",
    summary="List registered jobs",
)
def list_jobs(request: HttpRequest) -> Status[Any]:
    """Every registered job, by name, with its queue, priority and input and output JSON schemas."""
    try:
        access.require_permission(request, "view_run")
    except PermissionDenied as exc:
        return _failure(request, exc)
    jobs = registered_jobs()
    return Status(200, [_job_out(jobs[name]) for name in sorted(jobs)])


@router.post(
    "/jobs/{durably_job_name:name}/runs",
    response={200: TriggerOut, 201: TriggerOut, 404: ErrorOut, 409: ErrorOut, **WRITE},
    operation_id="durably_trigger_run",
    url_name="trigger_run",
    summary="Trigger a run",
)
def trigger_run(
    request: HttpRequest,
    name: PathEx[str, P(min_length=1, description="The registered job name.")],
    payload: EnqueueIn,
) -> Status[Any]:
    """Create a pending run of the job (201), or return the existing run that an idempotency key
    or `coalesce=skip` resolves to (200); `disposition` says which."""
    try:
        access.require_permission(request, "add_run")
        job = get_job(name)
        # The scope adds its labels and namespaces the keys (EnqueueIn's fields are TriggerItem's).
        item = access.scoped_item(request, job.name, TriggerItem(**payload.model_dump()))
        (run,) = trigger_runs(job, [item])
    except (DurablyError, PermissionDenied) as exc:
        return _failure(request, exc)
    if run.disposition != "created" and not access.is_visible(request, run.pk):
        # The key resolved to a run of another scope: say nothing about it.
        key = "idempotency key" if run.disposition == "idempotent" else "concurrency key"
        return Status(
            409,
            {"detail": f"The {key} is taken by a run you cannot see.", "code": "conflict"},
        )
    try:
        stored = _fresh(run.pk)
    except RunNotFound as exc:  # deleted in the meantime
        return _failure(request, exc)
    setattr(stored, "disposition", run.disposition)  # noqa: B010 - a plain attribute on Run
    return Status(201 if run.disposition == "created" else 200, stored)


# -- runs --------------------------------------------------------------------------------------


def _label_filters(request: HttpRequest) -> dict[str, str]:
    """The ``label.<key>=<value>`` query parameters."""
    labels: dict[str, str] = {}
    for param, values in request.GET.lists():
        if not param.startswith(LABEL_PREFIX):
            continue
        key = param[len(LABEL_PREFIX) :]
        if len(key) > MAX_LABEL_KEY_LENGTH or not LABEL_KEY_PATTERN.fullmatch(key):
            raise InvalidLabels(
                f"{param!r} is not a label filter: keys are 1-{MAX_LABEL_KEY_LENGTH} characters "
                "of letters, digits, '.', '_', '/' and '-'.",
                field=param,
            )
        if len(values) != 1:
            raise InvalidLabels(f"Give {param} once.", field=param)
        value = values[0]
        if len(value) > MAX_LABEL_VALUE_LENGTH or unstorable_text(value) is not None:
            raise InvalidLabels(
                f"{param} must be at most {MAX_LABEL_VALUE_LENGTH} characters, without NUL.",
                field=param,
            )
        labels[key] = value
    if len(labels) > MAX_LABELS:
        raise InvalidLabels(f"At most {MAX_LABELS} label filters are allowed.", field="label")
    return labels


def encode_cursor(run: Run) -> str:
    """An opaque position after ``run`` in the newest-first order."""
    raw = json.dumps([run.created_at.isoformat(), run.pk.hex], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The position a cursor of :func:`encode_cursor` points at, or :class:`InvalidQuery`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, run_id = json.loads(raw)
        if not isinstance(created, str) or not isinstance(run_id, str):
            raise TypeError("not a cursor")
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise TypeError("not a cursor")
        return created_at.astimezone(UTC), UUID(run_id)
    except (ValueError, TypeError, OverflowError):  # binascii.Error is a ValueError
        raise InvalidQuery("Not a cursor from this API.", field="cursor") from None


def _after(runs: RunQuerySet, created_at: datetime, run_id: UUID) -> RunQuerySet:
    """Runs after the cursor's run in the order (-created_at, -id).

    The cursor run's ``created_at`` is compared as stored (a subquery), not as a parameter:
    SQLite stores database-clock times with millisecond text that a Python datetime parameter does
    not compare equal to. The cursor's own timestamp is the fallback once that run is deleted.
    """
    pivot = Coalesce(
        Subquery(Run.objects.using(runs.db).filter(pk=run_id).values("created_at")[:1]),
        Value(created_at),
    )
    return runs.filter(Q(created_at__lt=pivot) | Q(created_at=pivot, pk__lt=run_id))


@router.get(
    "/runs",
    response={200: RunPage, **READ},
    operation_id="durably_list_runs",
    url_name="list_runs",
    summary="List runs",
)
def list_runs(
    request: HttpRequest,
    filters: Query[RunFilter],
    cursor: QueryEx[
        str | None,
        P(max_length=MAX_CURSOR_LENGTH, description="next_cursor of the previous page."),
    ] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    include: QueryEx[Literal["lease"] | None, P(description=INCLUDE_HELP)] = None,
) -> Status[Any]:
    """Runs, newest first (ties broken by id), a page at a time: follow `next_cursor` until it is
    null. Filter by `job` and `status` (each repeatable: any of), `created_after` and
    `created_before`, and by labels with `label.<key>=<value>` (repeatable with different keys:
    all of them must match)."""
    try:
        access.require_permission(request, "view_run")
        labels = _label_filters(request)
        position = decode_cursor(cursor) if cursor else None
    except PermissionDenied as exc:
        return _failure(request, exc)
    except InvalidValue as exc:
        return _failure(request, exc, loc=("query",))
    runs = filters.filter(access.visible_runs(request))
    if labels:
        runs = runs.with_labels(labels)
    if position is not None:
        runs = _after(runs, *position)
    # A summary: input, output and error (up to DURABLY_MAX_*_BYTES each) stay in the database.
    page = list(runs.defer(*DETAIL_FIELDS).order_by("-created_at", "-pk")[: limit + 1])
    items = [_with_lease(run, include) for run in page[:limit]]
    next_cursor = encode_cursor(items[-1]) if len(page) > limit else None
    return Status(200, {"items": items, "next_cursor": next_cursor})


@router.get(
    "/runs/{run_id}",
    response={200: RunDetailOut, **RUN_READ},
    operation_id="durably_get_run",
    url_name="get_run",
    summary="Get a run",
)
def get_run(
    request: HttpRequest,
    run_id: RunId,
    include: QueryEx[Literal["lease"] | None, P(description=INCLUDE_HELP)] = None,
) -> Status[Any]:
    """One run with its input, output and error."""
    try:
        run = access.permitted_run(request, run_id, "view_run")
    except (DurablyError, PermissionDenied) as exc:
        return _failure(request, exc)
    return Status(200, _with_lease(run, include))


def _page(rows: QuerySet[Any], offset: int, limit: int) -> dict[str, Any]:
    """A limit/offset page with the total. (Not ninja's ``@paginate``: it cannot pass the typed
    404 of an unknown run through. Steps and log lines of one run are bounded, so an offset and a
    count are cheap here; the run list, which is not, pages by cursor.)"""
    return {"count": rows.count(), "items": list(rows[offset : offset + limit])}


@router.get(
    "/runs/{run_id}/steps",
    response={200: StepPage, **RUN_READ},
    operation_id="durably_list_steps",
    url_name="list_steps",
    summary="List a run's steps",
)
def list_steps(
    request: HttpRequest, run_id: RunId, limit: Limit = DEFAULT_PAGE_SIZE, offset: Offset = 0
) -> Status[Any]:
    """The run's step attempts in execution order: completed checkpoints, and failed or cancelled
    attempts."""
    try:
        run = access.permitted_run(request, run_id, "view_run")
    except (DurablyError, PermissionDenied) as exc:
        return _failure(request, exc)
    steps = Step.objects.using(db_alias()).filter(run_id=run.pk).order_by("index", "id")
    return Status(200, _page(steps, offset, limit))


@router.get(
    "/runs/{run_id}/logs",
    response={200: LogPage, **RUN_READ},
    operation_id="durably_list_logs",
    url_name="list_logs",
    summary="List a run's log lines",
)
def list_logs(
    request: HttpRequest,
    run_id: RunId,
    limit: Limit = DEFAULT_PAGE_SIZE,
    offset: Offset = 0,
    after: Annotated[
        int | None,
        Field(ge=0, le=2**63 - 1, description="Only lines with a greater id (for polling)."),
    ] = None,
) -> Status[Any]:
    """Lines the job logged with `step.log`, oldest first."""
    try:
        run = access.permitted_run(request, run_id, "view_run")
    except (DurablyError, PermissionDenied) as exc:
        return _failure(request, exc)
    logs = RunLog.objects.using(db_alias()).filter(run_id=run.pk).order_by("id")
    if after is not None:
        logs = logs.filter(id__gt=after)
    return Status(200, _page(logs, offset, limit))


# -- operator actions --------------------------------------------------------------------------


@router.post(
    "/runs/{run_id}/cancel",
    response={200: CancelOut, **RUN_WRITE},
    operation_id="durably_cancel_run",
    url_name="cancel_run",
    summary="Cancel a run",
)
def cancel(request: HttpRequest, run_id: RunId) -> Status[Any]:
    """Cancel a pending or running run. A worker running it stops at its next step boundary.
    Cancelling a cancelled run is a no-op (`cancelled: false`); a finished run gives 409."""
    try:
        run = access.permitted_run(request, run_id, "cancel_run")
        result = cancel_run(run.pk, actor=access.actor(request), source=SOURCE)
        stored = _fresh(run.pk)
    except (DurablyError, PermissionDenied) as exc:
        return _failure(request, exc)
    return Status(
        200, {"cancelled": result.cancelled, "from_status": result.from_status, "run": stored}
    )


@router.post(
    "/runs/{run_id}/resume",
    response={200: ResumeOut, **RUN_WRITE},
    operation_id="durably_resume_run",
    url_name="resume_run",
    summary="Resume a run",
)
def resume(request: HttpRequest, run_id: RunId) -> Status[Any]:
    """Put a failed or cancelled run back to pending on the same id; its completed steps are
    replayed, not run again. Any other status gives 409, as does another pending run holding
    the run's concurrency key."""
    try:
        run = access.permitted_run(request, run_id, "resume_run")
        result = resume_run(run.pk, actor=access.actor(request), source=SOURCE)
        stored = _fresh(run.pk)
    except (DurablyError, PermissionDenied) as exc:
        return _failure(request, exc)
    return Status(200, {"from_status": result.from_status, "run": stored})


@router.post(
    "/runs/{run_id}/retrigger",
    response={200: RetriggerOut, 201: RetriggerOut, **RUN_WRITE},
    operation_id="durably_retrigger_run",
    url_name="retrigger_run",
    summary="Retrigger a run",
)
def retrigger(
    request: HttpRequest,
    run_id: RunId,
    idempotency_key: HeaderEx[
        str | None,
        P(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_RETRIGGER_KEY_LENGTH,
            description=(
                "Makes a retry safe: a retrigger of the same run with a key already used "
                "returns the run the first one created (200) and creates nothing."
            ),
        ),
    ] = None,
) -> Status[Any]:
    """Create a new pending run with the same input, labels and concurrency key as a finished
    run (201), or, with an `Idempotency-Key` already used for this run, return the run that key
    created (200). A run that has not finished gives 409; a job that is no longer registered,
    404."""
    try:
        run = access.permitted_run(request, run_id, "retrigger_run")
        access.check_retrigger(request, run)
        new_run = retrigger_run(
            run.pk,
            actor=access.actor(request),
            source=SOURCE,
            idempotency_key=idempotency_key,
        )
        stored = _fresh(new_run.pk)
    except (DurablyError, PermissionDenied) as exc:
        return _failure(request, exc, loc=("run",))
    created = new_run.disposition == "created"
    return Status(201 if created else 200, {"retriggered_from": run.pk, "run": stored})


@router.delete(
    "/runs/{run_id}",
    response={204: None, **RUN_WRITE},
    operation_id="durably_delete_run",
    url_name="delete_run",
    summary="Delete a run",
)
def delete(request: HttpRequest, run_id: RunId) -> Status[Any]:
    """Delete a finished run with its steps and logs (204). A run that has not finished gives 409.
    The audit record of the deletion is kept."""
    try:
        run = access.permitted_run(request, run_id, "delete_run")
        delete_run(run.pk, actor=access.actor(request), source=SOURCE)
    except (DurablyError, PermissionDenied) as exc:
        return _failure(request, exc)
    return Status(204, None)


# -- GET /runs/{run_id}/events: the live event stream ------------------------------------------


@router.get(
    "/runs/{run_id}/events",
    response={200: None, 503: ErrorOut, **RUN_READ},
    operation_id="durably_run_events",
    url_name="run_events",
    summary="Stream a run's events",
    openapi_extra={
        "responses": {
            # The integer code, as ninja's own key: a "200" string would be a second, duplicate key.
            200: {
                "description": "Server-sent events: a snapshot, then each change, then end.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        }
    },
)
def run_events(request: HttpRequest, run_id: RunId) -> Any:
    """Server-sent events: a ``snapshot`` of the run, then ``status``, ``step``, ``progress`` and
    ``log`` events as workers in any process write them, then ``end`` when the run is finished.
    See ``django_durably.stream`` for the event shapes."""
    try:
        run = access.permitted_run(request, run_id, "view_run")
    except (DurablyError, PermissionDenied) as exc:
        return _failure(request, exc)
    return stream.open_event_stream(request, access.visible_runs(request), run.pk)
