"""Who may use the HTTP API, through the real URLconf (tests/urls.py mounts django_durably.urls):
session auth for staff, CSRF on unsafe methods, Django permissions per action, replacing the auth
(API key, bearer token, at mount time), scoping callers to their tenant's runs, and the OpenAPI
schema and docs. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from ninja import NinjaAPI
from ninja.testing import TestClient

from django_durably.api import router
from django_durably.models import AuditRecord, Run, RunStatus
from tests import jobs
from tests.api_hooks import API_KEY, ApiKey
from tests.factories import make_run_in, move_to

pytestmark = pytest.mark.django_db(databases="__all__")

BASE = "/durably"
CSRF_SECRET = "c" * 32  # a valid CSRF cookie value, echoed in the header by well-behaved clients


def logged_in(user: Any, *, enforce_csrf_checks: bool = False) -> Client:
    client = Client(enforce_csrf_checks=enforce_csrf_checks)
    client.force_login(user)
    return client


def trigger(client: Client, job: str = "tests.jobs.noop", **body: Any) -> Any:
    return client.post(f"{BASE}/jobs/{job}/runs", body, content_type="application/json")


# -- session auth ------------------------------------------------------------------------------


def test_session__anonymous_401(client):
    response = client.get(f"{BASE}/runs")

    assert response.status_code == 401
    assert response.json() == {"detail": "Unauthorized"}


def test_session__logged_in_but_not_staff_401(make_user):
    user = make_user("visitor", "view_run", is_staff=False)

    assert logged_in(user).get(f"{BASE}/runs").status_code == 401


def test_session__staff_with_view_permission_reads(make_user):
    run = jobs.noop.trigger(None)
    client = logged_in(make_user("reader", "view_run"))

    assert client.get(f"{BASE}/runs").status_code == 200
    assert client.get(f"{BASE}/runs/{run.pk}").status_code == 200
    assert client.get(f"{BASE}/jobs").status_code == 200


def test_session__staff_without_view_permission_403(make_user):
    run = jobs.noop.trigger(None)
    client = logged_in(make_user("bare"))

    for path in (
        "/runs",
        f"/runs/{run.pk}",
        f"/runs/{run.pk}/steps",
        f"/runs/{run.pk}/attempts",
        f"/runs/{run.pk}/logs",
        "/jobs",
    ):
        response = client.get(BASE + path)
        assert response.status_code == 403, path
        assert response.json() == {
            "detail": "You need the permission durably.view_run.",
            "code": "permission_denied",
        }


def test_session__superusers_may_do_everything(admin_user):
    client = logged_in(admin_user)

    created = trigger(client)
    run_id = created.json()["id"]

    assert created.status_code == 201
    assert client.post(f"{BASE}/runs/{run_id}/cancel").status_code == 200
    assert client.post(f"{BASE}/runs/{run_id}/retrigger").status_code == 201
    assert client.delete(f"{BASE}/runs/{run_id}").status_code == 204
    assert AuditRecord.objects.filter(actor="admin", source="api").count() == 3


def test_session__every_endpoint_through_the_urlconf(operator):
    client = logged_in(operator)
    run_id = trigger(client, input={"x": 1}).json()["id"]
    runs = f"{BASE}/runs/{run_id}"

    answers = [
        client.get(f"{BASE}/jobs").status_code,
        client.get(f"{BASE}/runs?job=tests.jobs.noop&label.tenant=none").status_code,
        client.get(runs).status_code,
        client.get(f"{runs}/steps").status_code,
        client.get(f"{runs}/attempts").status_code,
        client.get(f"{runs}/logs").status_code,
        client.post(f"{runs}/cancel").status_code,
        client.post(f"{runs}/resume").status_code,
        client.post(f"{runs}/cancel").status_code,
        client.post(f"{runs}/retrigger").status_code,
        client.delete(runs).status_code,
        client.get(runs).status_code,
    ]

    assert answers == [200, 200, 200, 200, 200, 200, 200, 200, 200, 201, 204, 404]
    assert [record.action for record in AuditRecord.objects.order_by("id")] == [
        "cancel",
        "resume",
        "cancel",
        "retrigger",
        "delete",
    ]


# -- CSRF --------------------------------------------------------------------------------------


def test_csrf__unsafe_methods_without_a_token_403(operator):
    run = move_to(jobs.noop.trigger(None), RunStatus.COMPLETED)
    client = logged_in(operator, enforce_csrf_checks=True)

    refused = [
        trigger(client),
        client.post(f"{BASE}/runs/{run.pk}/retrigger"),
        client.post(f"{BASE}/runs/{run.pk}/resume"),
        client.post(f"{BASE}/runs/{run.pk}/cancel"),
        client.delete(f"{BASE}/runs/{run.pk}"),
    ]

    assert [response.status_code for response in refused] == [403] * 5
    assert refused[0].json() == {"detail": "CSRF check Failed"}
    assert Run.objects.count() == 1
    assert not AuditRecord.objects.exists()


def test_csrf__safe_methods_need_no_token(operator):
    client = logged_in(operator, enforce_csrf_checks=True)

    assert client.get(f"{BASE}/runs").status_code == 200


def test_csrf__with_the_token_in_the_header(operator):
    client = logged_in(operator, enforce_csrf_checks=True)
    client.cookies["csrftoken"] = CSRF_SECRET

    response = client.post(
        f"{BASE}/jobs/tests.jobs.noop/runs",
        {"input": 1},
        content_type="application/json",
        headers={"X-CSRFToken": CSRF_SECRET},
    )

    assert response.status_code == 201


# -- permissions per action --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("permission", "method", "path", "status", "expected"),
    [
        ("cancel_run", "post", "/runs/{id}/cancel", RunStatus.PENDING, 200),
        ("resume_run", "post", "/runs/{id}/resume", RunStatus.FAILED, 200),
        ("retrigger_run", "post", "/runs/{id}/retrigger", RunStatus.COMPLETED, 201),
        ("delete_run", "delete", "/runs/{id}", RunStatus.COMPLETED, 204),
        ("signal_run", "post", "/runs/{id}/signals/approval", RunStatus.WAITING, 201),
    ],
)
def test_permissions__each_action_needs_its_permission(
    make_user, permission, method, path, status, expected
):
    run = move_to(jobs.noop.trigger(None), status)
    url = BASE + path.format(id=run.pk)
    without = logged_in(make_user("without", "view_run"))
    with_it = logged_in(make_user("with", "view_run", permission))

    refused = getattr(without, method)(url, content_type="application/json")
    assert refused.status_code == 403
    assert refused.json()["detail"] == f"You need the permission durably.{permission}."
    assert Run.objects.get(pk=run.pk).status == status
    assert not AuditRecord.objects.exists()

    assert getattr(with_it, method)(url, content_type="application/json").status_code == expected
    assert AuditRecord.objects.get().actor == "with"


def test_permissions__triggering_needs_add_run(make_user):
    refused = trigger(logged_in(make_user("reader", "view_run")))

    assert refused.status_code == 403
    assert refused.json()["detail"] == "You need the permission durably.add_run."
    assert not Run.objects.exists()
    assert trigger(logged_in(make_user("writer", "add_run"))).status_code == 201


def test_permissions__permission_checked_before_the_run_is_looked_up(make_user):
    client = logged_in(make_user("reader", "view_run"))

    response = client.post(f"{BASE}/runs/00000000-0000-4000-8000-000000000000/cancel")

    assert response.status_code == 403


# -- replacing the auth ------------------------------------------------------------------------


def test_custom_auth__api_key_from_settings(client, operator, settings):
    settings.DURABLY_API_AUTH = "tests.api_hooks.ApiKey"
    run = jobs.noop.trigger(None)

    denied = client.get(f"{BASE}/runs")
    wrong = client.get(f"{BASE}/runs", headers={"X-API-Key": "guess"})
    allowed = client.post(f"{BASE}/runs/{run.pk}/cancel", headers={"X-API-Key": API_KEY})

    assert (denied.status_code, wrong.status_code) == (401, 401)
    assert allowed.status_code == 200  # no CSRF check: the key is not a cookie
    assert AuditRecord.objects.get().actor == ""  # the key identifies no user
    assert AuditRecord.objects.get().source == "api"
    assert logged_in(operator).get(f"{BASE}/runs").status_code == 401  # sessions no longer work


def test_custom_auth__a_list_tries_each_and_user_tokens_keep_permissions(
    client, make_user, operator, settings
):
    settings.DURABLY_API_AUTH = [
        "tests.api_hooks.UserToken",
        "django_durably.access.DEFAULT_AUTH",
    ]
    make_user("reader", "view_run")
    run = jobs.noop.trigger(None)
    url = f"{BASE}/runs/{run.pk}/cancel"

    as_reader = client.post(url, headers={"Authorization": "Bearer user:reader"})
    as_operator = client.post(url, headers={"Authorization": "Bearer user:operator"})

    assert as_reader.status_code == 403
    assert as_operator.status_code == 200
    assert AuditRecord.objects.get().actor == "operator"
    assert logged_in(operator).get(f"{BASE}/runs").status_code == 200  # the session fallback


def test_custom_auth__an_auth_class_object_is_instantiated(client, settings):
    settings.DURABLY_API_AUTH = ApiKey

    assert client.get(f"{BASE}/jobs", headers={"X-API-Key": API_KEY}).status_code == 200


def test_custom_auth__at_mount_time_on_a_host_api():
    host = NinjaAPI(urls_namespace="host-api-test")
    host.add_router("/durably/", router, auth=ApiKey())
    client = TestClient(host)

    assert client.get("/durably/jobs").status_code == 401
    assert client.get("/durably/jobs", headers={"X-API-Key": API_KEY}).status_code == 200


def test_custom_auth__the_openapi_schema_documents_it(client, settings):
    settings.DURABLY_API_AUTH = "tests.api_hooks.ApiKey"

    schema = client.get(f"{BASE}/openapi.json", headers={"X-API-Key": API_KEY}).json()

    assert schema["components"]["securitySchemes"] == {
        "DurablyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    }


# -- OpenAPI and docs --------------------------------------------------------------------------


def test_openapi__served_with_every_endpoint(operator):
    response = logged_in(operator).get(f"{BASE}/openapi.json")

    assert response.status_code == 200
    schema = response.json()
    operations = {
        (method.upper(), path.removeprefix(BASE)): spec["operationId"]
        for path, methods in schema["paths"].items()
        for method, spec in methods.items()
    }
    assert operations == {
        ("GET", "/jobs"): "durably_list_jobs",
        ("POST", "/jobs/{name}/runs"): "durably_trigger_run",
        ("GET", "/runs"): "durably_list_runs",
        ("GET", "/runs/{run_id}"): "durably_get_run",
        ("DELETE", "/runs/{run_id}"): "durably_delete_run",
        ("GET", "/runs/{run_id}/steps"): "durably_list_steps",
        ("GET", "/runs/{run_id}/attempts"): "durably_list_attempts",
        ("GET", "/runs/{run_id}/logs"): "durably_list_logs",
        ("GET", "/runs/{run_id}/signals"): "durably_list_signals",
        ("POST", "/runs/{run_id}/signals/{name}"): "durably_send_signal",
        ("POST", "/runs/{run_id}/cancel"): "durably_cancel_run",
        ("POST", "/runs/{run_id}/resume"): "durably_resume_run",
        ("POST", "/runs/{run_id}/retrigger"): "durably_retrigger_run",
        ("GET", "/runs/{run_id}/events"): "durably_run_events",
    }
    events = schema["paths"][f"{BASE}/runs/{{run_id}}/events"]["get"]["responses"]["200"]
    assert "text/event-stream" in events["content"]
    assert schema["components"]["securitySchemes"] == {
        "DurablyAuth": {"type": "apiKey", "in": "cookie", "name": "sessionid"}
    }
    run_out = schema["components"]["schemas"]["RunOut"]["properties"]
    assert "lease_owner" not in run_out
    assert "lease" in run_out


@pytest.mark.parametrize(
    "path",
    ["/nowhere", "/runs/a/b", "/runs/00000000-0000-4000-8000-000000000000/extra", "/jobs//runs"],
)
def test_urls__unknown_paths_under_the_api_404_in_json(operator, path):
    response = logged_in(operator).get(BASE + path)

    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_urls__job_names_may_hold_any_character(operator):
    response = trigger(logged_in(operator), job="team/odd%0Aname")

    assert response.status_code == 404
    assert response.json() == {
        "detail": "No job is registered under the name 'team/odd\\nname'.",
        "code": "job_not_found",
    }


def test_docs__served(operator):
    response = logged_in(operator).get(f"{BASE}/docs")

    assert response.status_code == 200
    assert b"openapi.json" in response.content


# -- scoping -----------------------------------------------------------------------------------


@pytest.fixture
def tenants(settings, make_user):
    """Two tenants' operators, each with every run permission, and a run of each tenant."""
    from tests.conftest import RUN_PERMISSIONS

    settings.DURABLY_API_SCOPE = "tests.api_hooks.TenantScope"
    acme = make_user("acme-ops", *RUN_PERMISSIONS)
    globex = make_user("globex-ops", *RUN_PERMISSIONS)
    acme_run = jobs.noop.trigger("acme", labels={"tenant": "acme"})
    globex_run = jobs.noop.trigger("globex", labels={"tenant": "globex"}, idempotency_key="g-1")
    return logged_in(acme), logged_in(globex), acme_run, globex_run


def test_scope__each_tenant_lists_only_its_runs(tenants):
    acme, globex, acme_run, globex_run = tenants

    assert [item["id"] for item in acme.get(f"{BASE}/runs").json()["items"]] == [str(acme_run.pk)]
    assert [item["id"] for item in globex.get(f"{BASE}/runs").json()["items"]] == [
        str(globex_run.pk)
    ]
    assert acme.get(f"{BASE}/runs?label.tenant=globex").json()["items"] == []


def test_scope__label_filters_narrow_within_the_scope(tenants):
    acme, *_ = tenants
    prod = jobs.noop.trigger("prod", labels={"tenant": "acme", "env": "prod"})
    jobs.noop.trigger("prod elsewhere", labels={"tenant": "globex", "env": "prod"})

    response = acme.get(f"{BASE}/runs?label.env=prod")

    assert [item["id"] for item in response.json()["items"]] == [str(prod.pk)]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/runs/{id}"),
        ("get", "/runs/{id}/steps"),
        ("get", "/runs/{id}/attempts"),
        ("get", "/runs/{id}/logs"),
        ("post", "/runs/{id}/cancel"),
        ("post", "/runs/{id}/resume"),
        ("post", "/runs/{id}/retrigger"),
        ("delete", "/runs/{id}"),
    ],
)
def test_scope__another_tenants_run_is_not_found(tenants, method, path):
    acme, _, _, globex_run = tenants
    for status in (RunStatus.PENDING, RunStatus.FAILED):
        move_to(globex_run, status)

        response = getattr(acme, method)(BASE + path.format(id=globex_run.pk))

        assert response.status_code == 404
        assert response.json()["code"] == "run_not_found"
        assert Run.objects.get(pk=globex_run.pk).status == status
    assert Run.objects.count() == 2
    assert not AuditRecord.objects.exists()


def test_scope__own_runs_can_be_acted_on(tenants):
    acme, _, acme_run, _ = tenants

    assert acme.post(f"{BASE}/runs/{acme_run.pk}/cancel").status_code == 200
    retriggered = acme.post(f"{BASE}/runs/{acme_run.pk}/retrigger")
    assert retriggered.status_code == 201
    assert retriggered.json()["run"]["labels"] == {"tenant": "acme"}


def test_scope__triggered_runs_get_the_callers_labels(tenants):
    acme, *_ = tenants

    response = trigger(acme, labels={"env": "prod"})

    assert response.status_code == 201
    assert response.json()["labels"] == {"env": "prod", "tenant": "acme"}
    assert acme.get(f"{BASE}/runs/{response.json()['id']}").status_code == 200


def test_scope__triggering_with_another_tenants_label_403(tenants):
    acme, *_ = tenants

    response = trigger(acme, labels={"tenant": "globex"})

    assert response.status_code == 403
    assert response.json() == {
        "detail": "Runs you trigger must have the label tenant=acme.",
        "code": "permission_denied",
    }
    assert Run.objects.count() == 2


def test_scope__keys_are_namespaced_by_the_callers_scope(tenants):
    acme, globex, *_ = tenants

    theirs = trigger(globex, idempotency_key="invoice-7", concurrency_key="sync")
    ours = trigger(acme, idempotency_key="invoice-7", concurrency_key="sync")
    again = trigger(acme, idempotency_key="invoice-7")

    assert (theirs.status_code, ours.status_code, again.status_code) == (201, 201, 200)
    assert ours.json()["id"] != theirs.json()["id"]
    assert again.json()["id"] == ours.json()["id"]
    assert (ours.json()["idempotency_key"], ours.json()["concurrency_key"]) == (
        "tenant=acme:invoice-7",
        "tenant=acme:sync",
    )
    assert theirs.json()["idempotency_key"] == "tenant=globex:invoice-7"


def test_scope__another_tenants_whole_key_cannot_be_squatted(tenants):
    acme, globex, *_ = tenants

    squatted = trigger(
        acme, idempotency_key="tenant=globex:invoice-7", concurrency_key="tenant=globex:sync"
    )
    owner = trigger(globex, idempotency_key="invoice-7", concurrency_key="sync")

    assert squatted.status_code == 201
    assert squatted.json()["idempotency_key"] == "tenant=acme:tenant=globex:invoice-7"
    assert owner.status_code == 201
    assert owner.json()["id"] != squatted.json()["id"]
    resumed = globex.post(f"{BASE}/runs/{owner.json()['id']}/cancel")
    assert resumed.status_code == 200
    assert globex.post(f"{BASE}/runs/{owner.json()['id']}/resume").status_code == 200


def test_scope__a_key_taken_by_a_run_the_caller_cannot_see_409_without_its_run(tenants):
    acme, *_ = tenants
    hidden = jobs.noop.trigger("unlabelled", idempotency_key="tenant=acme:k")  # from Python

    response = trigger(acme, idempotency_key="k")

    assert response.status_code == 409
    assert response.json() == {
        "detail": "The idempotency key is taken by a run you cannot see.",
        "code": "conflict",
    }
    assert str(hidden.pk) not in response.content.decode()


def test_scope__keys_too_long_once_namespaced_422(tenants):
    acme, *_ = tenants

    response = trigger(acme, idempotency_key="k" * 250)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "payload", "idempotency_key"]
    assert "prefix 'tenant=acme:'" in response.json()["detail"][0]["msg"]


def test_scope__a_reserved_key_is_refused_before_it_is_namespaced(tenants):
    acme, *_ = tenants

    response = trigger(acme, idempotency_key="retrigger:x")

    assert response.status_code == 422


def test_scope__callers_without_a_tenant_see_and_trigger_nothing(tenants, make_user):
    nobody = logged_in(make_user("nobody", "view_run", "add_run"))

    assert nobody.get(f"{BASE}/runs").json()["items"] == []
    assert trigger(nobody).status_code == 403


def test_scope__superusers_see_every_tenant(tenants, admin_user):
    items = logged_in(admin_user).get(f"{BASE}/runs").json()["items"]

    assert len(items) == 2


def test_scope__retrigger_is_checked_like_a_trigger(tenants, settings):
    acme, _, acme_run, _ = tenants
    move_to(acme_run, RunStatus.COMPLETED)
    settings.DURABLY_API_SCOPE = "tests.api_hooks.ReadOnlyTenantScope"

    response = acme.post(f"{BASE}/runs/{acme_run.pk}/retrigger")

    assert response.status_code == 403
    assert Run.objects.count() == 2


# -- issue 13: malformed requests --------------------------------------------------------------


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", " "])
@pytest.mark.parametrize("as_user", [False, True])
def test_content_length__not_a_number_400_in_json_before_auth(client, operator, length, as_user):
    if as_user:
        client.force_login(operator)

    response = client.generic(
        "POST",
        f"{BASE}/jobs/tests.jobs.noop/runs",
        b"{}",
        content_type="application/json",
        CONTENT_LENGTH=length,
    )

    assert response.status_code == 400
    assert response.json() == {
        "detail": "The Content-Length header must be a non-negative integer.",
        "code": "bad_content_length",
    }
    assert not Run.objects.exists()


@pytest.mark.parametrize("as_user", [False, True], ids=["anonymous", "operator"])
def test_form_body__a_multipart_body_without_a_boundary_400_in_json_not_a_500(
    client, operator, as_user
):
    """Found by schemathesis's coverage phase (ST102): the CSRF check parses form bodies, and a
    ``multipart/form-data`` type without a boundary made it raise."""
    if as_user:
        client.force_login(operator)
    run = make_run_in("pending")

    response = client.generic(
        "POST", f"{BASE}/runs/{run.pk}/cancel", b"--x--", content_type="multipart/form-data"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "bad_form_body"
    assert response.json()["detail"].startswith("The form body cannot be parsed: ")
    assert Run.objects.get(pk=run.pk).status == "pending"


# -- issue 13: the OpenAPI schema --------------------------------------------------------------


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses duplicate keys (as Swagger UI's YAML parser does)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        assert not duplicates, f"duplicate keys {duplicates}"
        return dict(items)

    return json.loads(text, object_pairs_hook=pairs)


def test_openapi__no_duplicate_keys_and_a_valid_document(client, operator):
    from openapi_spec_validator import validate

    response = logged_in(operator).get(f"{BASE}/openapi.json")

    schema = strict_json(response.content.decode())
    validate(schema)
    events = schema["paths"][f"{BASE}/runs/{{run_id}}/events"]["get"]["responses"]["200"]
    assert "text/event-stream" in events["content"]


def test_openapi__labels_describe_the_keys_the_api_accepts(client, operator):
    schema = logged_in(operator).get(f"{BASE}/openapi.json").json()

    labels = schema["components"]["schemas"]["EnqueueIn"]["properties"]["labels"]["anyOf"][0]

    assert labels["propertyNames"]["pattern"] == "^[A-Za-z0-9._/-]+$"
    assert labels["additionalProperties"]["type"] == "string"
    assert "patternProperties" not in labels


# -- issue 13: who the caller is, CSRF, anonymous callers, docs -------------------------------


def test_principal__a_query_key_acts_as_its_user_not_the_session_user(make_user, settings):
    settings.DURABLY_API_AUTH = ["tests.api_hooks.QueryKey", "django_durably.access.DEFAULT_AUTH"]
    make_user("mallory", "view_run")
    victim = logged_in(make_user("victim", *("view_run", "cancel_run")), enforce_csrf_checks=True)
    run = jobs.noop.trigger(None)

    # A cross-site form post: the victim's cookie, the attacker's key, no CSRF token.
    response = victim.post(
        f"{BASE}/runs/{run.pk}/cancel?key=user:mallory",
        "a=1",
        content_type="application/x-www-form-urlencoded",
        headers={"Origin": "https://evil.example"},
    )

    assert response.status_code == 403
    assert response.json()["detail"] == "You need the permission durably.cancel_run."
    assert Run.objects.get(pk=run.pk).status == RunStatus.PENDING
    assert not AuditRecord.objects.exists()


def test_principal__a_query_key_sees_its_own_scope_not_the_session_users(make_user, settings):
    from tests.conftest import RUN_PERMISSIONS

    settings.DURABLY_API_SCOPE = "tests.api_hooks.TenantScope"
    settings.DURABLY_API_AUTH = ["tests.api_hooks.QueryKey", "django_durably.access.DEFAULT_AUTH"]
    make_user("globex-ops", *RUN_PERMISSIONS)
    victim = logged_in(make_user("acme-ops", *RUN_PERMISSIONS))
    acme_run = jobs.noop.trigger(None, labels={"tenant": "acme"})

    response = victim.post(f"{BASE}/runs/{acme_run.pk}/cancel?key=user:globex-ops")

    assert response.status_code == 404
    assert Run.objects.get(pk=acme_run.pk).status == RunStatus.PENDING


def test_csrf__an_auth_returning_the_session_user_needs_the_token(operator, settings):
    settings.DURABLY_API_AUTH = "tests.api_hooks.session_user"
    run = jobs.noop.trigger(None)
    client = logged_in(operator, enforce_csrf_checks=True)

    refused = client.post(f"{BASE}/runs/{run.pk}/cancel")
    client.cookies["csrftoken"] = CSRF_SECRET
    allowed = client.post(f"{BASE}/runs/{run.pk}/cancel", headers={"X-CSRFToken": CSRF_SECRET})

    assert refused.status_code == 403
    assert refused.json() == {"detail": "CSRF check Failed"}
    assert allowed.status_code == 200
    assert client.get(f"{BASE}/runs").status_code == 200  # safe methods need no token


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/jobs/tests.jobs.noop/runs"),
        ("post", "/runs/00000000-0000-4000-8000-000000000000/cancel"),
        ("delete", "/runs/00000000-0000-4000-8000-000000000000"),
    ],
)
def test_session__anonymous_unsafe_requests_401_not_a_csrf_403(method, path):
    client = Client(enforce_csrf_checks=True)

    response = getattr(client, method)(BASE + path)

    assert response.status_code == 401
    assert response.json() == {"detail": "Unauthorized"}


@pytest.mark.parametrize("method", ["post", "delete", "put"])
def test_urls__unknown_paths_404_in_json_whatever_the_method(operator, method):
    client = logged_in(operator, enforce_csrf_checks=True)

    response = getattr(client, method)(f"{BASE}/nowhere")

    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_docs__follow_the_apis_auth(client, operator, settings, path):
    anonymous = client.get(BASE + path)
    staff = logged_in(operator).get(BASE + path)
    settings.DURABLY_API_AUTH = "tests.api_hooks.ApiKey"
    with_key = client.get(BASE + path, headers={"X-API-Key": API_KEY})

    assert anonymous.status_code == 401
    assert anonymous.json() == {"detail": "Unauthorized"}
    assert staff.status_code == 200
    assert with_key.status_code == 200


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_docs__public_with_the_setting(client, settings, path):
    settings.DURABLY_API_DOCS_PUBLIC = True

    assert client.get(BASE + path).status_code == 200
