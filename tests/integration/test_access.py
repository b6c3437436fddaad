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


def request(user: Any = None, auth: Any = None, **meta: Any) -> Any:
    made = RequestFactory().get("/", **meta)
    made.user = user or AnonymousUser()
    made.auth = auth  # type: ignore[attr-defined]  # ninja sets it on admitted requests
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


def test_principal__the_session_user_then_a_user_from_the_auth(make_user):
    user = make_user("someone")
    other = make_user("token-user")

    assert access.principal(request(user=user, auth=other)) == user
    assert access.principal(request(auth=other)) == other
    assert access.principal(request(auth=True)) is None
    assert access.principal(request(auth="a-secret-key")) is None
    assert access.principal(request(auth=SimpleNamespace(is_authenticated=True))) is None


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
