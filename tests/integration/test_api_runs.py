"""The HTTP API's run endpoints: listing (filters, ordering, cursor pages), steps, logs, and the
operator actions cancel, resume, retrigger and delete with their audit records and 409s.

Requests go through ninja's TestClient on the router. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from django_durably import process_until_idle
from django_durably.jobs import TriggerItem
from django_durably.models import AuditRecord, Run, RunLog, RunStatus, Step
from tests import jobs
from tests.factories import make_log, make_step, move_to
from tests.sql import call_and_capture

pytestmark = pytest.mark.django_db(databases="__all__")

MISSING = "00000000-0000-4000-8000-000000000000"
ERROR = {"type": "builtins.RuntimeError", "message": "boom", "traceback": "Traceback ..."}


def b64(value: Any) -> str:
    """A cursor-shaped parameter holding ``value``."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def ids(response: Any) -> list[str]:
    return [item["id"] for item in response.json()["items"]]


def newest_first(runs: Any) -> list[str]:
    return [str(pk) for pk in runs.order_by("-created_at", "-id").values_list("pk", flat=True)]


def all_pages(api: Any, user: Any, query: str = "", limit: int = 2) -> list[str]:
    seen: list[str] = []
    cursor = ""
    for _ in range(100):
        page = api.get(f"/runs?limit={limit}{query}{cursor}", user=user)
        assert page.status_code == 200, page.json()
        seen += ids(page)
        if page.json()["next_cursor"] is None:
            return seen
        cursor = f"&cursor={page.json()['next_cursor']}"
    raise AssertionError("the pages never ended")


# -- GET /runs ---------------------------------------------------------------------------------


def test_list_runs__newest_first_without_input_output_or_lease(api, operator):
    older = jobs.noop.trigger({"big": "input"})
    newer = jobs.three_steps.trigger({})
    Run.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(minutes=1))

    response = api.get("/runs", user=operator)

    assert response.status_code == 200
    assert ids(response) == [str(newer.pk), str(older.pk)]
    assert response.json()["next_cursor"] is None
    item = response.json()["items"][0]
    assert set(item) == {
        "id",
        "job_name",
        "queue",
        "priority",
        "status",
        "is_terminal",
        "is_active",
        "labels",
        "progress",
        "attempt",
        "failed_attempts",
        "retry_at",
        "wake_at",
        "waiting_for",
        "parent_id",
        "completed_step_count",
        "idempotency_key",
        "concurrency_key",
        "run_after",
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
    }


def test_list_runs__cursor_pages_are_stable_with_equal_created_at(api, operator):
    # One transaction: every run of the batch has the same created_at, so only the id orders them.
    batch = jobs.noop.trigger_many([TriggerItem(input=i) for i in range(5)])
    singles = [jobs.noop.trigger(i) for i in range(2)]
    assert len({run.created_at for run in Run.objects.filter(pk__in=[r.pk for r in batch])}) == 1

    seen = all_pages(api, operator, limit=2)

    assert seen == newest_first(Run.objects.all())
    assert len(seen) == len(set(seen)) == len(batch) + len(singles)
    tied = [pk for pk in seen if uuid.UUID(pk) in {run.pk for run in batch}]
    assert tied == sorted(tied, key=lambda pk: uuid.UUID(pk).hex, reverse=True)


def test_list_runs__new_runs_do_not_shift_later_pages(api, operator):
    runs = [jobs.noop.trigger(i) for i in range(4)]
    first = api.get("/runs?limit=2", user=operator)

    jobs.noop.trigger("newer than every page")
    second = api.get(f"/runs?limit=2&cursor={first.json()['next_cursor']}", user=operator)

    assert ids(first) + ids(second) == newest_first(Run.objects.filter(pk__in=[r.pk for r in runs]))
    assert second.json()["next_cursor"] is None


def test_list_runs__a_cursor_still_works_once_its_run_is_deleted(api, operator, db_alias):
    for i in range(4):
        jobs.noop.trigger(i)
        Run.objects.filter(input=i).update(created_at=timezone.now() - timedelta(minutes=i))
    first = api.get("/runs?limit=2", user=operator)
    Run.objects.filter(pk=ids(first)[-1]).delete()

    second = api.get(f"/runs?limit=2&cursor={first.json()['next_cursor']}", user=operator)

    assert len(ids(second)) == 2
    assert not set(ids(first)) & set(ids(second))


def test_list_runs__exact_page_size_has_no_next_page(api, operator):
    for i in range(3):
        jobs.noop.trigger(i)

    page = api.get("/runs?limit=3", user=operator)

    assert len(ids(page)) == 3
    assert page.json()["next_cursor"] is None


def test_list_runs__filters_by_job_and_status_any_of(api, operator):
    noop = jobs.noop.trigger(None)
    failed = jobs.three_steps.trigger({})
    move_to(failed, RunStatus.FAILED)
    completed = jobs.counted.trigger({"n": 1})
    move_to(completed, RunStatus.COMPLETED)

    def listed(query: str) -> set[str]:
        response = api.get(f"/runs?{query}", user=operator)
        assert response.status_code == 200, response.json()
        return set(ids(response))

    assert listed("job=tests.jobs.noop") == {str(noop.pk)}
    assert listed("job=tests.jobs.noop&job=tests.three_steps") == {str(noop.pk), str(failed.pk)}
    assert listed("status=failed&status=completed") == {str(failed.pk), str(completed.pk)}
    assert listed("status=pending&job=tests.three_steps") == set()
    assert listed("job=no.such.job") == set()


def test_list_runs__filters_by_labels_all_of(api, operator):
    both = jobs.noop.trigger(1, labels={"tenant": "acme", "env": "prod"})
    acme = jobs.noop.trigger(2, labels={"tenant": "acme"})
    jobs.noop.trigger(3, labels={"tenant": "globex", "env": "prod"})
    odd = jobs.noop.trigger(4, labels={"team/region": "eu.1"})

    def listed(query: str) -> set[str]:
        response = api.get(f"/runs?{query}", user=operator)
        assert response.status_code == 200, response.json()
        return set(ids(response))

    assert listed("label.tenant=acme") == {str(both.pk), str(acme.pk)}
    assert listed("label.tenant=acme&label.env=prod") == {str(both.pk)}
    assert listed("label.env=staging") == set()
    assert listed("label.team/region=eu.1") == {str(odd.pk)}


def test_list_runs__filters_by_creation_time(api, operator):
    now = timezone.now()
    old = jobs.noop.trigger("old")
    Run.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=2))
    new = jobs.noop.trigger("new")
    cut = (now - timedelta(days=1)).isoformat().replace("+00:00", "Z")

    after = api.get(f"/runs?created_after={cut}", user=operator)
    before = api.get(f"/runs?created_before={cut}", user=operator)

    assert ids(after) == [str(new.pk)]
    assert ids(before) == [str(old.pk)]


def test_list_runs__created_after_a_runs_own_time_includes_it(api, operator):
    """The boundary is inclusive for created_after and exclusive for created_before, to the
    microsecond as the API shows it (SQLite's clock once wrote a text that broke this)."""
    run = jobs.noop.trigger(None)
    shown = api.get(f"/runs/{run.pk}", user=operator).json()["created_at"]
    query = shown.replace("+", "%2B")

    assert ids(api.get(f"/runs?created_after={query}", user=operator)) == [str(run.pk)]
    assert ids(api.get(f"/runs?created_before={query}", user=operator)) == []


def test_list_runs__include_lease(api, operator):
    run = jobs.noop.trigger(None)
    move_to(run, RunStatus.LEASED, lease_owner="w-9", lease_generation=2)

    item = api.get("/runs?include=lease", user=operator).json()["items"][0]

    assert item["lease"]["owner"] == "w-9"
    assert item["lease"]["generation"] == 2


@pytest.mark.parametrize(
    ("query", "loc", "kind"),
    [
        pytest.param("status=sleeping", ["query", "filters", "status", 0], "literal_error", id="status"),
        pytest.param("limit=0", ["query", "limit"], "greater_than_equal", id="limit-0"),
        pytest.param("limit=201", ["query", "limit"], "less_than_equal", id="limit-201"),
        pytest.param("limit=x", ["query", "limit"], "int_parsing", id="limit-type"),
        pytest.param("cursor=bm9wZQ", ["query", "cursor"], "invalid_query", id="cursor-base64"),
        pytest.param("cursor=%25%25", ["query", "cursor"], "invalid_query", id="cursor-garbage"),
        pytest.param("cursor=" + b64([1, 2]), ["query", "cursor"], "invalid_query", id="cursor-ints"),
        pytest.param("cursor=" + b64(["2026-01-01T00:00", "x"]), ["query", "cursor"], "invalid_query", id="cursor-naive"),
        pytest.param("cursor=" + b64(["0001-01-01T00:00+01:00", "a" * 32]), ["query", "cursor"], "invalid_query", id="cursor-year-0"),
        pytest.param("cursor=" + b64({}), ["query", "cursor"], "invalid_query", id="cursor-object"),
        pytest.param("created_after=yesterday", ["query", "created_after"], "datetime_from_date_parsing", id="time"),
        pytest.param("created_before=2026-01-01T00:00:00", ["query", "created_before"], "timezone_aware", id="naive"),
        pytest.param("label.bad%20key=x", ["query", "label.bad key"], "invalid_labels", id="label-key"),
        pytest.param("label.=x", ["query", "label."], "invalid_labels", id="label-empty-key"),
        pytest.param("label.k=a&label.k=b", ["query", "label.k"], "invalid_labels", id="label-twice"),
        pytest.param("label.k=a%00", ["query", "label.k"], "invalid_labels", id="label-nul"),
        pytest.param("job=a%00", ["query", "filters", "job", 0], "string_pattern_mismatch", id="job-nul"),
        pytest.param("retrying=maybe", ["query", "retrying"], "bool_parsing", id="retrying"),
    ],
)  # fmt: skip
def test_list_runs__invalid_query_422(api, operator, query, loc, kind):
    response = api.get(f"/runs?{query}", user=operator)

    assert response.status_code == 422, response.json()
    assert [(error["loc"], error["type"]) for error in response.json()["detail"]] == [(loc, kind)]


def test_list_runs__unknown_parameters_are_ignored(api, operator):
    jobs.noop.trigger(None)

    assert len(ids(api.get("/runs?colour=blue", user=operator))) == 1


# -- GET /runs/{id}/steps and /logs ------------------------------------------------------------


def make_steps(run: Run, count: int) -> list[Step]:
    """``count`` steps of ``run``, completed and failed in turn, made in reverse order."""
    started = timezone.now()
    return [
        make_step(
            run,
            index=index,
            name=f"s{index}",
            status="completed" if index % 2 == 0 else "failed",
            output={"i": index} if index % 2 == 0 else None,
            error=None if index % 2 == 0 else ERROR,
            started_at=started,
        )
        for index in reversed(range(count))
    ]


def test_list_steps__in_execution_order_with_a_total(api, operator):
    run = jobs.three_steps.trigger({})
    make_steps(run, 5)
    make_steps(jobs.noop.trigger(None), 2)  # another run's steps

    page = api.get(f"/runs/{run.pk}/steps?limit=2&offset=1", user=operator)

    assert page.status_code == 200
    body = page.json()
    assert body["count"] == 5
    assert [step["name"] for step in body["items"]] == ["s1", "s2"]
    failed, completed = body["items"]
    assert failed["status"] == "failed"
    assert failed["error"] == ERROR
    assert failed["output"] is None
    assert completed["output"] == {"i": 2}
    assert set(completed) == {
        "id",
        "index",
        "name",
        "status",
        "attempt",
        "step_attempt",
        "output",
        "error",
        "started_at",
        "completed_at",
    }


def test_list_steps__unknown_run_404(api, operator):
    response = api.get(f"/runs/{MISSING}/steps", user=operator)

    assert response.status_code == 404
    assert response.json()["code"] == "run_not_found"


def test_list_logs__oldest_first_paged_and_polled_with_after(api, operator):
    run = jobs.noop.trigger(None)
    lines = [make_log(run, message=f"line {i}", data={"i": i}) for i in range(4)]

    page = api.get(f"/runs/{run.pk}/logs?limit=3", user=operator).json()
    newer = api.get(f"/runs/{run.pk}/logs?after={lines[1].pk}", user=operator).json()

    assert page["count"] == 4
    assert [line["message"] for line in page["items"]] == ["line 0", "line 1", "line 2"]
    assert page["items"][0]["data"] == {"i": 0}
    assert [line["message"] for line in newer["items"]] == ["line 2", "line 3"]
    assert newer["count"] == 2


def test_list_logs__unknown_run_404(api, operator):
    assert api.get(f"/runs/{MISSING}/logs", user=operator).status_code == 404


# -- operator actions --------------------------------------------------------------------------


def audit(run_id: Any) -> list[tuple[str, str, str, str]]:
    return list(
        AuditRecord.objects.filter(run_uuid=run_id)
        .order_by("id")
        .values_list("action", "actor", "source", "from_status")
    )


def test_cancel__a_pending_run_records_who_and_where(api, operator):
    run = jobs.noop.trigger(None)

    response = api.post(f"/runs/{run.pk}/cancel", user=operator)

    assert response.status_code == 200
    body = response.json()
    assert body["cancelled"] is True
    assert body["from_status"] == "pending"
    assert body["run"]["status"] == "cancelled"
    assert body["run"]["id"] == str(run.pk)
    assert "lease" not in body["run"]
    assert audit(run.pk) == [("cancel", "operator", "api", "pending")]


def test_cancel__again_is_a_no_op(api, operator):
    run = jobs.noop.trigger(None)
    api.post(f"/runs/{run.pk}/cancel", user=operator)

    response = api.post(f"/runs/{run.pk}/cancel", user=operator)

    assert response.status_code == 200
    assert response.json()["cancelled"] is False
    assert response.json()["from_status"] == "cancelled"
    assert len(audit(run.pk)) == 1


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_cancel__a_finished_run_409_with_its_status(api, operator, status):
    run = jobs.noop.trigger(None)
    move_to(run, status)

    response = api.post(f"/runs/{run.pk}/cancel", user=operator)

    assert response.status_code == 409
    assert response.json() == {
        "detail": f"Run {run.pk} cannot be cancelled: it is {status}.",
        "code": "run_not_cancellable",
        "status": status,
        "run_id": str(run.pk),
    }


def test_resume__a_failed_run_goes_back_to_pending(api, operator):
    run = jobs.noop.trigger(None)
    move_to(run, RunStatus.FAILED, error=ERROR)

    response = api.post(f"/runs/{run.pk}/resume", user=operator)

    assert response.status_code == 200
    assert response.json()["from_status"] == "failed"
    assert response.json()["run"]["status"] == "pending"
    assert response.json()["run"]["error"] is None
    assert audit(run.pk) == [("resume", "operator", "api", "failed")]


@pytest.mark.parametrize("status", ["pending", "leased", "completed"])
def test_resume__other_statuses_409(api, operator, status):
    run = jobs.noop.trigger(None)
    move_to(run, status)

    response = api.post(f"/runs/{run.pk}/resume", user=operator)

    assert response.status_code == 409
    assert response.json()["code"] == "run_not_resumable"
    assert response.json()["status"] == status


def test_resume__another_pending_run_holds_the_key_409(api, operator):
    old = jobs.singleton.trigger(None)
    move_to(old, RunStatus.FAILED)
    pending = jobs.singleton.trigger(None)

    response = api.post(f"/runs/{old.pk}/resume", user=operator)

    assert response.status_code == 409
    assert response.json()["code"] == "pending_run_exists"
    assert response.json()["run_id"] == str(pending.pk)
    assert response.json()["concurrency_key"] == "singleton"


def test_retrigger__a_finished_run_gives_a_new_pending_run_201(api, operator, db_alias):
    run = jobs.noop.trigger({"x": 1}, labels={"tenant": "acme"})
    move_to(run, RunStatus.COMPLETED, output={"x": 1})

    response = api.post(f"/runs/{run.pk}/retrigger", user=operator)

    assert response.status_code == 201
    body = response.json()
    assert body["retriggered_from"] == str(run.pk)
    assert body["run"]["id"] != str(run.pk)
    assert body["run"]["status"] == "pending"
    assert body["run"]["input"] == {"x": 1}
    assert body["run"]["labels"] == {"tenant": "acme"}
    assert Run.objects.using(db_alias).count() == 2
    assert audit(run.pk) == [("retrigger", "operator", "api", "completed")]


def test_retrigger__the_same_idempotency_key_again_returns_the_first_new_run_200(
    api, operator, db_alias
):
    run = jobs.noop.trigger({"x": 1})
    move_to(run, RunStatus.FAILED)
    headers = {"Idempotency-Key": "retry-7"}

    first = api.post(f"/runs/{run.pk}/retrigger", user=operator, headers=headers)
    again = api.post(f"/runs/{run.pk}/retrigger", user=operator, headers=headers)

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["run"]["id"] == first.json()["run"]["id"]
    assert again.json()["retriggered_from"] == str(run.pk)
    assert Run.objects.using(db_alias).count() == 2
    assert audit(run.pk) == [("retrigger", "operator", "api", "failed")]


def test_retrigger__an_idempotency_key_too_long_422(api, operator, db_alias):
    run = jobs.noop.trigger(None)
    move_to(run, RunStatus.COMPLETED)

    response = api.post(
        f"/runs/{run.pk}/retrigger", user=operator, headers={"Idempotency-Key": "k" * 209}
    )

    assert response.status_code == 422
    assert "Idempotency-Key" in str(response.json()["detail"])
    assert Run.objects.using(db_alias).count() == 1


def test_retrigger__a_running_run_409(api, operator):
    run = jobs.noop.trigger(None)
    move_to(run, RunStatus.LEASED)

    response = api.post(f"/runs/{run.pk}/retrigger", user=operator)

    assert response.status_code == 409
    assert response.json()["code"] == "run_not_retriggerable"
    assert response.json()["status"] == "leased"


def test_retrigger__a_job_no_longer_registered_404(api, operator):
    run = jobs.noop.trigger(None)
    move_to(run, RunStatus.FAILED, job_name="tests.jobs.renamed_away")

    response = api.post(f"/runs/{run.pk}/retrigger", user=operator)

    assert response.status_code == 404
    assert response.json()["code"] == "job_not_found"


def test_retrigger__input_no_longer_valid_422(api, operator):
    run = jobs.greet.trigger({"name": "ada"})
    move_to(run, RunStatus.COMPLETED, input={"times": 2})

    response = api.post(f"/runs/{run.pk}/retrigger", user=operator)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["run", "input", "name"]


def test_delete__a_finished_run_204_and_its_audit_stays(api, operator, db_alias):
    run = jobs.noop.trigger(None)
    move_to(run, RunStatus.CANCELLED)
    make_log(run, message="x")

    response = api.delete(f"/runs/{run.pk}", user=operator)

    assert response.status_code == 204
    assert response.content == b""
    assert not Run.objects.using(db_alias).filter(pk=run.pk).exists()
    assert not RunLog.objects.using(db_alias).exists()
    assert audit(run.pk) == [("delete", "operator", "api", "cancelled")]
    assert api.get(f"/runs/{run.pk}", user=operator).status_code == 404


def test_delete__an_unfinished_run_409(api, operator):
    run = jobs.noop.trigger(None)

    response = api.delete(f"/runs/{run.pk}", user=operator)

    assert response.status_code == 409
    assert response.json()["code"] == "run_not_deletable"
    assert response.json()["status"] == "pending"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/runs/{id}/cancel"),
        ("post", "/runs/{id}/resume"),
        ("post", "/runs/{id}/retrigger"),
        ("delete", "/runs/{id}"),
    ],
)
def test_actions__unknown_run_404(api, operator, method, path):
    response = getattr(api, method)(path.format(id=MISSING), user=operator)

    assert response.status_code == 404
    assert response.json()["code"] == "run_not_found"


# -- end to end with a worker ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_api__trigger_then_process_then_inspect(api, operator):
    created = api.post("/jobs/tests.three_steps/runs", json={"input": {}}, user=operator)
    run_id = created.json()["id"]

    assert process_until_idle() == 1

    run = api.get(f"/runs/{run_id}", user=operator).json()
    steps = api.get(f"/runs/{run_id}/steps", user=operator).json()
    logs = api.get(f"/runs/{run_id}/logs", user=operator).json()
    assert run["status"] == "completed"
    assert run["output"] == {"a": 1, "b": "b", "c": [1, "b"]}
    assert run["progress"] == {"current": 3, "total": 3, "message": "done"}
    assert run["completed_step_count"] == 3
    assert [step["name"] for step in steps["items"]] == ["a", "b", "c"]
    assert [line["message"] for line in logs["items"]] == ["finished"]
    assert logs["items"][0]["data"] == {"a": 1, "b": "b"}


# -- issue 13: aliases and summaries ------------------------------------------------------------


def test_list_runs__running_is_an_alias_of_leased(api, operator):
    leased = jobs.noop.trigger(None)
    move_to(leased, RunStatus.LEASED)
    jobs.noop.trigger(None)

    running = api.get("/runs?status=running", user=operator)
    both = api.get("/runs?status=running&status=leased", user=operator)

    assert ids(running) == [str(leased.pk)]
    assert ids(both) == [str(leased.pk)]
    assert api.get("/runs?status=sleeping", user=operator).status_code == 422


def test_list_runs__input_output_and_error_are_not_read(api, operator, db_alias):
    run = jobs.noop.trigger({"big": "x" * 1000})
    move_to(run, RunStatus.FAILED, output={"o": 1}, error=ERROR)

    response, sql = call_and_capture(db_alias, lambda: api.get("/runs", user=operator))

    assert response.status_code == 200
    (select,) = [statement for statement in sql if "durably_run" in statement]
    for column in ("input", "output", "error"):
        assert f'"durably_run"."{column}"' not in select
    assert f"/runs/{run.pk}" and api.get(f"/runs/{run.pk}", user=operator).json()["error"] == ERROR
