"""Who may use the HTTP API, what each caller may do, and which runs each caller sees.

* **Auth**: :class:`DurablyAuth` is the router's ninja auth. On each request it runs the auth named by
  ``DURABLY_API_AUTH`` (staff-only session auth with CSRF checks when unset).
* **Permissions**: :func:`require_permission` checks the ``durably.*`` Django permission of the
  caller's user (``request.user`` when authenticated, else a user object returned by the auth).
  A custom auth that identifies no user has already decided: its callers may do everything.
* **Scoping**: ``DURABLY_API_SCOPE`` names a :class:`RunScope` that narrows the runs each caller
  sees (:func:`visible_runs`) and checks what it triggers (:func:`check_trigger`).
  :class:`LabelScope` is a ready-made one for multi-tenant hosts.

``api`` and the event stream use these; nothing here changes a run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol
from uuid import UUID

from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpRequest
from django.utils.module_loading import import_string
from ninja.security.session import SessionAuthIsStaff

from django_durably.conf import durably_settings
from django_durably.exceptions import RunNotFound
from django_durably.leases import db_alias
from django_durably.models import Run, RunQuerySet
from django_durably.triggering import run_pk

__all__ = [
    "DurablyAuth",
    "LabelScope",
    "RunScope",
    "actor",
    "api_auth",
    "api_scope",
    "check_trigger",
    "get_visible_run",
    "is_visible",
    "permitted_run",
    "principal",
    "require_permission",
    "visible_runs",
]

AuthCallable = Callable[[HttpRequest], Any]


class RunScope(Protocol):
    """What ``DURABLY_API_SCOPE`` provides: per-request limits on runs and triggers."""

    def runs(self, request: HttpRequest, queryset: RunQuerySet) -> RunQuerySet:
        """The runs this caller may see and act on: ``queryset`` narrowed (never widened)."""
        ...

    def check_trigger(
        self, request: HttpRequest, job_name: str, labels: dict[str, str]
    ) -> dict[str, str]:
        """Refuse a trigger by raising ``PermissionDenied``, or return the labels the new run
        gets (usually ``labels`` plus the caller's own, so that it can see the run)."""
        ...


class LabelScope:
    """A :class:`RunScope` confining each caller to the runs carrying its labels.

    Subclass it and implement :meth:`labels_for`. A caller sees only runs that carry every label
    ``labels_for`` returns, and each run it triggers gets those labels (a trigger asking for another
    value of one of them is refused with 403).
    """

    def labels_for(self, request: HttpRequest) -> dict[str, str] | None:
        """The labels this caller's runs carry: ``{}`` for every run, ``None`` for no access."""
        raise NotImplementedError("LabelScope subclasses implement labels_for(request)")

    def runs(self, request: HttpRequest, queryset: RunQuerySet) -> RunQuerySet:
        labels = self.labels_for(request)
        if labels is None:
            return queryset.none()
        return queryset.with_labels(labels)

    def check_trigger(
        self, request: HttpRequest, job_name: str, labels: dict[str, str]
    ) -> dict[str, str]:
        required = self.labels_for(request)
        if required is None:
            raise PermissionDenied("You may not trigger runs.")
        for key, value in required.items():
            if labels.get(key, value) != value:
                raise PermissionDenied(f"Runs you trigger must have the label {key}={value}.")
        return {**labels, **required}


# -- loading the settings ----------------------------------------------------------------------


def _load(value: Any, setting: str) -> Any:
    """A setting's object: a dotted path is imported and a class is instantiated."""
    try:
        return _load_cached(value, setting)
    except TypeError as exc:  # an unhashable object: load it uncached
        if "unhashable" not in str(exc):
            raise
        return _instantiate(value, setting)


@functools.lru_cache(maxsize=32)
def _load_cached(value: Any, setting: str) -> Any:
    return _instantiate(value, setting)


def _instantiate(value: Any, setting: str) -> Any:
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"DURABLY_{setting} names {value!r}, which cannot be imported: {exc}"
            ) from exc
    if isinstance(value, type):
        try:
            value = value()
        except Exception as exc:
            raise ImproperlyConfigured(
                f"DURABLY_{setting} names the class {value.__qualname__}, which cannot be "
                f"instantiated without arguments: {exc!r}"
            ) from exc
    return value


def api_auth() -> tuple[AuthCallable, ...]:
    """The auth callables ``DURABLY_API_AUTH`` names, in order (the first that admits wins)."""
    configured = durably_settings.API_AUTH
    if configured is None:
        return (DEFAULT_AUTH,)
    items = configured if isinstance(configured, list | tuple) else [configured]
    if not items:
        raise ImproperlyConfigured("DURABLY_API_AUTH is an empty list; no request could pass.")
    callbacks = tuple(_load(item, "API_AUTH") for item in items)
    for callback in callbacks:
        if not callable(callback):
            raise ImproperlyConfigured(
                f"DURABLY_API_AUTH must name ninja auth objects (callables of the request), "
                f"got {callback!r}."
            )
    return callbacks


def api_scope() -> RunScope | None:
    """The :class:`RunScope` that ``DURABLY_API_SCOPE`` names, or ``None``."""
    configured = durably_settings.API_SCOPE
    if configured is None:
        return None
    scope = _load(configured, "API_SCOPE")
    for method in ("runs", "check_trigger"):
        if not callable(getattr(scope, method, None)):
            raise ImproperlyConfigured(
                f"DURABLY_API_SCOPE must provide runs(request, queryset) and "
                f"check_trigger(request, job_name, labels); {scope!r} has no {method}()."
            )
    loaded: RunScope = scope
    return loaded


# -- auth --------------------------------------------------------------------------------------

DEFAULT_AUTH = SessionAuthIsStaff()
"""Staff (or superuser) session auth; CSRF is checked for unsafe methods."""


class DurablyAuth:
    """The router's auth: runs the auth ``DURABLY_API_AUTH`` names, looked up on each request.

    The first configured auth returning a truthy value admits the request (ninja then sets
    ``request.auth`` to that value); when none does, ninja answers 401. Configured auths must be
    synchronous.
    """

    def __call__(self, request: HttpRequest) -> Any:
        for callback in api_auth():
            result = callback(request)
            if result:
                return result
        return None

    @property
    def openapi_security_schema(self) -> dict[str, Any]:
        """The OpenAPI security scheme of the first configured auth that declares one."""
        for callback in api_auth():
            schema = getattr(callback, "openapi_security_schema", None)
            if schema:
                return dict(schema)
        # No scheme to document: ninja checks with hasattr(), which is False for this.
        raise AttributeError("openapi_security_schema")


# -- permissions and actors --------------------------------------------------------------------


def principal(request: HttpRequest) -> Any:
    """The user acting: ``request.user`` when authenticated, else a user object returned by a
    custom auth (anything with ``is_authenticated`` and ``has_perm``), else ``None``."""
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return user
    auth = getattr(request, "auth", None)
    if getattr(auth, "is_authenticated", False) is True and callable(
        getattr(auth, "has_perm", None)
    ):
        return auth
    return None


def require_permission(request: HttpRequest, codename: str) -> None:
    """Raise ``PermissionDenied`` unless the caller holds ``durably.<codename>``.

    Callers admitted by a custom auth that identifies no user (an API key, say) pass: the auth
    already decided what they may do.
    """
    who = principal(request)
    if who is not None and not who.has_perm(f"durably.{codename}"):
        raise PermissionDenied(f"You need the permission durably.{codename}.")


def actor(request: HttpRequest) -> Any:
    """What operator actions record as their actor (see :func:`principal`)."""
    return principal(request)


# -- scoping -----------------------------------------------------------------------------------


def visible_runs(request: HttpRequest) -> RunQuerySet:
    """The runs this caller may see and act on."""
    runs = Run.objects.using(db_alias()).all()
    scope = api_scope()
    return runs if scope is None else scope.runs(request, runs)


def get_visible_run(request: HttpRequest, run_id: UUID | str) -> Run:
    """A run this caller may see, or :class:`RunNotFound` (also for runs of other scopes and for
    ids that are not UUIDs)."""
    run = visible_runs(request).filter(pk=run_pk(run_id)).first()
    if run is None:
        raise RunNotFound(run_id)
    return run


def permitted_run(request: HttpRequest, run_id: UUID | str, codename: str) -> Run:
    """The checks of every endpoint on one run, in order: the permission ``durably.<codename>``
    (``PermissionDenied``), then the run's visibility (:class:`RunNotFound`)."""
    require_permission(request, codename)
    return get_visible_run(request, run_id)


def is_visible(request: HttpRequest, run_id: UUID) -> bool:
    return visible_runs(request).filter(pk=run_id).exists()


def check_trigger(request: HttpRequest, job_name: str, labels: dict[str, str]) -> dict[str, str]:
    """The labels a triggered run gets, after the scope's check (``PermissionDenied``)."""
    scope = api_scope()
    if scope is None:
        return labels
    return scope.check_trigger(request, job_name, dict(labels))
