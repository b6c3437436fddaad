"""The HTTP API's view of retries (issue 15): a run's ``retry_at``, ``failed_attempts`` and its
job's ``max_attempts``, the ``retrying`` filter, the attempt history (``GET /runs/{id}/attempts``),
each step's ``step_attempt``, and a retry in the event stream.

Rows come from the factories, except in the end-to-end tests, where a worker retries a job that
fails once; the attempt that completed a run has no row, so its tests set the run's own fields
(``completed_run``). Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from django_durably import Retry, StepContext, process_next
from django_durably.jobs import define_job, register, unregister
from django_durably.models import AttemptOutcome, Run, RunStatus
from django_durably.schemas import AttemptOutcomeName
from django_durably.stream import run_events
from tests import jobs
from tests.factories import ERROR, make_attempt, make_run, make_run_in, make_step
from tests.sql import statements

pytestmark = pytest.mark.django_db(databases="__all__")

MISSING = "00000000-0000-4000-8000-000000000000"
FLAKY = "tests.api.flaky"
TWICE = Retry(max_attempts=2, initial_delay=0, jitter=False)


def fails_once(step: StepContext, input: Any) -> str:
    """Fails on its first call (of the test), then succeeds."""
    jobs.count("fails_once")
    if jobs.CALLS["fails_once"] == 1:
        raise RuntimeError("first try fails")
    return "second try"


@pytest.fixture
def flaky() -> Iterator[Any]:
    """A registered job tried up to twice, at once, that fails on its first try."""
    definition = register(
        define_job(
            fails_once,
            name=FLAKY,
            queue=None,
            priority=None,
            concurrency_key=None,
            input_schema=None,
            output_schema=None,
            retry=TWICE,
        )
    )
    yield definition
    unregister(FLAKY)


def completed_run(attempt: int, **fields: Any) -> Run:
    """A run completed by its attempt ``attempt``, on ``w-last`` in 1.5 s: all the run records of
    that attempt, which has no ``RunAttempt`` row."""
    ended = timezone.now()
    values = {
        "status": RunStatus.COMPLETED,
        "attempt": attempt,
        "lease_generation": attempt,
        "lease_owner": "w-last",
        "started_at": ended - timedelta(minutes=1),
        "attempt_started_at": ended - timedelta(seconds=1.5),
        "completed_at": ended,
    }
    return make_run(**(values | fields))


def retrying_run(**fields: Any) -> Run:
    """A pending run of ``tests.jobs.noop`` waiting for its retry in an hour, after one failure."""
    retry_at = timezone.now() + timedelta(hours=1)
    values = {"attempt": 1, "failed_attempts": 1, "retry_at": retry_at, "run_after": retry_at}
    return make_run_in(RunStatus.PENDING, **(values | fields))


def ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.json()
    return {item["id"] for item in response.json()["items"]}


def shown(moment: datetime) -> datetime:
    """``moment`` as the API shows it (to the millisecond)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def events(stream: Any) -> Iterator[tuple[str, Any]]:
    """``(event, data)`` of each server-sent event of ``stream`` (comments skipped)."""
    for chunk in stream:
        if not chunk.startswith(":"):
            fields = dict(line.split(": ", 1) for line in chunk.strip().splitlines())
            yield fields["event"], json.loads(fields["data"])


# -- runs: retry_at, failed_attempts, max_attempts ---------------------------------------------


def test_get_run__a_run_waiting_for_its_retry(api, operator):
    run = retrying_run()

    body = api.get(f"/runs/{run.pk}", user=operator).json()

    assert body["status"] == "pending"
    assert parse_datetime(body["retry_at"]) == shown(run.retry_at)
    assert body["failed_attempts"] == 1
    assert body["max_attempts"] == 1  # noop has no retry policy (and no default is set)


def test_get_run__no_retry_at_unless_pending(api, operator):
    run = make_run_in(RunStatus.FAILED, failed_attempts=3, retry_at=timezone.now())

    body = api.get(f"/runs/{run.pk}", user=operator).json()

    assert body["retry_at"] is None
    assert body["failed_attempts"] == 3


def test_get_run__max_attempts_of_the_registered_jobs_policy(api, operator, flaky, settings):
    run = make_run(job_name=FLAKY)
    settings.DURABLY_DEFAULT_RETRY = {"max_attempts": 7}
    noop = make_run_in(RunStatus.PENDING)
    gone = make_run(job_name="tests.jobs.renamed_away")

    def max_attempts(run: Run) -> Any:
        return api.get(f"/runs/{run.pk}", user=operator).json()["max_attempts"]

    assert max_attempts(run) == 2
    assert max_attempts(noop) == 7  # DURABLY_DEFAULT_RETRY, read now
    assert max_attempts(gone) is None


def test_get_run__a_misconfigured_default_policy_gives_no_max_attempts(api, operator, settings):
    run = make_run_in(RunStatus.PENDING)
    settings.DURABLY_DEFAULT_RETRY = {"max_attempts": 0}

    response = api.get(f"/runs/{run.pk}", user=operator)

    assert response.status_code == 200
    assert response.json()["max_attempts"] is None


def test_list_runs__items_show_retry_at_and_failed_attempts_but_not_max_attempts(api, operator):
    run = retrying_run()

    (item,) = api.get("/runs", user=operator).json()["items"]

    assert item["id"] == str(run.pk)
    assert item["retry_at"] is not None
    assert item["failed_attempts"] == 1
    assert "max_attempts" not in item


# -- GET /runs?retrying= -----------------------------------------------------------------------


def test_list_runs__retrying_filter(api, operator):
    waiting = retrying_run()
    fresh = make_run_in(RunStatus.PENDING)
    running = make_run_in(RunStatus.LEASED, failed_attempts=1)
    failed = make_run_in(RunStatus.FAILED, failed_attempts=2)

    def listed(query: str) -> set[str]:
        return ids(api.get(f"/runs?{query}", user=operator))

    assert listed("retrying=true") == {str(waiting.pk)}
    assert listed("retrying=false") == {str(fresh.pk), str(running.pk), str(failed.pk)}
    assert listed("retrying=false&status=pending") == {str(fresh.pk)}
    assert listed("retrying=true&status=failed") == set()
    assert listed("status=pending") == {str(waiting.pk), str(fresh.pk)}  # still every pending run


def test_list_runs__retrying_matches_the_querysets_definition(api, operator):
    retrying_run()
    make_run_in(RunStatus.PENDING)
    make_run_in(RunStatus.CANCELLED, retry_at=timezone.now())  # not pending: not retrying

    listed = ids(api.get("/runs?retrying=true", user=operator))

    assert listed == {str(pk) for pk in Run.objects.retrying().values_list("pk", flat=True)}


@pytest.mark.parametrize("value", ["maybe", "", "2", "true,false"])
def test_list_runs__retrying_not_a_boolean_422(api, operator, value):
    response = api.get(f"/runs?retrying={value}", user=operator)

    assert response.status_code == 422, response.json()
    assert [(error["loc"], error["type"]) for error in response.json()["detail"]] == [
        (["query", "retrying"], "bool_parsing")
    ]


# -- GET /runs/{id}/attempts -------------------------------------------------------------------


def test_list_attempts__in_order_with_a_total(api, operator):
    run = completed_run(attempt=3, lease_owner="w-3")
    retry_at = timezone.now() - timedelta(minutes=1)
    ended = timezone.now()
    make_attempt(run, number=1, outcome=AttemptOutcome.FAILED, error=ERROR, retry_at=retry_at)
    make_attempt(
        run,
        number=2,
        outcome=AttemptOutcome.LOST,
        worker="w-2",
        started_at=ended - timedelta(seconds=2.5),
        ended_at=ended,
    )
    make_attempt(make_run_in(RunStatus.FAILED), number=1)  # another run's

    body = api.get(f"/runs/{run.pk}/attempts", user=operator).json()

    assert body["count"] == 3
    first, lost, last = body["items"]
    assert [item["number"] for item in body["items"]] == [1, 2, 3]
    assert [item["outcome"] for item in body["items"]] == ["failed", "lost", "completed"]
    assert first["error"] == ERROR
    assert parse_datetime(first["retry_at"]) == shown(retry_at)
    assert (lost["worker"], lost["duration_seconds"]) == ("w-2", 2.5)
    assert set(last) == {
        "number",
        "worker",
        "started_at",
        "ended_at",
        "duration_seconds",
        "outcome",
        "error",
        "retry_at",
    }


def test_list_attempts__the_completed_attempt_is_read_from_the_run(api, operator):
    run = completed_run(attempt=2, lease_owner="w-last")
    make_attempt(run, number=1)

    last = api.get(f"/runs/{run.pk}/attempts", user=operator).json()["items"][-1]

    assert last == {
        "number": 2,
        "worker": "w-last",
        "started_at": last["started_at"],
        "ended_at": last["ended_at"],
        "duration_seconds": 1.5,
        "outcome": "completed",
        "error": None,
        "retry_at": None,
    }
    assert parse_datetime(last["started_at"]) == shown(run.attempt_started_at)
    assert parse_datetime(last["ended_at"]) == shown(run.completed_at)


def test_list_attempts__a_run_completed_by_its_first_attempt_has_that_one(api, operator):
    run = completed_run(attempt=1)

    body = api.get(f"/runs/{run.pk}/attempts", user=operator).json()

    assert body["count"] == 1
    assert [(item["number"], item["outcome"]) for item in body["items"]] == [(1, "completed")]


def test_list_attempts__paged_by_limit_and_offset(api, operator):
    run = make_run_in(RunStatus.FAILED, attempt=5)
    for number in range(1, 6):
        make_attempt(run, number=number)

    page = api.get(f"/runs/{run.pk}/attempts?limit=2&offset=3", user=operator).json()

    assert page["count"] == 5
    assert [item["number"] for item in page["items"]] == [4, 5]


@pytest.mark.parametrize(
    ("query", "numbers"),
    [
        ("limit=2", [1, 2]),
        ("limit=2&offset=2", [3, 4]),  # the last stored row, then the completed attempt
        ("limit=3", [1, 2, 3]),  # just the stored rows
        ("limit=1&offset=3", [4]),  # past the stored rows: the completed attempt
        ("limit=5&offset=3", [4]),
        ("offset=4", []),  # past the end
    ],
)
def test_list_attempts__pages_run_on_into_the_completed_attempt(api, operator, query, numbers):
    run = completed_run(attempt=4)
    for number in range(1, 4):
        make_attempt(run, number=number)

    page = api.get(f"/runs/{run.pk}/attempts?{query}", user=operator).json()

    assert page["count"] == 4
    assert [item["number"] for item in page["items"]] == numbers


def test_list_attempts__the_completed_attempt_costs_no_query(api, operator, db_alias):
    completed = completed_run(attempt=3)
    failed = make_run_in(RunStatus.FAILED, attempt=3)
    for run in (completed, failed):
        for number in (1, 2):
            make_attempt(run, number=number)
    api.get(f"/runs/{failed.pk}/attempts", user=operator)  # warm up

    def attempts_of(run: Run) -> list[str]:
        return statements(db_alias, lambda: api.get(f"/runs/{run.pk}/attempts", user=operator))

    assert len(attempts_of(completed)) == len(attempts_of(failed))


def test_list_attempts__an_unknown_start_has_no_duration(api, operator):
    run = make_run_in(RunStatus.FAILED)
    make_attempt(run, started_at=None, outcome=AttemptOutcome.LOST)

    (item,) = api.get(f"/runs/{run.pk}/attempts", user=operator).json()["items"]

    assert (item["started_at"], item["duration_seconds"]) == (None, None)


def test_list_attempts__a_run_not_yet_tried_has_none(api, operator):
    run = make_run_in(RunStatus.PENDING)

    body = api.get(f"/runs/{run.pk}/attempts", user=operator).json()

    assert body == {"count": 0, "items": []}


def test_list_attempts__unknown_run_404(api, operator):
    response = api.get(f"/runs/{MISSING}/attempts", user=operator)

    assert response.status_code == 404
    assert response.json() == {
        "detail": f"No run exists with id {MISSING}.",
        "code": "run_not_found",
    }


@pytest.mark.parametrize(
    ("query", "loc", "kind"),
    [
        ("limit=0", ["query", "limit"], "greater_than_equal"),
        ("limit=201", ["query", "limit"], "less_than_equal"),
        ("offset=-1", ["query", "offset"], "greater_than_equal"),
    ],
)
def test_list_attempts__invalid_page_422(api, operator, query, loc, kind):
    run = make_run_in(RunStatus.FAILED)

    response = api.get(f"/runs/{run.pk}/attempts?{query}", user=operator)

    assert response.status_code == 422
    assert [(error["loc"], error["type"]) for error in response.json()["detail"]] == [(loc, kind)]


def test_attempt_outcome_name__lists_every_outcome():
    assert list(typing.get_args(AttemptOutcomeName)) == list(AttemptOutcome.values)


# -- steps: step_attempt -----------------------------------------------------------------------


def test_list_steps__each_row_says_which_try_of_the_step_it_records(api, operator):
    run = make_run_in(RunStatus.COMPLETED, attempt=2)
    make_step(run, status="failed", error=ERROR, attempt=1, step_attempt=1)
    make_step(run, status="failed", error=ERROR, attempt=1, step_attempt=2)
    make_step(run, attempt=2, step_attempt=3)

    items = api.get(f"/runs/{run.pk}/steps", user=operator).json()["items"]

    assert [(item["attempt"], item["step_attempt"]) for item in items] == [(1, 1), (1, 2), (2, 3)]


# -- end to end: a worker retries the run ------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_api__a_failed_try_is_retried_and_recorded(api, operator, flaky):
    run = flaky.trigger(None)

    assert process_next().status == "retrying"
    waiting = api.get(f"/runs/{run.pk}", user=operator).json()
    listed = ids(api.get("/runs?retrying=true", user=operator))
    assert process_next().status == "completed"
    done = api.get(f"/runs/{run.pk}", user=operator).json()
    attempts = api.get(f"/runs/{run.pk}/attempts", user=operator).json()

    assert (waiting["status"], waiting["failed_attempts"], waiting["max_attempts"]) == (
        "pending",
        1,
        2,
    )
    assert waiting["retry_at"] is not None
    assert listed == {str(run.pk)}
    assert (done["status"], done["retry_at"], done["output"]) == ("completed", None, "second try")
    assert attempts["count"] == 2
    failed, completed = attempts["items"]
    assert (failed["number"], failed["outcome"]) == (1, "failed")
    assert failed["error"]["message"] == "first try fails"
    assert failed["retry_at"] == waiting["retry_at"]
    assert (completed["number"], completed["outcome"], completed["error"]) == (2, "completed", None)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_run_events__a_retry_is_a_status_event_with_retry_at(flaky):
    run = flaky.trigger(None)
    with closing(run_events(Run.objects.all(), run.pk, poll_interval=0.01)) as stream:
        seen = events(stream)
        first, snapshot = next(seen)
        process_next()
        retry = next(
            data for event, data in seen if event == "status" and data["status"] == "pending"
        )
        process_next()
        rest = list(seen)

    stored = Run.objects.get(pk=run.pk).attempts.get(number=1)
    assert (first, snapshot["retry_at"], snapshot["failed_attempts"]) == ("snapshot", None, 0)
    assert retry["attempt"] == 1
    assert parse_datetime(retry["retry_at"]) == shown(stored.retry_at)
    statuses = [(data["status"], data["retry_at"]) for event, data in rest if event == "status"]
    assert statuses[-1] == ("completed", None)
    assert rest[-1] == ("end", {"status": "completed"})
