"""The HTTP API: a django-ninja ``Router`` that a host mounts on its own ``NinjaAPI``.

    api.add_router("/durably/", "django_durably.api.router")

(or ``path("durably/", include("django_durably.urls"))`` for a ready-made API with its own docs).
Endpoints are thin: they check the caller (``access``) and call ``operations``. A router cannot
register exception handlers, so each endpoint answers django-durably's typed errors through
``responses.answers_errors``; every response code is declared with its schema (``responses``,
``schemas``). Requests pass ``guards`` before anything else; the run list pages by ``cursors``.

No ``from __future__ import annotations`` here: ninja reads these annotations at runtime.
"""

from typing import Annotated, Any, Literal
from uuid import UUID

from django.db.models.query import QuerySet
from django.http import HttpRequest
from django.urls import register_converter
from ninja import HeaderEx, P, PathEx, Query, QueryEx, Router, Status
from pydantic import Field

from django_durably import access, cursors, stream
from django_durably.database import db_alias
from django_durably.exceptions import InvalidQuery as InvalidQuery  # importable from here as before
from django_durably.exceptions import InvalidValue, RunNotFound
from django_durably.guards import guard_body
from django_durably.jobs import TriggerItem, get_job, registered_jobs
from django_durably.models import Run, RunAttempt, RunLog, Signal, Step
from django_durably.operations import (
    MAX_RETRIGGER_KEY_LENGTH,
    cancel_run,
    delete_run,
    resume_run,
    retrigger_run,
    trigger_runs,
)
from django_durably.responses import (
    READ,
    RUN_READ,
    RUN_WRITE,
    WRITE,
    answers_errors,
    error_response,
)
from django_durably.schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    NO_NUL,
    AttemptPage,
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
    SignalIn,
    SignalPage,
    SignalSentOut,
    StepPage,
    TriggerOut,
)
from django_durably.validation import MAX_STEP_NAME_LENGTH, check_label_filters
from django_durably.waits import send_signal

__all__ = ["router"]

SOURCE = "api"
"""What operator actions through the API record as their ``source``."""

DETAIL_FIELDS = ("input", "output", "error")

# exclude_unset: optional fields are omitted rather than null (the lease, unused error fields).
router = Router(auth=access.DurablyAuth(), tags=["durably"], exclude_unset=True)
router.add_decorator(guard_body, mode="view")  # before auth: see ``guards``


class JobNameConverter:
    """Job names in paths: any characters, ``/`` and newlines included (``path`` stops at a
    newline, and an unroutable name would get the host's HTML 404 instead of ours)."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(JobNameConverter, "durably_job_name")
register_converter(JobNameConverter, "durably_signal_name")  # the same: any characters

INCLUDE_HELP = "include=lease adds the worker-internal lease fields under `lease`."
RunId = Annotated[UUID, Field(description="The run's id.")]
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE, description="Page size.")]
Offset = Annotated[int, Field(ge=0, le=2**31 - 1, description="Items to skip.")]
Include = QueryEx[Literal["lease"] | None, P(description=INCLUDE_HELP)]
SignalName = PathEx[
    str,
    P(
        min_length=1,
        max_length=MAX_STEP_NAME_LENGTH,
        pattern=NO_NUL,
        description="The signal's name: what step.wait_for_signal() waits for.",
    ),
]


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


def _page(rows: QuerySet[Any], offset: int, limit: int) -> dict[str, Any]:
    """A limit/offset page with the total. (Not ninja's ``@paginate``: it cannot pass the typed
    404 of an unknown run through. Steps, attempts and log lines of one run are bounded, so an
    offset and a count are cheap here; the run list, which is not, pages by cursor.)"""
    return {"count": rows.count(), "items": list(rows[offset : offset + limit])}


def _attempt_page(run: Run, offset: int, limit: int) -> dict[str, Any]:
    """A :func:`_page` of the run's attempt history (``Run.attempt_history``): its stored rows,
    then the attempt that completed it, which has no row. That one is the last item, at the
    offset of the stored rows' count, so a page past the stored rows still finds it."""
    stored = RunAttempt.objects.using(db_alias()).filter(run_id=run.pk).order_by("number", "id")
    page = _page(stored, offset, limit)
    completed = run.completed_attempt()
    if completed is not None:
        if offset <= page["count"] < offset + limit:
            page["items"].append(completed)
        page["count"] += 1
    return page


# -- jobs --------------------------------------------------------------------------------------


@router.get(
    "/jobs",
    response={200: list[JobOut], **READ},
    operation_id="durably_list_jobs",
    url_name="list_jobs",
    summary="List registered jobs",
)
@answers_errors()
def list_jobs(request: HttpRequest) -> Status[Any]:
    """Every registered job, by name, with its queue, priority and input and output JSON schemas."""
    access.require_permission(request, "view_run")
    jobs = registered_jobs()
    return Status(200, [jobs[name] for name in sorted(jobs)])


@router.post(
    "/jobs/{durably_job_name:name}/runs",
    response={200: TriggerOut, 201: TriggerOut, 404: ErrorOut, 409: ErrorOut, **WRITE},
    operation_id="durably_trigger_run",
    url_name="trigger_run",
    summary="Trigger a run",
)
@answers_errors()
def trigger_run(
    request: HttpRequest,
    name: PathEx[str, P(min_length=1, description="The registered job name.")],
    payload: EnqueueIn,
) -> Status[Any]:
    """Create a pending run of the job (201), or return the existing run that an idempotency key
    or `coalesce=skip` resolves to (200); `disposition` says which."""
    access.require_permission(request, "add_run")
    job = get_job(name)
    # The scope adds its labels and namespaces the keys (EnqueueIn's fields are TriggerItem's).
    item = access.scoped_item(request, job.name, TriggerItem(**payload.model_dump()))
    (run,) = trigger_runs(job, [item])
    if run.disposition != "created" and not access.is_visible(request, run.pk):
        # The key resolved to a run of another scope: say nothing about it.
        key = "idempotency key" if run.disposition == "idempotent" else "concurrency key"
        detail = f"The {key} is taken by a run you cannot see."
        return Status(409, {"detail": detail, "code": "conflict"})
    stored = _fresh(run.pk)  # RunNotFound when deleted in the meantime
    setattr(stored, "disposition", run.disposition)  # noqa: B010 - a plain attribute on Run
    return Status(201 if run.disposition == "created" else 200, stored)


# -- runs --------------------------------------------------------------------------------------


@router.get(
    "/runs",
    response={200: RunPage, **READ},
    operation_id="durably_list_runs",
    url_name="list_runs",
    summary="List runs",
)
@answers_errors(invalid_at=("query",))
def list_runs(
    request: HttpRequest,
    filters: Query[RunFilter],
    cursor: QueryEx[
        str | None,
        P(max_length=cursors.MAX_CURSOR_LENGTH, description="next_cursor of the previous page."),
    ] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    include: Include = None,
) -> Status[Any]:
    """Runs, newest first (ties broken by id), a page at a time: follow `next_cursor` until it is
    null. Filter by `job` and `status` (each repeatable: any of), `retrying` (pending runs waiting
    for a retry, or every other run), `created_after` and `created_before`, and by labels with
    `label.<key>=<value>` (repeatable with different keys: all of them must match)."""
    access.require_permission(request, "view_run")
    labels = check_label_filters(request.GET.lists())
    after = cursors.decode_cursor(cursor) if cursor else None
    runs = filters.filter(access.visible_runs(request))
    if labels:
        runs = runs.with_labels(labels)
    # A summary: input, output and error (up to DURABLY_MAX_*_BYTES each) stay in the database.
    items, next_cursor = cursors.page(runs.defer(*DETAIL_FIELDS), after, limit)
    return Status(
        200, {"items": [_with_lease(run, include) for run in items], "next_cursor": next_cursor}
    )


@router.get(
    "/runs/{run_id}",
    response={200: RunDetailOut, **RUN_READ},
    operation_id="durably_get_run",
    url_name="get_run",
    summary="Get a run",
)
@answers_errors()
def get_run(request: HttpRequest, run_id: RunId, include: Include = None) -> Status[Any]:
    """One run with its input, output and error."""
    run = access.permitted_run(request, run_id, "view_run")
    return Status(200, _with_lease(run, include))


@router.get(
    "/runs/{run_id}/steps",
    response={200: StepPage, **RUN_READ},
    operation_id="durably_list_steps",
    url_name="list_steps",
    summary="List a run's steps",
)
@answers_errors()
def list_steps(
    request: HttpRequest, run_id: RunId, limit: Limit = DEFAULT_PAGE_SIZE, offset: Offset = 0
) -> Status[Any]:
    """The run's step attempts in execution order: completed checkpoints, and failed or cancelled
    attempts."""
    run = access.permitted_run(request, run_id, "view_run")
    steps = Step.objects.using(db_alias()).filter(run_id=run.pk).order_by("index", "id")
    return Status(200, _page(steps, offset, limit))


@router.get(
    "/runs/{run_id}/attempts",
    response={200: AttemptPage, **RUN_READ},
    operation_id="durably_list_attempts",
    url_name="list_attempts",
    summary="List a run's attempts",
)
@answers_errors()
def list_attempts(
    request: HttpRequest, run_id: RunId, limit: Limit = DEFAULT_PAGE_SIZE, offset: Offset = 0
) -> Status[Any]:
    """The run's attempt history, oldest first: each attempt's worker, times, outcome, error, and
    when the run was scheduled to be tried again after it. The attempt that completed a run is the
    last item (read from the run). The attempt in progress has no entry until it ends."""
    run = access.permitted_run(request, run_id, "view_run")
    return Status(200, _attempt_page(run, offset, limit))


@router.get(
    "/runs/{run_id}/logs",
    response={200: LogPage, **RUN_READ},
    operation_id="durably_list_logs",
    url_name="list_logs",
    summary="List a run's log lines",
)
@answers_errors()
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
    run = access.permitted_run(request, run_id, "view_run")
    logs = RunLog.objects.using(db_alias()).filter(run_id=run.pk).order_by("id")
    if after is not None:
        logs = logs.filter(id__gt=after)
    return Status(200, _page(logs, offset, limit))


@router.get(
    "/runs/{run_id}/signals",
    response={200: SignalPage, **RUN_READ},
    operation_id="durably_list_signals",
    url_name="list_signals",
    summary="List a run's signals",
)
@answers_errors()
def list_signals(
    request: HttpRequest,
    run_id: RunId,
    name: QueryEx[
        str | None,
        P(max_length=MAX_STEP_NAME_LENGTH, pattern=NO_NUL, description="Only this name."),
    ] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    offset: Offset = 0,
) -> Status[Any]:
    """Signals sent to the run, oldest first, with when a wait consumed each (null while none
    has)."""
    run = access.permitted_run(request, run_id, "view_run")
    signals = Signal.objects.using(db_alias()).filter(run_id=run.pk).order_by("id")
    if name is not None:
        signals = signals.filter(name=name)
    return Status(200, _page(signals, offset, limit))


# -- operator actions --------------------------------------------------------------------------


@router.post(
    "/runs/{run_id}/cancel",
    response={200: CancelOut, **RUN_WRITE},
    operation_id="durably_cancel_run",
    url_name="cancel_run",
    summary="Cancel a run",
)
@answers_errors()
def cancel(request: HttpRequest, run_id: RunId) -> Status[Any]:
    """Cancel a pending or running run. A worker running it stops at its next step boundary.
    Cancelling a cancelled run is a no-op (`cancelled: false`); a finished run gives 409."""
    run = access.permitted_run(request, run_id, "cancel_run")
    result = cancel_run(run.pk, actor=access.actor(request), source=SOURCE)
    body = {"cancelled": result.cancelled, "from_status": result.from_status}
    return Status(200, {**body, "run": _fresh(run.pk)})


@router.post(
    "/runs/{run_id}/resume",
    response={200: ResumeOut, **RUN_WRITE},
    operation_id="durably_resume_run",
    url_name="resume_run",
    summary="Resume a run",
)
@answers_errors()
def resume(request: HttpRequest, run_id: RunId) -> Status[Any]:
    """Put a failed or cancelled run back to pending on the same id; its completed steps are
    replayed, not run again. Any other status gives 409, as does another pending run holding
    the run's concurrency key."""
    run = access.permitted_run(request, run_id, "resume_run")
    result = resume_run(run.pk, actor=access.actor(request), source=SOURCE)
    return Status(200, {"from_status": result.from_status, "run": _fresh(run.pk)})


@router.post(
    "/runs/{run_id}/retrigger",
    response={200: RetriggerOut, 201: RetriggerOut, **RUN_WRITE},
    operation_id="durably_retrigger_run",
    url_name="retrigger_run",
    summary="Retrigger a run",
)
@answers_errors(invalid_at=("run",))
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
    run = access.permitted_run(request, run_id, "retrigger_run")
    access.check_retrigger(request, run)
    actor = access.actor(request)
    new_run = retrigger_run(run.pk, actor=actor, source=SOURCE, idempotency_key=idempotency_key)
    code = 201 if new_run.disposition == "created" else 200
    return Status(code, {"retriggered_from": run.pk, "run": _fresh(new_run.pk)})


@router.post(
    "/runs/{run_id}/signals/{durably_signal_name:name}",
    response={200: SignalSentOut, 201: SignalSentOut, **RUN_WRITE},
    operation_id="durably_send_signal",
    url_name="send_signal",
    summary="Send a signal to a run",
)
@answers_errors()
def send(
    request: HttpRequest, run_id: RunId, name: SignalName, signal: SignalIn | None = None
) -> Status[Any]:
    """Store a signal for the run (201) and wake the run if it waits for one of this name; a wait
    that comes later takes it then. With an `idempotency_key` already used for this run, nothing
    new is stored and the first signal is returned (200). A finished run gives 409
    (`run_not_waiting`)."""
    run = access.permitted_run(request, run_id, "signal_run")
    try:
        result = send_signal(
            run.pk,
            name,
            None if signal is None else signal.payload,
            idempotency_key=None if signal is None else signal.idempotency_key,
            actor=access.actor(request),
            source=SOURCE,
        )
    except InvalidValue as exc:  # the name is in the path, the rest in the body
        where = ("path",) if exc.field == "name" else ("body", "signal")
        return error_response(request, exc, invalid_at=where)
    return Status(201 if result.created else 200, result)


@router.delete(
    "/runs/{run_id}",
    response={204: None, **RUN_WRITE},
    operation_id="durably_delete_run",
    url_name="delete_run",
    summary="Delete a run",
)
@answers_errors()
def delete(request: HttpRequest, run_id: RunId) -> Status[Any]:
    """Delete a finished run with its steps and logs (204). A run that has not finished gives 409.
    The audit record of the deletion is kept."""
    run = access.permitted_run(request, run_id, "delete_run")
    delete_run(run.pk, actor=access.actor(request), source=SOURCE)
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
@answers_errors()
def run_events(request: HttpRequest, run_id: RunId) -> Any:
    """Server-sent events: a ``snapshot`` of the run, then ``status``, ``step``, ``progress`` and
    ``log`` events as workers in any process write them, then ``end`` when the run is finished.
    See ``django_durably.stream`` for the event shapes."""
    run = access.permitted_run(request, run_id, "view_run")
    return stream.open_event_stream(request, access.visible_runs(request), run.pk)
