"""The HTTP API: jobs, triggering, run detail, and requests it refuses (never with a 500).

Requests go through ninja's TestClient on the router (auth as ``user=``); test_api_auth.py covers
the real URLconf, sessions and CSRF. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from pydantic import BaseModel, ConfigDict

from django_durably.guards import json_depth_exceeds
from django_durably.jobs import define_job, register, unregister
from django_durably.models import Run, RunStatus
from tests import jobs
from tests.factories import move_to

pytestmark = pytest.mark.django_db(databases="__all__")

NOOP = "tests.jobs.noop"
GREET = "tests.jobs.greet"


def trigger(api: Any, user: Any, job: str = NOOP, **body: Any) -> Any:
    return api.post(f"/jobs/{job}/runs", json=body, user=user)


def raw_post(api: Any, user: Any, body: bytes | str, **extra: Any) -> Any:
    return api.post(f"/jobs/{NOOP}/runs", data=body, user=user, **extra)


def field_errors(response: Any) -> list[tuple[tuple[Any, ...], str]]:
    return [(tuple(error["loc"]), error["type"]) for error in response.json()["detail"]]


# -- GET /jobs ---------------------------------------------------------------------------------


def test_list_jobs__every_registered_job_with_queue_and_schemas(api, operator):
    response = api.get("/jobs", user=operator)

    assert response.status_code == 200
    listed = {job["name"]: job for job in response.json()}
    assert listed[NOOP] == {
        "name": NOOP,
        "description": "",
        "queue": "default",
        "priority": 0,
        "input_schema": None,
        "output_schema": None,
    }
    greet = listed[GREET]
    assert greet["input_schema"]["properties"]["name"] == {"title": "Name", "type": "string"}
    assert greet["input_schema"]["required"] == ["name"]
    assert greet["output_schema"]["title"] == "GreetingOut"
    assert listed["tests.jobs.counted"]["description"].startswith("One step per run")
    assert list(listed) == sorted(listed)


def test_list_jobs__uses_the_default_queue_setting(api, operator, settings):
    settings.DURABLY_DEFAULT_QUEUE = "bulk"

    listed = {job["name"]: job for job in api.get("/jobs", user=operator).json()}

    assert listed[NOOP]["queue"] == "bulk"


class Opaque:
    """Not something pydantic can describe in JSON schema."""


class OpaqueInput(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    thing: Opaque | None = None


def takes_opaque(step: Any, input: OpaqueInput) -> None:
    return None


def test_list_jobs__a_schema_pydantic_cannot_describe_is_listed_as_free_form(api, operator):
    register(
        define_job(
            takes_opaque,
            name="tests.opaque",
            queue=None,
            priority=None,
            concurrency_key=None,
            input_schema=None,
            output_schema=None,
        )
    )
    try:
        response = api.get("/jobs", user=operator)
    finally:
        unregister("tests.opaque")

    assert response.status_code == 200
    listed = {job["name"]: job for job in response.json()}
    assert listed["tests.opaque"]["input_schema"] is None


# -- POST /jobs/{name}/runs --------------------------------------------------------------------


def test_trigger__creates_a_run_201(api, operator, db_alias):
    run_after = timezone.now() + timedelta(hours=1)

    response = trigger(
        api,
        operator,
        input={"x": [1, "two"]},
        labels={"tenant": "acme", "team/region": "eu-1"},
        priority=5,
        run_after=run_after.isoformat(),
        concurrency_key="c-1",
    )

    assert response.status_code == 201
    body = response.json()
    run = Run.objects.using(db_alias).get()
    assert body["id"] == str(run.pk)
    assert body["disposition"] == "created"
    assert body["status"] == "pending"
    assert body["job_name"] == NOOP
    assert body["input"] == {"x": [1, "two"]}
    assert body["labels"] == {"tenant": "acme", "team/region": "eu-1"}
    assert body["priority"] == 5
    assert body["concurrency_key"] == "c-1"
    assert body["output"] is None
    assert body["error"] is None
    assert run.run_after == run_after
    assert body["created_at"] is not None  # read back from the database, not a db_default
    assert "lease" not in body
    assert not {"lease_owner", "lease_expires_at", "lease_generation"} & set(body)


def test_trigger__an_empty_body_object_takes_every_default(api, operator):
    response = trigger(api, operator)

    assert response.status_code == 201
    assert response.json()["input"] is None
    assert response.json()["labels"] == {}


def test_trigger__idempotency_key_returns_the_existing_run_200(api, operator):
    first = trigger(api, operator, input=1, idempotency_key="once")
    second = trigger(api, operator, input=2, idempotency_key="once")

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["disposition"] == "idempotent"
    assert second.json()["input"] == 1
    assert Run.objects.count() == 1


def test_trigger__coalesce_skip_returns_the_pending_run_200(api, operator):
    first = trigger(api, operator, concurrency_key="k")
    second = trigger(api, operator, concurrency_key="k", coalesce="skip")

    assert second.status_code == 200
    assert second.json()["disposition"] == "coalesced"
    assert second.json()["id"] == first.json()["id"]


def test_trigger__pending_concurrency_conflict_409(api, operator):
    first = trigger(api, operator, concurrency_key="k")

    response = trigger(api, operator, concurrency_key="k")

    assert response.status_code == 409
    assert response.json() == {
        "detail": "Job 'tests.jobs.noop' already has a pending run with concurrency key 'k'. "
        "Send coalesce=skip to get that run instead.",
        "code": "pending_run_exists",
        "status": "pending",
        "run_id": first.json()["id"],
        "concurrency_key": "k",
    }
    assert Run.objects.count() == 1


def test_trigger__unknown_job_404(api, operator):
    response = trigger(api, operator, job="no.such.job")

    assert response.status_code == 404
    assert response.json() == {
        "detail": "No job is registered under the name 'no.such.job'.",
        "code": "job_not_found",
    }


def test_trigger__job_names_with_slashes_are_routed(api, operator):
    response = trigger(api, operator, job="team/no-such-job")

    assert response.status_code == 404
    assert response.json()["code"] == "job_not_found"


def test_trigger__input_failing_the_job_schema_422_with_field_details(api, operator):
    response = trigger(api, operator, job=GREET, input={"times": "many"})

    assert response.status_code == 422
    assert field_errors(response) == [
        (("body", "payload", "input", "name"), "missing"),
        (("body", "payload", "input", "times"), "int_parsing"),
    ]
    assert Run.objects.count() == 0


def test_trigger__input_matching_the_schema_is_stored_normalised(api, operator):
    response = trigger(api, operator, job=GREET, input={"name": "ada"})

    assert response.status_code == 201
    assert response.json()["input"] == {"name": "ada", "times": 1}


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        pytest.param({"labels": {"bad key": "x"}}, "labels", "string_pattern_mismatch", id="label-key"),
        pytest.param({"labels": {"k": 1}}, "labels", "string_type", id="label-value-type"),
        pytest.param({"labels": {"k": "x" * 501}}, "labels", "string_too_long", id="label-value-long"),
        pytest.param({"labels": {f"k{i}": "v" for i in range(33)}}, "labels", "too_long", id="labels-many"),
        pytest.param({"labels": ["a"]}, "labels", "dict_type", id="labels-list"),
        pytest.param({"priority": 2**31}, "priority", "less_than_equal", id="priority-range"),
        pytest.param({"priority": "high"}, "priority", "value_error", id="priority-type"),
        pytest.param({"run_after": "2026-01-01T10:00:00"}, "run_after", "timezone_aware", id="naive"),
        pytest.param({"run_after": "0001-01-01T00:00:00+01:00"}, "run_after", "value_error", id="before-year-1"),
        pytest.param({"run_after": "soon"}, "run_after", "datetime_from_date_parsing", id="not-a-date"),
        pytest.param({"coalesce": "merge"}, "coalesce", "literal_error", id="coalesce"),
        pytest.param({"idempotency_key": ""}, "idempotency_key", "string_too_short", id="key-empty"),
        pytest.param({"idempotency_key": "k" * 256}, "idempotency_key", "string_too_long", id="key-long"),
        pytest.param({"idempotency_key": "a\x00b"}, "idempotency_key", "string_pattern_mismatch", id="key-nul"),
        pytest.param({"concurrency_key": 7}, "concurrency_key", "string_type", id="ckey-type"),
        pytest.param({"flavour": "other"}, "flavour", "extra_forbidden", id="unknown-field"),
        pytest.param({"priority": True}, "priority", "value_error", id="priority-bool"),
        pytest.param({"priority": 5.5}, "priority", "value_error", id="priority-float"),
        pytest.param({"priority": "5"}, "priority", "value_error", id="priority-text"),
        pytest.param({"run_after": 1893456000}, "run_after", "value_error", id="run-after-number"),
        pytest.param({"queue": ""}, "queue", "string_too_short", id="queue-empty"),
        pytest.param({"queue": "q" * 101}, "queue", "string_too_long", id="queue-long"),
        pytest.param({"queue": "a\x00b"}, "queue", "string_pattern_mismatch", id="queue-nul"),
    ],
)  # fmt: skip
def test_trigger__invalid_fields_422(api, operator, body, loc, kind):
    response = trigger(api, operator, **body)

    assert response.status_code == 422, response.json()
    assert [(error["loc"][:3], error["type"]) for error in response.json()["detail"]][:1] == [
        (["body", "payload", loc], kind)
    ]
    assert Run.objects.count() == 0


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a\x00b", id="nul"),
        pytest.param({"deep": ["\x00"]}, id="nested-nul"),
        pytest.param({"a\x00": 1}, id="nul-key"),
    ],
)
def test_trigger__input_strings_databases_cannot_store_422(api, operator, value):
    response = trigger(api, operator, input=value)

    assert response.status_code == 422
    assert field_errors(response) == [(("body", "payload", "input"), "invalid_input")]
    assert "NUL character" in response.json()["detail"][0]["msg"]


def test_trigger__lone_surrogates_422(api, operator):
    body = '{"input": {"text": "\\ud800"}, "labels": {"k": "\\udc00"}}'

    response = raw_post(api, operator, body)

    assert response.status_code == 422
    assert [error["loc"][:3] for error in response.json()["detail"]] == [
        ["body", "payload", "labels"]
    ]


def test_trigger__lone_surrogate_in_input_422(api, operator):
    response = raw_post(api, operator, '{"input": ["\\udfff"]}')

    assert response.status_code == 422
    assert field_errors(response) == [(("body", "payload", "input"), "invalid_input")]


def test_trigger__valid_surrogate_pairs_are_kept(api, operator):
    response = raw_post(api, operator, '{"input": "\\ud83d\\ude00"}')

    assert response.status_code == 201
    assert response.json()["input"] == "\N{GRINNING FACE}"


def test_trigger__input_over_the_input_limit_422(api, operator, settings):
    settings.DURABLY_MAX_INPUT_BYTES = 10

    response = trigger(api, operator, input="x" * 20)

    assert response.status_code == 422
    assert field_errors(response) == [(("body", "payload", "input"), "invalid_input")]


def test_trigger__malformed_json_400(api, operator):
    response = raw_post(api, operator, '{"input": ')

    assert response.status_code == 400
    assert response.json() == {"detail": "Cannot parse request body"}


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "null", "42"])
def test_trigger__a_body_that_is_not_an_object_422(api, operator, body):
    response = raw_post(api, operator, body)

    assert response.status_code == 422


def test_trigger__body_over_the_limit_413_without_reading_it(api, operator, settings):
    settings.DURABLY_API_MAX_BODY_BYTES = 100

    response = trigger(api, operator, input="x" * 200)

    assert response.status_code == 413
    assert response.json() == {
        "detail": "The request body is larger than 100 bytes.",
        "code": "payload_too_large",
    }
    assert Run.objects.count() == 0


def test_trigger__declared_length_over_the_limit_413(api, operator, settings):
    settings.DURABLY_API_MAX_BODY_BYTES = 100

    response = raw_post(api, operator, "{}", META={"CONTENT_LENGTH": "5000"})

    assert response.status_code == 413


def test_trigger__default_limit_is_one_mebibyte(api, operator):
    response = trigger(api, operator, input="x" * (1024 * 1024))

    assert response.status_code == 413


def test_trigger__json_nested_deeper_than_the_limit_422(api, operator):
    deep: Any = "bottom"
    for _ in range(40):
        deep = [deep]

    response = trigger(api, operator, input=deep)

    assert response.status_code == 422
    assert field_errors(response) == [(("body",), "json_too_deep")]


def test_trigger__pathologically_deep_json_422_not_a_recursion_error(api, operator):
    response = raw_post(api, operator, '{"input": ' + "[" * 100_000 + "]" * 100_000 + "}")

    assert response.status_code == 422


def test_trigger__depth_limit_setting(api, operator, settings):
    settings.DURABLY_API_MAX_JSON_DEPTH = 3

    assert trigger(api, operator, input={"a": 1}).status_code == 201
    assert trigger(api, operator, input={"a": {"b": 1}}).status_code == 201  # 3 levels
    assert trigger(api, operator, input={"a": {"b": {"c": 1}}}).status_code == 422


@pytest.mark.parametrize(
    ("body", "deeper"),
    [
        (b"[[[]]]", True),
        (b"[[]]", False),
        (b'{"a": {"b": "[[[[[[["}}', False),
        (b'["\\"[[[[", ["x"]]', False),
        (b'{"a": [{"b": [1]}]}', True),
        (b"", False),
    ],
)
def test_json_depth_exceeds__ignores_brackets_inside_strings(body, deeper):
    assert json_depth_exceeds(body, 2) is deeper


# -- GET /runs/{id} ----------------------------------------------------------------------------


def test_get_run__detail_with_input_output_and_error(api, operator, db_alias):
    run = jobs.noop.trigger({"x": 1}, labels={"tenant": "acme"})
    error = {"type": "builtins.RuntimeError", "message": "boom", "traceback": "Traceback ..."}
    move_to(run, RunStatus.FAILED, error=error, progress={"current": 1, "total": 3, "message": "m"})

    response = api.get(f"/runs/{run.pk}", user=operator)

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(run.pk)
    assert body["status"] == "failed"
    assert body["error"] == error
    assert body["progress"] == {"current": 1, "total": 3, "message": "m"}
    assert body["input"] == {"x": 1}
    assert body["labels"] == {"tenant": "acme"}
    assert "lease" not in body
    assert "disposition" not in body


def test_get_run__include_lease_adds_the_lease_fields(api, operator):
    run = jobs.noop.trigger(None)
    expires = timezone.now() + timedelta(minutes=1)
    move_to(run, RunStatus.LEASED, lease_owner="w-1", lease_expires_at=expires, lease_generation=4)

    body = api.get(f"/runs/{run.pk}?include=lease", user=operator).json()

    assert body["lease"]["owner"] == "w-1"
    assert body["lease"]["generation"] == 4
    assert body["lease"]["expires_at"] is not None


def test_get_run__unknown_include_422(api, operator):
    run = jobs.noop.trigger(None)

    response = api.get(f"/runs/{run.pk}?include=secrets", user=operator)

    assert response.status_code == 422


def test_get_run__unknown_id_404(api, operator):
    missing = "00000000-0000-4000-8000-000000000000"

    response = api.get(f"/runs/{missing}", user=operator)

    assert response.status_code == 404
    assert response.json()["code"] == "run_not_found"
    assert response.json()["detail"] == f"No run exists with id {missing}."


def test_get_run__malformed_id_422(api, operator):
    response = api.get("/runs/not-a-uuid", user=operator)

    assert response.status_code == 422
    assert field_errors(response) == [(("path", "run_id"), "uuid_parsing")]


def test_responses_are_json(api, operator):
    response = api.get("/jobs", user=operator)

    assert json.loads(response.content) == response.json()


# -- issue 13: reserved keys -------------------------------------------------------------------


def test_trigger__a_reserved_idempotency_key_422(api, operator):
    run = jobs.noop.trigger(None)

    response = trigger(api, operator, idempotency_key=f"retrigger:{run.pk}:k")

    assert response.status_code == 422
    assert field_errors(response) == [(("body", "payload", "idempotency_key"), "invalid_trigger")]
    assert Run.objects.count() == 1


# -- issue 13: queues, strict types, run state flags ------------------------------------------


def test_trigger__the_queue_can_be_chosen(api, operator, db_alias):
    response = trigger(api, operator, queue="bulk")

    assert response.status_code == 201
    assert response.json()["queue"] == "bulk"
    assert Run.objects.using(db_alias).get().queue == "bulk"


def test_trigger__run_state_flags(api, operator):
    run = jobs.noop.trigger(None)

    pending = api.get(f"/runs/{run.pk}", user=operator).json()
    move_to(run, RunStatus.FAILED)
    failed = api.get(f"/runs/{run.pk}", user=operator).json()
    listed = api.get("/runs", user=operator).json()["items"][0]

    assert (pending["is_terminal"], pending["is_active"]) == (False, True)
    assert (failed["is_terminal"], failed["is_active"]) == (True, False)
    assert (listed["is_terminal"], listed["is_active"]) == (True, False)
