"""Request guards of the HTTP API that run before authentication and before ninja parses anything.

* :func:`body_refusal`: a body that is too large (413), too deep (422), whose ``Content-Length``
  is not a number (400), or a form body Django cannot parse (400: say, ``multipart/form-data``
  without a boundary, which the CSRF check would otherwise parse into a 500) is refused without
  being read into memory or reaching the JSON parser.

Refusals are JSON, like every other answer of the API. ``api`` installs :func:`guard_body` on the
router as a view decorator.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.http.multipartparser import MultiPartParserError

from django_durably.conf import durably_settings

__all__ = ["body_refusal", "guard_body", "json_depth_exceeds"]

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Bodies Django parses into ``request.POST``, which the CSRF check reads before any view runs.
_FORM_TYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether ``body`` nests arrays and objects deeper than ``limit``, judged without parsing it
    (a deep enough document makes Python's JSON parser raise ``RecursionError``)."""
    depth = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub(b"", body)):
        if bracket.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def declared_length(request: HttpRequest) -> int | None:
    """The request's ``Content-Length`` (0 when absent), or ``None`` when it is not a non-negative
    integer (Django's ``request.body`` would raise ``ValueError`` on it: a 500)."""
    raw = request.META.get("CONTENT_LENGTH") or "0"
    if not (isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdigit()):
        return None
    return int(raw)


def body_refusal(request: HttpRequest) -> JsonResponse | None:
    """A response refusing the request's body (a bad ``Content-Length``, too large, too deep), or
    ``None``."""
    declared = declared_length(request)
    if declared is None:
        # Any method: Django reads the header whenever something touches request.body or POST.
        return JsonResponse(
            {
                "detail": "The Content-Length header must be a non-negative integer.",
                "code": "bad_content_length",
            },
            status=400,
        )
    if request.method not in _BODY_METHODS:
        return None
    limit = durably_settings.API_MAX_BODY_BYTES
    if declared > limit:
        return _too_large(limit)
    try:
        body = request.body
    except RequestDataTooBig:  # over Django's DATA_UPLOAD_MAX_MEMORY_SIZE
        return _too_large(limit)
    if len(body) > limit:
        return _too_large(limit)
    if request.content_type in _FORM_TYPES:
        try:
            request.POST  # noqa: B018 - parsed now, so a malformed form is a 400, not a 500 later
        except MultiPartParserError as exc:
            return JsonResponse(
                {"detail": f"The form body cannot be parsed: {exc}", "code": "bad_form_body"},
                status=400,
            )
    depth = durably_settings.API_MAX_JSON_DEPTH
    if body and json_depth_exceeds(body, depth):
        return JsonResponse(
            {
                "detail": [
                    {
                        "type": "json_too_deep",
                        "loc": ["body"],
                        "msg": f"JSON nested deeper than {depth} levels is refused.",
                    }
                ]
            },
            status=422,
        )
    return None


def _too_large(limit: int) -> JsonResponse:
    return JsonResponse(
        {"detail": f"The request body is larger than {limit} bytes.", "code": "payload_too_large"},
        status=413,
    )


def guard_body(run: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """A ninja view decorator answering :func:`body_refusal`'s refusals before the view runs."""

    @functools.wraps(run)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        refusal = body_refusal(request)
        if refusal is not None:
            return refusal
        return run(request, *args, **kwargs)

    return guarded
