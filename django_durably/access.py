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

import dataclasses
import functools
import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.utils.module_loading import import_string
from ninja.errors import HttpError
from ninja.security.session import SessionAuthIsStaff
from ninja.utils import check_csrf

from django_durably.conf import durably_settings
from django_durably.database import db_alias
from django_durably.exceptions import InvalidTrigger, RunNotFound
from django_durably.jobs import TriggerItem
from django_durably.models import Run, RunQuerySet
from django_durably.validation import LABEL_KEY_PATTERN, MAX_KEY_LENGTH, check_key, run_pk

__all__ = [
    "DurablyAuth",
    "LabelScope",
    "RunScope",
    "StaffSessionAuth",
    "TriggerRequest",
    "actor",
    "api_auth",
    "api_scope",
    "check_retrigger",
    "check_trigger",
    "docs_auth",
    "key_namespace",
    "get_visible_run",
    "is_visible",
    "permitted_run",
    "principal",
    "require_permission",
    "scope_trigger",
    "scoped_item",
    "visible_runs",
]

AuthCallable = Callable[[HttpRequest], Any]


@dataclass(frozen=True, kw_only=True)
class TriggerRequest:
    """A trigger as a :class:`RunScope` sees it, before the run is created: the job, the labels and
    the keys the caller chose (``None`` when it chose none).

    For a retrigger, ``retrigger_of`` is the original run's id and the keys are the original's, as
    stored (already namespaced when it was triggered); a scope should leave them as they are.
    """

    job_name: str
    labels: dict[str, str]
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    retrigger_of: UUID | None = None


class RunScope(Protocol):
    """What ``DURABLY_API_SCOPE`` provides: per-request limits on runs and triggers.

    A scope implements :meth:`runs` and :meth:`scope_trigger`. Scopes written before
    ``scope_trigger`` existed implement ``check_trigger(request, job_name, labels)`` instead; they
    still work, but the keys their callers choose are not namespaced (deprecated: a warning says
    so when the scope is loaded).
    """

    def runs(self, request: HttpRequest, queryset: RunQuerySet) -> RunQuerySet:
        """The runs this caller may see and act on: ``queryset`` narrowed (never widened)."""
        ...

    def scope_trigger(self, request: HttpRequest, trigger: TriggerRequest) -> TriggerRequest:
        """Refuse a trigger by raising ``PermissionDenied``, or return it as the run will be
        created: usually with the caller's own labels added (so that it can see the run) and its
        keys moved into the caller's namespace (so that no other caller can take them first)."""
        ...


class LabelScope:
    """A :class:`RunScope` confining each caller to the runs carrying its labels.

    Subclass it and implement :meth:`labels_for`. A caller sees only runs that carry every label
    ``labels_for`` returns, and each run it triggers gets those labels (a trigger asking for another
    value of one of them is refused with 403). The idempotency and concurrency keys it chooses are
    prefixed with :meth:`key_prefix`, so two callers with different labels never share a key.
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
        """The labels of a run this caller triggers (``PermissionDenied`` to refuse). Override it
        to refuse more; :meth:`scope_trigger` calls it."""
        required = self.labels_for(request)
        if required is None:
            raise PermissionDenied("You may not trigger runs.")
        for key, value in required.items():
            if labels.get(key, value) != value:
                raise PermissionDenied(f"Runs you trigger must have the label {key}={value}.")
        return {**labels, **required}

    def key_prefix(self, request: HttpRequest) -> str:
        """What this caller's keys start with: :func:`key_namespace` of its labels."""
        return key_namespace(self.labels_for(request) or {})

    def scope_trigger(self, request: HttpRequest, trigger: TriggerRequest) -> TriggerRequest:
        labels = self.check_trigger(request, trigger.job_name, dict(trigger.labels))
        if trigger.retrigger_of is not None:  # the original's keys, namespaced when it was made
            return dataclasses.replace(trigger, labels=labels)
        prefix = self.key_prefix(request)
        return dataclasses.replace(
            trigger,
            labels=labels,
            idempotency_key=namespaced_key(prefix, trigger.idempotency_key, "idempotency_key"),
            concurrency_key=namespaced_key(prefix, trigger.concurrency_key, "concurrency_key"),
        )


KEY_DIGEST_PREFIX = "~"


def key_namespace(labels: dict[str, str]) -> str:
    """The key prefix of the callers confined to ``labels``: ``""`` for none (unconfined callers
    choose whole keys), ``"tenant=acme:"`` for ``{"tenant": "acme"}`` (labels sorted, joined with
    ``,``), or ``"~<digest>:"`` when a value holds characters outside ``[A-Za-z0-9._/-]`` or the
    prefix would be long.

    Prefixes are unambiguous: ``=``, ``,``, ``:`` and ``~`` occur in no label key nor readable
    value, so the first ``:`` of a key ends its prefix, and no two label sets share one.
    """
    if not labels:
        return ""
    readable = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
    if len(readable) <= 64 and all(LABEL_KEY_PATTERN.fullmatch(v) for v in labels.values()):
        return f"{readable}:"
    digest = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:32]
    return f"{KEY_DIGEST_PREFIX}{digest}:"


def namespaced_key(prefix: str, key: str | None, field: str) -> str | None:
    """``key`` in the namespace ``prefix`` (checked first as a trigger checks it: a reserved prefix
    such as ``retrigger:`` is refused), or ``None``."""
    if key is None:
        return None
    check_key(key, field)
    if len(prefix) + len(key) > MAX_KEY_LENGTH:
        raise InvalidTrigger(
            f"{field} may be at most {MAX_KEY_LENGTH - len(prefix)} characters: your keys are "
            f"stored with the prefix {prefix!r} of your scope.",
            field=field,
        )
    return prefix + key


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
    if not callable(getattr(scope, "runs", None)):
        raise ImproperlyConfigured(
            f"DURABLY_API_SCOPE must provide runs(request, queryset) and "
            f"scope_trigger(request, trigger); {scope!r} has no runs()."
        )
    if not callable(getattr(scope, "scope_trigger", None)):
        if not callable(getattr(scope, "check_trigger", None)):
            raise ImproperlyConfigured(
                f"DURABLY_API_SCOPE must provide runs(request, queryset) and "
                f"scope_trigger(request, trigger); {scope!r} has no scope_trigger()."
            )
        return _legacy_scope(scope)
    loaded: RunScope = scope
    return loaded


class _LegacyScope:
    """A scope with only the old ``check_trigger(request, job_name, labels)``: its labels apply,
    and the keys pass as the caller chose them (not namespaced)."""

    def __init__(self, scope: Any) -> None:
        self.scope = scope

    def runs(self, request: HttpRequest, queryset: RunQuerySet) -> RunQuerySet:
        narrowed: RunQuerySet = self.scope.runs(request, queryset)
        return narrowed

    def scope_trigger(self, request: HttpRequest, trigger: TriggerRequest) -> TriggerRequest:
        labels = self.scope.check_trigger(request, trigger.job_name, dict(trigger.labels))
        return dataclasses.replace(trigger, labels=labels)


@functools.lru_cache(maxsize=32)
def _legacy_wrapper(scope: Any) -> _LegacyScope:
    warnings.warn(
        f"DURABLY_API_SCOPE {scope!r} has check_trigger() but no scope_trigger(): keys its callers "
        "choose are not namespaced, so one caller can take another's idempotency or concurrency "
        "keys. Implement scope_trigger(request, trigger) (LabelScope does). check_trigger() "
        "scopes are deprecated.",
        DeprecationWarning,
        stacklevel=4,
    )
    return _LegacyScope(scope)


def _legacy_scope(scope: Any) -> _LegacyScope:
    try:
        return _legacy_wrapper(scope)
    except TypeError:  # unhashable
        return _LegacyScope(scope)


# -- auth --------------------------------------------------------------------------------------

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class StaffSessionAuth(SessionAuthIsStaff):
    """Staff (or superuser) session auth. A request without a staff session gets 401 whatever its
    method; a staff session's unsafe request must then pass the CSRF check (403 otherwise).

    (django-ninja's ``SessionAuthIsStaff`` checks CSRF first, so an anonymous ``POST`` got 403.)
    """

    def __call__(self, request: HttpRequest) -> Any:
        user = getattr(request, "user", None)
        if not (
            user is not None
            and user.is_authenticated
            and (getattr(user, "is_staff", False) or getattr(user, "is_superuser", False))
        ):
            return None
        return super().__call__(request)  # checks CSRF, then returns the user


DEFAULT_AUTH = StaffSessionAuth()
"""Staff (or superuser) session auth; CSRF is checked for unsafe methods."""


class DurablyAuth:
    """The router's auth: runs the auth ``DURABLY_API_AUTH`` names, looked up on each request.

    The first configured auth returning a truthy value admits the request (ninja then sets
    ``request.auth`` to that value); when none does, ninja answers 401. Configured auths must be
    synchronous.

    What the admitting auth returned is who the caller is (:func:`principal`): the session's user
    counts only when that auth returned it, and then an unsafe request must pass the CSRF check
    whichever auth admitted it (a cookie is sent by any site's form).
    """

    def __call__(self, request: HttpRequest) -> Any:
        for callback in api_auth():
            result = callback(request)
            if result:
                if _is_session_user(request, result):
                    require_csrf(request)
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


def docs_auth(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """A ``docs_decorator`` for a ``NinjaAPI``: its ``openapi.json`` and docs page answer 401 to
    callers the API's auth does not admit, unless ``DURABLY_API_DOCS_PUBLIC`` is true."""

    @functools.wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not durably_settings.API_DOCS_PUBLIC and not DurablyAuth()(request):
            return JsonResponse({"detail": "Unauthorized"}, status=401)
        return view(request, *args, **kwargs)

    return guarded


# -- permissions and actors --------------------------------------------------------------------


def principal(request: HttpRequest) -> Any:
    """The user acting: the user object the admitting auth returned (anything with
    ``is_authenticated`` and ``has_perm``), else ``None`` (an auth that identifies no user, such as
    an API key). Never the session's user unless the auth returned it.

    Also makes ``request.user`` that user (an ``AnonymousUser`` for ``None``), once per request, so
    that scopes reading ``request.user`` see the same caller.
    """
    auth = getattr(request, "auth", None)
    who = (
        auth
        if getattr(auth, "is_authenticated", False) is True
        and callable(getattr(auth, "has_perm", None))
        else None
    )
    if not getattr(request, "_durably_identified", False) and hasattr(request, "auth"):
        request.user = who if who is not None else AnonymousUser()
        request._durably_identified = True  # type: ignore[attr-defined]
    return who


def _is_session_user(request: HttpRequest, result: Any) -> bool:
    """Whether an auth admitted the request as the user of its session cookie."""
    user = getattr(request, "user", None)
    if user is None or getattr(user, "is_authenticated", False) is not True:
        return False
    if result is user:
        return True
    return type(result) is type(user) and getattr(result, "pk", None) == user.pk


def require_csrf(request: HttpRequest) -> None:
    """Raise ninja's 403 ``CSRF check Failed`` when an unsafe request fails Django's CSRF check."""
    if request.method in UNSAFE_METHODS and not getattr(request, "_ninja_csrf_exempt", False):
        if check_csrf(request) is not None:
            raise HttpError(403, "CSRF check Failed")


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
    principal(request)  # request.user is the caller before a scope reads it
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


def scope_trigger(request: HttpRequest, trigger: TriggerRequest) -> TriggerRequest:
    """The trigger as the run will be created after the scope's check (``PermissionDenied``):
    labels added and keys namespaced by the scope. Without a scope, the keys are still checked
    (a reserved prefix such as ``retrigger:`` is refused)."""
    principal(request)
    scope = api_scope()
    if scope is None:
        if trigger.retrigger_of is None:
            namespaced_key("", trigger.idempotency_key, "idempotency_key")
            namespaced_key("", trigger.concurrency_key, "concurrency_key")
        return trigger
    return scope.scope_trigger(request, trigger)


def scoped_item(request: HttpRequest, job_name: str, item: TriggerItem) -> TriggerItem:
    """``item`` with the labels and keys :func:`scope_trigger` gives it."""
    scoped = scope_trigger(
        request,
        TriggerRequest(
            job_name=job_name,
            labels=dict(item.labels or {}),
            idempotency_key=item.idempotency_key,
            concurrency_key=item.concurrency_key,
        ),
    )
    return dataclasses.replace(
        item,
        labels=scoped.labels,
        idempotency_key=scoped.idempotency_key,
        concurrency_key=scoped.concurrency_key,
    )


def check_retrigger(request: HttpRequest, run: Run) -> None:
    """Refuse (``PermissionDenied``) a retrigger of ``run`` that the scope would refuse as a
    trigger; the new run gets the original's labels and keys, as ``retrigger_run`` copies them."""
    scope_trigger(
        request,
        TriggerRequest(
            job_name=run.job_name,
            labels=dict(run.labels),
            concurrency_key=run.concurrency_key,
            retrigger_of=run.pk,
        ),
    )


def check_trigger(request: HttpRequest, job_name: str, labels: dict[str, str]) -> dict[str, str]:
    """The labels a triggered run gets, after the scope's check (``PermissionDenied``).

    Kept for callers of earlier versions; :func:`scope_trigger` also sees and namespaces the keys.
    """
    return scope_trigger(request, TriggerRequest(job_name=job_name, labels=dict(labels))).labels
