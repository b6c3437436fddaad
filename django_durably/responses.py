"""The HTTP API's error responses: the codes its endpoints declare, and how django-durably's typed
errors become them.

A ninja ``Router`` cannot register exception handlers, so each endpoint of ``api`` is decorated
with :func:`answers_errors`, which answers

* ``PermissionDenied`` with 403 (``permission_denied``),
* :class:`RunNotFound` and :class:`JobNotFound` with 404,
* a :class:`RunStateError` (the run's status forbids the action) and :class:`PendingRunExists`
  (a concurrency key is taken) with 409, carrying the run's status,
* an :class:`InvalidValue` (an invalid trigger or query) with 422 in ninja's own format, located
  where the value came from,

and lets anything else propagate. Every code an endpoint can answer with is declared once, here
(:data:`READ`, :data:`RUN_READ`, :data:`WRITE`, :data:`RUN_WRITE`), with its schema.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from ninja import Status

from django_durably import access
from django_durably.exceptions import (
    DurablyError,
    InvalidValue,
    JobNotFound,
    PendingRunExists,
    RunNotCancellable,
    RunNotDeletable,
    RunNotFound,
    RunNotResumable,
    RunNotRetriggerable,
    RunNotWaiting,
    RunStateError,
)
from django_durably.schemas import ErrorOut, ValidationErrorOut

__all__ = ["PAYLOAD", "READ", "RUN_READ", "RUN_WRITE", "WRITE", "answers_errors", "error_response"]

P = ParamSpec("P")
T = TypeVar("T")

# Every response code an endpoint can return, with its schema. 401 (no or bad credentials) and 403
# (a failed CSRF check) come from ninja's auth; 422 also covers ninja's own parameter validation.
READ: dict[int, Any] = {401: ErrorOut, 403: ErrorOut, 422: ValidationErrorOut}
RUN_READ: dict[int, Any] = {**READ, 404: ErrorOut}
WRITE: dict[int, Any] = {**READ, 400: ErrorOut, 413: ErrorOut}
RUN_WRITE: dict[int, Any] = {**WRITE, 404: ErrorOut, 409: ErrorOut}

PAYLOAD = ("body", "payload")
"""Where an invalid value of a trigger request's body is (``loc`` of a 422)."""

_STATE_CODES: dict[type[RunStateError], str] = {
    RunNotCancellable: "run_not_cancellable",
    RunNotResumable: "run_not_resumable",
    RunNotRetriggerable: "run_not_retriggerable",
    RunNotDeletable: "run_not_deletable",
    RunNotWaiting: "run_not_waiting",
}


def answers_errors(
    *, invalid_at: tuple[str, ...] = PAYLOAD
) -> Callable[
    [Callable[Concatenate[HttpRequest, P], T]],
    Callable[Concatenate[HttpRequest, P], T | Status[Any]],
]:
    """Answer the endpoint's typed errors with :func:`error_response`; an invalid value's ``loc``
    starts with ``invalid_at`` (the request's body by default)."""

    def decorate(
        view: Callable[Concatenate[HttpRequest, P], T],
    ) -> Callable[Concatenate[HttpRequest, P], T | Status[Any]]:
        @functools.wraps(view)
        def answered(request: HttpRequest, /, *args: P.args, **kwargs: P.kwargs) -> T | Status[Any]:
            try:
                return view(request, *args, **kwargs)
            except (DurablyError, PermissionDenied) as exc:
                return error_response(request, exc, invalid_at=invalid_at)

        return answered

    return decorate


def error_response(
    request: HttpRequest, exc: Exception, *, invalid_at: tuple[str, ...] = PAYLOAD
) -> Status[Any]:
    """The response for one of our typed errors (anything else is raised again)."""
    if isinstance(exc, PermissionDenied):
        detail = str(exc) or "You do not have permission to do this."
        return Status(403, {"detail": detail, "code": "permission_denied"})
    if isinstance(exc, RunNotFound):
        return Status(
            404, {"detail": f"No run exists with id {exc.run_id}.", "code": "run_not_found"}
        )
    if isinstance(exc, JobNotFound):
        detail = f"No job is registered under the name {exc.job_name!r}."
        return Status(404, {"detail": detail, "code": "job_not_found"})
    if isinstance(exc, RunStateError):
        code = _STATE_CODES.get(type(exc), "conflict")
        return Status(
            409, {"detail": str(exc), "code": code, "status": exc.status, "run_id": exc.run_id}
        )
    if isinstance(exc, PendingRunExists):
        return Status(409, _pending_run_exists(request, exc))
    if isinstance(exc, InvalidValue):
        return Status(422, {"detail": _field_errors(exc, invalid_at)})
    raise exc


def _pending_run_exists(request: HttpRequest, exc: PendingRunExists) -> dict[str, Any]:
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
    return body


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
