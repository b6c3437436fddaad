"""``django_durably.access``: loading the auth and scope settings, principals and permissions, and
looking runs up through the caller's scope."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.test import RequestFactory

from django_durably import access
from django_durably.exceptions import RunNotFound
from tests import api_hooks, jobs

pytestmark = pytest.mark.django_db(databases="__all__")


SESSION = object()


def request(user: Any = None, auth: Any = SESSION, **meta: Any) -> Any:
    """A request with a session user; admitted by the session auth (``auth`` is that user) unless
    ``auth`` says what another auth returned."""
    made = RequestFactory().get("/", **meta)
    made.user = user or AnonymousUser()
    made.auth = user if auth is SESSION else auth  # type: ignore[attr-defined]  # set by ninja
    return made


def test_api_auth__defaults_to_staff_session_auth():
    assert access.api_auth() == (access.DEFAULT_AUTH,)


def test_api_auth__loads_paths_classes_and_objects_once(settings):
    key = api_hooks.ApiKey()
    settings.DURABLY_API_AUTH = ["tests.api_hooks.ApiKey", api_hooks.UserToken, key]

    first = access.api_auth()

    assert [type(auth) for auth in first] == [
        api_hooks.ApiKey,
        api_hooks.UserToken,
        api_hooks.ApiKey,
    ]
    assert first[2] is key
    assert access.api_auth() == first  # cached: the same objects on every request


def test_api_auth__bad_values_raise_improperly_configured(settings):
    settings.DURABLY_API_AUTH = "tests.api_hooks.nothing_here"
    with pytest.raises(ImproperlyConfigured, match="cannot be imported"):
        access.api_auth()


def test_durably_auth__first_admitting_auth_wins(settings):
    settings.DURABLY_API_AUTH = ["tests.api_hooks.trusted_network", "tests.api_hooks.ApiKey"]
    auth = access.DurablyAuth()

    assert auth(request(REMOTE_ADDR="10.0.0.1")) is True
    assert auth(request(HTTP_X_API_KEY=api_hooks.API_KEY)) is True
    assert auth(request()) is None


def test_durably_auth__documents_the_first_scheme_it_can(settings):
    settings.DURABLY_API_AUTH = ["tests.api_hooks.trusted_network", "tests.api_hooks.ApiKey"]

    assert access.DurablyAuth().openapi_security_schema == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }


def test_durably_auth__without_any_scheme_documents_none(settings):
    settings.DURABLY_API_AUTH = "tests.api_hooks.trusted_network"

    assert not hasattr(access.DurablyAuth(), "openapi_security_schema")


def test_principal__the_user_the_auth_returned_never_the_session_user(make_user):
    user = make_user("someone")
    other = make_user("token-user")
    with_key = request(user=user, auth=True)

    assert access.principal(request(user=user, auth=other)) == other
    assert access.principal(request(user=user, auth=user)) == user
    assert access.principal(request(auth=other)) == other
    assert access.principal(with_key) is None
    assert access.principal(request(auth="a-secret-key")) is None
    assert access.principal(request(auth=SimpleNamespace(is_authenticated=True))) is None
    # Scopes read request.user: it is now the caller too, not the session's user.
    assert not with_key.user.is_authenticated


def test_require_permission__checks_the_principal(make_user):
    allowed = request(user=make_user("allowed", "cancel_run"))
    refused = request(user=make_user("refused"))

    access.require_permission(allowed, "cancel_run")
    with pytest.raises(PermissionDenied, match="durably.cancel_run"):
        access.require_permission(refused, "cancel_run")
    access.require_permission(request(auth=True), "delete_run")  # the auth already decided


def test_get_visible_run__unknown_malformed_and_out_of_scope_are_not_found(settings, make_user):
    run = jobs.noop.trigger(None, labels={"tenant": "acme"})
    settings.DURABLY_API_SCOPE = "tests.api_hooks.TenantScope"

    assert access.get_visible_run(request(user=make_user("acme-ops")), run.pk) == run
    assert access.get_visible_run(request(user=make_user("acme-2")), str(run.pk)) == run
    for caller, run_id in [
        (make_user("globex-ops"), run.pk),
        (make_user("acme-3"), "not-a-uuid"),
        (make_user("acme-4"), "00000000-0000-4000-8000-000000000000"),
    ]:
        with pytest.raises(RunNotFound):
            access.get_visible_run(request(user=caller), run_id)


def test_permitted_run__permission_first_then_visibility(make_user):
    run = jobs.noop.trigger(None)
    allowed = request(user=make_user("allowed", "cancel_run"))
    refused = request(user=make_user("refused"))

    assert access.permitted_run(allowed, run.pk, "cancel_run") == run
    with pytest.raises(RunNotFound):
        access.permitted_run(allowed, "00000000-0000-4000-8000-000000000000", "cancel_run")
    # Without the permission, even a run that does not exist gives PermissionDenied: nothing leaks.
    for run_id in (run.pk, "00000000-0000-4000-8000-000000000000"):
        with pytest.raises(PermissionDenied, match="durably.cancel_run"):
            access.permitted_run(refused, run_id, "cancel_run")


def test_label_scope__needs_labels_for():
    with pytest.raises(NotImplementedError):
        access.LabelScope().labels_for(request())


def test_check_trigger__without_a_scope_keeps_the_labels():
    assert access.check_trigger(request(), "job", {"a": "b"}) == {"a": "b"}


def test_key_namespace__readable_unambiguous_prefixes():
    assert access.key_namespace({}) == ""
    assert access.key_namespace({"tenant": "acme"}) == "tenant=acme:"
    assert access.key_namespace({"team": "b", "tenant": "a"}) == "team=b,tenant=a:"
    odd = access.key_namespace({"tenant": "a:b"})
    assert odd.startswith("~") and odd.endswith(":") and len(odd) == 34
    assert access.key_namespace({"tenant": "x" * 100}) != access.key_namespace({"tenant": "x" * 99})


def test_scope_trigger__a_label_scope_namespaces_keys_and_adds_labels(settings, make_user):
    settings.DURABLY_API_SCOPE = "tests.api_hooks.TenantScope"
    caller = request(user=make_user("acme-ops"))
    caller.auth = caller.user

    scoped = access.scope_trigger(
        caller,
        access.TriggerRequest(
            job_name="j", labels={"env": "prod"}, idempotency_key="i", concurrency_key="c"
        ),
    )

    assert scoped.labels == {"env": "prod", "tenant": "acme"}
    assert (scoped.idempotency_key, scoped.concurrency_key) == ("tenant=acme:i", "tenant=acme:c")


def test_scope_trigger__a_check_trigger_only_scope_still_works_with_a_deprecation(settings):
    class OldScope:
        def runs(self, request, queryset):
            return queryset

        def check_trigger(self, request, job_name, labels):
            return {**labels, "old": "yes"}

    settings.DURABLY_API_SCOPE = OldScope()

    with pytest.warns(DeprecationWarning, match="keys its callers choose are not namespaced"):
        scoped = access.scope_trigger(
            request(), access.TriggerRequest(job_name="j", labels={}, idempotency_key="i")
        )

    assert scoped.labels == {"old": "yes"}
    assert scoped.idempotency_key == "i"
