"""The HTTP API of durable waits: sending signals to runs (``POST /runs/{id}/signals/{name}``),
listing them, and what runs, steps, attempts and the event stream show of waiting runs.

Requests go through ninja's TestClient on the router. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from django_durably import process_until_idle
from django_durably.models import (
    AttemptOutcome,
    AuditRecord,
    Run,
    RunStatus,
    Signal,
    StepStatus,
)
from django_durably.schemas import RunStatusName, StepStatusName
from django_durably.stream import run_events
from tests import wait_jobs
from tests.factories import (
    WAITING_FOR_SIGNAL,
    make_attempt,
    make_run_in,
    make_signal,
    make_step,
)

pytestmark = pytest.mark.django_db(databases="__all__")

MISSING = "00000000-0000-4000-8000-000000000000"
SLEEPING = {"kind": "sleep", "step": "cool-down", "until": "2026-12-07T10:00:00+00:00"}


@pytest.fixture
def signaller(make_user: Any) -> Any:
    """A staff user who may read runs and send them signals."""
    return make_user("signaller", "view_run", "signal_run")


def signal(api: Any, user: Any, run: Any, name: str = "approval", **body: Any) -> Any:
    return api.post(f"/runs/{getattr(run, 'pk', run)}/signals/{name}", json=body, user=user)


def stored(run: Run) -> Run:
    return Run.objects.get(pk=run.pk)


# -- POST /runs/{run_id}/signals/{name} --------------------------------------------------------


def test_send_signal__wakes_a_run_waiting_for_it_201(api, signaller):
    run = make_run_in(RunStatus.WAITING)

    response = signal(api, signaller, run, payload={"user": "ada"})

    assert response.status_code == 201
    sent = Signal.objects.get()
    assert response.json() == {
        "signal_id": sent.pk,
        "run_id": str(run.pk),
        "name": "approval",
        "created": True,
        "woke": True,
        "run_status": "pending",
    }
    assert stored(run).status == RunStatus.PENDING
    assert (sent.name, sent.payload, sent.idempotency_key) == ("approval", {"user": "ada"}, None)
    assert (sent.sent_by, sent.source, sent.consumed_at) == ("signaller", "api", None)
    record = AuditRecord.objects.get()
    assert (record.action, record.actor, record.source) == ("signal", "signaller", "api")


@pytest.mark.parametrize("status", [RunStatus.PENDING, RunStatus.LEASED])
def test_send_signal__to_a_run_not_waiting_yet_is_stored_for_its_wait(api, signaller, status):
    run = make_run_in(status)

    response = signal(api, signaller, run)

    assert response.status_code == 201
    assert (response.json()["woke"], response.json()["run_status"]) == (False, status)
    assert stored(run).status == status
    assert Signal.objects.get().payload is None


def test_send_signal__to_a_run_waiting_for_another_signal_stores_it_only(api, signaller):
    run = make_run_in(RunStatus.WAITING)

    response = signal(api, signaller, run, name="rejection")

    assert response.status_code == 201
    assert (response.json()["woke"], response.json()["run_status"]) == (False, "waiting")
    assert stored(run).status == RunStatus.WAITING
    assert Signal.objects.get().name == "rejection"


def test_send_signal__without_a_body(api, signaller):
    run = make_run_in(RunStatus.WAITING)

    response = api.post(f"/runs/{run.pk}/signals/approval", user=signaller)

    assert response.status_code == 201
    assert response.json()["woke"] is True
    assert Signal.objects.get().payload is None


@pytest.mark.parametrize("status", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED])
def test_send_signal__to_a_finished_run_409(api, signaller, status):
    run = make_run_in(status)

    response = signal(api, signaller, run, payload=1)

    assert response.status_code == 409
    assert response.json() == {
        "detail": f"Run {run.pk} cannot receive signals: it is {status}.",
        "code": "run_not_waiting",
        "status": status,
        "run_id": str(run.pk),
    }
    assert not Signal.objects.exists()
    assert not AuditRecord.objects.exists()


def test_send_signal__unknown_run_404(api, signaller):
    response = signal(api, signaller, MISSING)

    assert response.status_code == 404
    assert response.json()["code"] == "run_not_found"


def test_send_signal__needs_the_signal_run_permission_403(api, make_user):
    run = make_run_in(RunStatus.WAITING)
    reader = make_user("reader", "view_run", "cancel_run", "resume_run")

    refused = [signal(api, reader, run), signal(api, reader, MISSING)]

    assert [response.status_code for response in refused] == [403, 403]
    assert refused[0].json() == {
        "detail": "You need the permission durably.signal_run.",
        "code": "permission_denied",
    }
    assert stored(run).status == RunStatus.WAITING
    assert not Signal.objects.exists()


def test_send_signal__a_repeated_idempotency_key_200_stores_it_once(api, signaller):
    run = make_run_in(RunStatus.WAITING)

    first = signal(api, signaller, run, payload={"n": 1}, idempotency_key="approve-42")
    again = signal(api, signaller, run, payload={"n": 2}, idempotency_key="approve-42")

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {
        **first.json(),
        "created": False,
        "woke": False,
        "run_status": "pending",
    }
    sent = Signal.objects.get()
    assert (sent.payload, sent.idempotency_key) == ({"n": 1}, "approve-42")
    assert AuditRecord.objects.count() == 1


def test_send_signal__a_repeated_key_to_a_run_since_finished_still_200(api, signaller):
    run = make_run_in(RunStatus.WAITING)
    first = signal(api, signaller, run, idempotency_key="k")
    Run.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLED)

    again = signal(api, signaller, run, idempotency_key="k")

    assert again.status_code == 200
    assert again.json()["signal_id"] == first.json()["signal_id"]
    assert again.json()["run_status"] == "cancelled"


def test_send_signal__names_may_hold_any_character(signaller):
    run = make_run_in(RunStatus.PENDING)
    client = Client()  # the real URLconf, which decodes the path
    client.force_login(signaller)

    response = client.post(
        f"/durably/runs/{run.pk}/signals/team/odd%0Aname", {}, content_type="application/json"
    )

    assert response.status_code == 201
    assert response.json()["name"] == "team/odd\nname"
    assert Signal.objects.get().name == "team/odd\nname"


@pytest.mark.parametrize(
    ("name", "body", "loc", "kind"),
    [
        ("approval", {"payload": 1, "user": "ada"}, ["body", "signal", "user"], "extra_forbidden"),
        (
            "approval",
            {"idempotency_key": ""},
            ["body", "signal", "idempotency_key"],
            "string_too_short",
        ),
        ("approval", {"idempotency_key": 5}, ["body", "signal", "idempotency_key"], "string_type"),
        (
            "approval",
            {"idempotency_key": "a\x00"},
            ["body", "signal", "idempotency_key"],
            "string_pattern_mismatch",
        ),
        (
            "approval",
            {"idempotency_key": "k" * 256},
            ["body", "signal", "idempotency_key"],
            "string_too_long",
        ),
        ("approval", {"payload": {"a": "\x00"}}, ["body", "signal", "payload"], "invalid_value"),
        ("approval", [1], ["body", "signal"], "model_attributes_type"),
        ("a" * 256, {}, ["path", "name"], "string_too_long"),
        ("a\x00b", {}, ["path", "name"], "string_pattern_mismatch"),
    ],
)
def test_send_signal__invalid_request_422(api, signaller, name, body, loc, kind):
    run = make_run_in(RunStatus.WAITING)

    response = api.post(f"/runs/{run.pk}/signals/{name}", json=body, user=signaller)

    assert response.status_code == 422, response.json()
    assert [(error["loc"], error["type"]) for error in response.json()["detail"]] == [(loc, kind)]
    assert stored(run).status == RunStatus.WAITING
    assert not Signal.objects.exists()


def test_send_signal__a_payload_too_large_to_store_422(api, signaller, settings):
    settings.DURABLY_MAX_OUTPUT_BYTES = 100
    run = make_run_in(RunStatus.WAITING)

    response = signal(api, signaller, run, payload="x" * 200)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "signal", "payload"]
    assert not Signal.objects.exists()


def test_send_signal__not_json_400(api, signaller):
    run = make_run_in(RunStatus.WAITING)

    response = api.post(
        f"/runs/{run.pk}/signals/approval",
        data=b"{not json",
        content_type="application/json",
        user=signaller,
    )

    assert response.status_code == 400
    assert not Signal.objects.exists()


def test_send_signal__another_scopes_run_404(api, make_user, settings):
    settings.DURABLY_API_SCOPE = "tests.api_hooks.TenantScope"
    run = make_run_in(RunStatus.WAITING, labels={"tenant": "globex"})
    acme = make_user("acme-ops", "view_run", "signal_run")
    globex = make_user("globex-ops", "view_run", "signal_run")

    hidden = [signal(api, acme, run), api.get(f"/runs/{run.pk}/signals", user=acme)]

    assert [response.status_code for response in hidden] == [404, 404]
    assert not Signal.objects.exists()
    assert signal(api, globex, run).status_code == 201


# -- GET /runs/{run_id}/signals ----------------------------------------------------------------


def test_list_signals__oldest_first_with_a_total(api, signaller):
    run = make_run_in(RunStatus.WAITING)
    consumed_at = timezone.now()
    first = make_signal(
        run, payload={"user": "ada"}, consumed_at=consumed_at, consumed_by_step="approval"
    )
    second = make_signal(run, name="rejection", idempotency_key="r-1", source="api")
    make_signal(make_run_in(RunStatus.WAITING))  # another run's

    response = api.get(f"/runs/{run.pk}/signals", user=signaller)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [item["id"] for item in body["items"]] == [first.pk, second.pk]
    item = body["items"][0]
    assert set(item) == {
        "id",
        "name",
        "payload",
        "idempotency_key",
        "sent_by",
        "source",
        "sent_at",
        "consumed_at",
        "consumed_by_step",
    }
    assert (item["name"], item["payload"], item["sent_by"]) == ("approval", {"user": "ada"}, "ops")
    assert parse_datetime(item["consumed_at"]) == shown(consumed_at)
    assert item["consumed_by_step"] == "approval"
    later = body["items"][1]
    assert (later["idempotency_key"], later["source"], later["consumed_at"]) == ("r-1", "api", None)
    assert later["consumed_by_step"] == ""


def test_list_signals__paged_and_filtered_by_name(api, signaller):
    run = make_run_in(RunStatus.WAITING)
    sent = [make_signal(run, name="approval" if i % 2 else "ping") for i in range(5)]

    page = api.get(f"/runs/{run.pk}/signals?limit=2&offset=1", user=signaller).json()
    named = api.get(f"/runs/{run.pk}/signals?name=approval", user=signaller).json()

    assert page["count"] == 5
    assert [item["id"] for item in page["items"]] == [s.pk for s in sent[1:3]]
    assert named["count"] == 2
    assert [item["id"] for item in named["items"]] == [sent[1].pk, sent[3].pk]


def test_list_signals__a_run_without_signals_has_none(api, signaller):
    run = make_run_in(RunStatus.PENDING)

    assert api.get(f"/runs/{run.pk}/signals", user=signaller).json() == {"count": 0, "items": []}


def test_list_signals__unknown_run_404_and_needs_view_run_403(api, signaller, make_user):
    run = make_run_in(RunStatus.WAITING)

    unknown = api.get(f"/runs/{MISSING}/signals", user=signaller)
    refused = api.get(f"/runs/{run.pk}/signals", user=make_user("nobody", "signal_run"))

    assert (unknown.status_code, unknown.json()["code"]) == (404, "run_not_found")
    assert (refused.status_code, refused.json()["code"]) == (403, "permission_denied")


# -- runs: status, wake_at, waiting_for, parent ------------------------------------------------


def test_get_run__a_waiting_run_shows_what_it_waits_for_and_until_when(api, signaller):
    run = make_run_in(
        RunStatus.WAITING, waiting_for=SLEEPING, wake_at=datetime(2026, 12, 7, 10, tzinfo=UTC)
    )

    body = api.get(f"/runs/{run.pk}", user=signaller).json()

    assert (body["status"], body["is_terminal"], body["is_active"]) == ("waiting", False, True)
    assert body["wake_at"] == "2026-12-07T10:00:00Z"
    assert body["waiting_for"] == {
        "kind": "sleep",
        "step": "cool-down",
        "until": "2026-12-07T10:00:00Z",
    }
    assert body["parent_id"] is None
    assert body["retry_at"] is None


@pytest.mark.parametrize(
    "waiting_for",
    [
        WAITING_FOR_SIGNAL,
        {"kind": "runs", "step": "fan-in", "runs": [MISSING], "until": None},
    ],
)
def test_get_run__each_kind_of_wait_is_shown_as_stored(api, signaller, waiting_for):
    run = make_run_in(RunStatus.WAITING, waiting_for=waiting_for)

    body = api.get(f"/runs/{run.pk}", user=signaller).json()

    assert body["waiting_for"] == waiting_for
    assert body["wake_at"] is None


def test_get_run__a_run_that_never_waited(api, signaller):
    body = api.get(f"/runs/{make_run_in(RunStatus.COMPLETED).pk}", user=signaller).json()

    assert (body["wake_at"], body["waiting_for"], body["parent_id"]) == (None, None, None)


def test_list_runs__filters_waiting_runs_and_children_of_a_run(api, signaller):
    parent = make_run_in(RunStatus.WAITING)
    children = [make_run_in(RunStatus.PENDING, parent=parent) for _ in range(2)]
    other_child = make_run_in(RunStatus.COMPLETED, parent=make_run_in(RunStatus.COMPLETED))

    def listed(query: str) -> set[str]:
        response = api.get(f"/runs?{query}", user=signaller)
        assert response.status_code == 200, response.json()
        return {item["id"] for item in response.json()["items"]}

    assert listed("status=waiting") == {str(parent.pk)}
    assert listed("status=waiting&status=pending") == {str(parent.pk)} | {
        str(c.pk) for c in children
    }
    assert listed(f"parent={parent.pk}") == {str(c.pk) for c in children}
    assert listed(f"parent={parent.pk}&status=completed") == set()
    assert listed(f"parent={other_child.parent_id}") == {str(other_child.pk)}
    assert listed(f"parent={MISSING}") == set()
    items = api.get(f"/runs?parent={parent.pk}", user=signaller).json()["items"]
    assert {item["parent_id"] for item in items} == {str(parent.pk)}


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("status=asleep", ["query", "filters", "status", 0]),
        ("parent=nope", ["query", "parent"]),
    ],
)
def test_list_runs__invalid_wait_filters_422(api, signaller, query, loc):
    response = api.get(f"/runs?{query}", user=signaller)

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [loc]


def test_status_names__every_run_and_step_status_is_in_the_contract():
    assert list(typing.get_args(RunStatusName)) == list(RunStatus.values)
    assert list(typing.get_args(StepStatusName)) == list(StepStatus.values)


# -- steps and attempts ------------------------------------------------------------------------


def test_list_steps__a_waits_record_is_a_waiting_step(api, signaller):
    run = make_run_in(RunStatus.WAITING)
    make_step(run, index=0, name="before", output=1)
    make_step(run, index=1, name="approval", status=StepStatus.WAITING, output=WAITING_FOR_SIGNAL)

    items = api.get(f"/runs/{run.pk}/steps", user=signaller).json()["items"]

    assert [(item["name"], item["status"]) for item in items] == [
        ("before", "completed"),
        ("approval", "waiting"),
    ]
    assert items[1]["output"] == WAITING_FOR_SIGNAL


def test_list_attempts__an_attempt_released_at_a_wait(api, signaller):
    run = make_run_in(RunStatus.WAITING)
    make_attempt(run, outcome=AttemptOutcome.WAITING)

    items = api.get(f"/runs/{run.pk}/attempts", user=signaller).json()["items"]

    assert [(item["number"], item["outcome"], item["error"]) for item in items] == [
        (1, "waiting", None)
    ]


# -- end to end: a job waits, a signal through the API wakes it --------------------------------


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_api__a_signal_wakes_a_waiting_job_which_returns_its_payload(api, signaller):
    run = wait_jobs.awaits_signal.trigger(None)
    process_until_idle()
    waiting = api.get(f"/runs/{run.pk}", user=signaller).json()

    sent = signal(api, signaller, run, payload={"user": "ada"})
    woken = api.get(f"/runs/{run.pk}", user=signaller).json()
    process_until_idle()
    done = api.get(f"/runs/{run.pk}", user=signaller).json()

    assert (waiting["status"], waiting["wake_at"]) == ("waiting", None)
    assert waiting["waiting_for"]["kind"] == "signal"
    assert waiting["waiting_for"]["signal"] == "approval"
    assert (sent.status_code, sent.json()["woke"]) == (201, True)
    assert woken["status"] == "pending"
    assert (done["status"], done["output"], done["waiting_for"]) == (
        "completed",
        {"user": "ada"},
        None,
    )
    signals = api.get(f"/runs/{run.pk}/signals", user=signaller).json()["items"]
    assert signals[0]["consumed_at"] is not None
    steps = api.get(f"/runs/{run.pk}/steps", user=signaller).json()["items"]
    assert "waiting" in [step["status"] for step in steps]
    attempts = api.get(f"/runs/{run.pk}/attempts", user=signaller).json()["items"]
    assert [attempt["outcome"] for attempt in attempts] == ["waiting", "completed"]


# -- the event stream --------------------------------------------------------------------------


def events(stream: Any) -> Iterator[tuple[str, Any]]:
    """``(event, data)`` of each server-sent event of ``stream`` (comments skipped)."""
    for chunk in stream:
        if not chunk.startswith(":"):
            fields = dict(line.split(": ", 1) for line in chunk.strip().splitlines())
            yield fields["event"], json.loads(fields["data"])


def next_status(seen: Iterator[tuple[str, Any]]) -> dict[str, Any]:
    """The data of the next ``status`` event."""
    data: dict[str, Any] = next(data for event, data in seen if event == "status")
    return data


def shown(moment: datetime) -> datetime:
    """``moment`` as the API shows it (to the millisecond)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_run_events__a_run_going_waiting_and_waking_are_status_events():
    run = make_run_in(RunStatus.LEASED)
    wake_at = timezone.now() + timedelta(hours=1)
    with closing(run_events(Run.objects.all(), run.pk, poll_interval=0.01)) as stream:
        seen = events(stream)
        first, snapshot = next(seen)
        Run.objects.filter(pk=run.pk).update(
            status=RunStatus.WAITING, wake_at=wake_at, waiting_for=SLEEPING, lease_owner=""
        )
        went_waiting = next_status(seen)
        Run.objects.filter(pk=run.pk).update(status=RunStatus.PENDING, wake_at=None)
        woke = next_status(seen)
        Run.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLED, waiting_for=None)
        rest = list(seen)

    assert (first, snapshot["wake_at"], snapshot["waiting_for"]) == ("snapshot", None, None)
    assert went_waiting["status"] == "waiting"
    assert parse_datetime(went_waiting["wake_at"]) == shown(wake_at)
    assert went_waiting["waiting_for"] == SLEEPING
    assert (woke["status"], woke["wake_at"], woke["waiting_for"]) == ("pending", None, SLEEPING)
    assert rest == [
        (
            "status",
            {
                "status": "cancelled",
                "attempt": 1,
                "retry_at": None,
                "wake_at": None,
                "waiting_for": None,
            },
        ),
        ("end", {"status": "cancelled"}),
    ]
