"""The admin's view of durable waits: what a waiting run waits for and until when (in the list and
on its page), the Waiting and parent-run filters, a run's signals, parent and child runs, and the
Send signal form, which calls ``send_signal`` and reports what it did or why it did nothing."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_durably import process_until_idle, send_signal
from django_durably.admin import signalling
from django_durably.models import AuditRecord, Run, Signal
from tests import wait_jobs
from tests.factories import WAITING_FOR_SIGNAL, make_run_in, make_signal, make_step
from tests.integration.test_admin import (
    CHANGELIST,
    change_url,
    listed,
    messages_of,
    visible_text,
)
from tests.integration.test_admin_retries import cell_text, inline_rows, shown
from tests.sql import call_and_capture, statements

pytestmark = pytest.mark.django_db(databases="__all__")

SIGNAL_FORM = "admin/durably/run/signal_form.html"


def signal_url(run: Run | uuid.UUID | str) -> str:
    return reverse("admin:durably_run_signal", args=[getattr(run, "pk", run)])


def stored(run: Run) -> Run:
    return Run.objects.get(pk=run.pk)


def iso(value: Any) -> str:
    return value.isoformat()


def sleeping(minutes: float = 5, **fields: Any) -> Run:
    """A run sleeping in step ``cool-down`` for ``minutes`` more."""
    until = timezone.now() + timedelta(minutes=minutes)
    waiting_for = {"kind": "sleep", "step": "cool-down", "until": iso(until)}
    return make_run_in("waiting", waiting_for=waiting_for, wake_at=until, **fields)


def waiting_for_children(parent: Run | None = None, count: int = 3, **fields: Any) -> Run:
    """A run waiting in step ``fan-in`` for ``count`` child runs (pending ones, made here)."""
    parent = parent or make_run_in("waiting")
    children = [make_run_in("pending", parent=parent) for _ in range(count)]
    waiting_for = {
        "kind": "runs",
        "step": "fan-in",
        "runs": [str(child.pk) for child in children],
        "until": None,
    }
    Run.objects.filter(pk=parent.pk).update(waiting_for=waiting_for, **fields)
    return stored(parent)


def status_notes(response: Any) -> dict[uuid.UUID, str]:
    """The run list's "waiting for" note of each row that has one, by run id."""
    html = response.content.decode()
    notes = {}
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.DOTALL):
        note = re.search(r'<div class="durably-waiting">(.*?)</div>', row, re.DOTALL)
        run_id = re.search(r'<code title="([0-9a-f-]{36})">', row)
        if note and run_id:
            notes[uuid.UUID(run_id[1])] = cell_text(note[1])
    return notes


@pytest.fixture
def signaller(make_user: Any) -> Client:
    """A client logged in as a staff user who may view runs and send them signals."""
    client = Client()
    client.force_login(make_user("signaller", "view_run", "signal_run"))
    return client


def send(client: Client, run: Run, **form: str) -> Any:
    """Post the Send signal form of ``run`` (signal ``approval``, no payload, no key by default)
    and follow the redirect."""
    data = {"name": "approval", "payload": "", "idempotency_key": ""} | form
    return client.post(signal_url(run), data, follow=True)


# -- the run list --------------------------------------------------------------------------------


def test_changelist__says_what_each_waiting_run_waits_for_and_until_when(admin_client):
    for_signal = make_run_in("waiting")
    deadline = timezone.now() + timedelta(days=2)
    with_deadline = make_run_in(
        "waiting",
        waiting_for={"kind": "signal", "step": "ok", "signal": "deploy", "until": iso(deadline)},
        wake_at=deadline,
    )
    asleep = sleeping()
    fan_in = waiting_for_children()
    woken = make_run_in("pending", waiting_for=WAITING_FOR_SIGNAL)  # pending again: no note

    response = admin_client.get(CHANGELIST)

    assert status_notes(response) == {
        for_signal.pk: "Waiting for signal 'approval'",
        with_deadline.pk: f"Waiting for signal 'deploy' until {shown(deadline)}",
        asleep.pk: f"Sleeping until {shown(asleep.wake_at)}",
        fan_in.pk: "Waiting for 3 child runs",
    }
    assert woken.pk in listed(response)
    html = response.content.decode()
    assert 'class="durably-status durably-status-waiting"' in html
    assert ">Waiting</span>" in html


def test_changelist__a_child_run_links_to_its_parent(admin_client):
    parent = make_run_in("waiting")
    child = make_run_in("pending", parent=parent)

    html = admin_client.get(CHANGELIST).content.decode()

    link = (
        f'<a href="{change_url(parent)}"><code title="{parent.pk}">{str(parent.pk)[:8]}</code></a>'
    )
    assert f'<div class="durably-parent">child of {link}</div>' in html
    assert html.count('class="durably-parent"') == 1
    assert child.pk != parent.pk


def test_changelist__waiting_runs_cost_no_query_per_row(
    admin_client, db_alias, django_assert_max_num_queries
):
    parent = waiting_for_children(count=2)
    admin_client.get(CHANGELIST)  # warm up the session and content types
    few = statements(db_alias, lambda: admin_client.get(CHANGELIST))
    for i in range(10):
        sleeping(minutes=i + 1, parent=parent)
        make_run_in("waiting", parent=parent)

    with django_assert_max_num_queries(8, using=db_alias):
        response = admin_client.get(CHANGELIST)

    assert len(status_notes(response)) == 21
    assert len(statements(db_alias, lambda: admin_client.get(CHANGELIST))) == len(few)


def test_changelist__filters_waiting_runs(admin_client):
    waiting, running = make_run_in("waiting"), make_run_in("leased")
    make_run_in("pending", waiting_for=WAITING_FOR_SIGNAL)  # woken: pending, not waiting

    for query in ({"status": "waiting"}, {"status__exact": "waiting"}):
        assert listed(admin_client.get(CHANGELIST, query)) == {waiting.pk}, query
    both = {"status__in": "waiting,running"}
    assert listed(admin_client.get(CHANGELIST, both)) == {waiting.pk, running.pk}
    assert listed(admin_client.get(CHANGELIST, {"status": "running"})) == {running.pk}
    html = admin_client.get(CHANGELIST).content.decode()
    assert '<a href="?status__exact=waiting">Waiting</a>' in html


def test_changelist__filters_by_parent_run(admin_client):
    parent = make_run_in("waiting")
    children = [make_run_in("pending", parent=parent), make_run_in("completed", parent=parent)]
    other_child = make_run_in("pending", parent=make_run_in("completed"))
    top_level = {parent.pk, other_child.parent_id}

    by_parent = admin_client.get(CHANGELIST, {"parent": str(parent.pk)})

    assert listed(by_parent) == {child.pk for child in children}
    assert f"Child runs of {str(parent.pk)[:8]}" in visible_text(by_parent)
    assert listed(admin_client.get(CHANGELIST, {"parent": "any"})) == {
        *(child.pk for child in children),
        other_child.pk,
    }
    assert listed(admin_client.get(CHANGELIST, {"parent": "none"})) == top_level
    assert listed(admin_client.get(CHANGELIST, {"parent": str(uuid.uuid4())})) == set()
    html = admin_client.get(CHANGELIST).content.decode()
    assert '<a href="?parent=any">Child runs</a>' in html


@pytest.mark.parametrize("value", ["not-a-run", "12"])
def test_changelist__a_parent_that_is_not_a_run_id_is_refused_as_django_refuses_lookups(
    admin_client, value
):
    make_run_in("pending")

    response = admin_client.get(CHANGELIST, {"parent": value})

    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


# -- the run's page ------------------------------------------------------------------------------


def test_detail__a_run_waiting_for_a_signal(admin_client, db_alias, django_assert_max_num_queries):
    deadline = timezone.now() + timedelta(days=3)
    run = make_run_in(
        "waiting",
        waiting_for={
            "kind": "signal",
            "step": "sign-off",
            "signal": "approval",
            "until": iso(deadline),
        },
        wake_at=deadline,
    )
    consumed = make_signal(
        run,
        payload={"user": "<b>ada</b>"},
        idempotency_key="approve-41",
        sent_by="ada",
        source="admin",
        consumed_at=timezone.now(),
        consumed_by_step="first-look",
    )
    make_signal(run, name="note", payload=None)
    make_step(run, name="prepare", started_at=run.started_at)

    with django_assert_max_num_queries(10, using=db_alias):
        response = admin_client.get(change_url(run))

    assert response.status_code == 200
    text = visible_text(response)
    assert re.search(
        rf"Wait: Waiting for signal 'approval' until {shown(deadline)} "
        r"\(in (2 d 23 h|3 d 0 h)\), in step 'sign-off'\.",
        text,
    ), text
    assert re.search(rf"Waking at: {shown(deadline)} \(in (2 d 23 h|3 d 0 h)\)", text)
    assert "Started at: Not running: waiting, without a worker." in text
    assert "Parent run" not in text
    rows = inline_rows(response, "signals")
    assert rows == [
        {
            "name": "approval",
            "payload_summary": '{"user": "<b>ada</b>"}',
            "idempotency_key": "approve-41",
            "sent_by": "ada (admin)",
            "sent": shown(Signal.objects.get(pk=consumed.pk).sent_at),
            "consumed": shown(consumed.consumed_at),
            "consumed_by_step": "first-look",
        },
        {
            "name": "note",
            "payload_summary": "-",
            "idempotency_key": "-",
            "sent_by": "ops (python)",
            "sent": rows[1]["sent"],
            "consumed": "not yet",
            "consumed_by_step": "-",
        },
    ]
    html = response.content.decode()
    assert "&lt;b&gt;ada&lt;/b&gt;" in html
    assert "<b>ada</b>" not in html
    assert html.index('id="attempts-group"') < html.index('id="signals-group"')
    assert html.index('id="signals-group"') < html.index('id="steps-group"')
    assert 'id="children-group"' not in html
    assert [b["action"] for b in response.context["durably_buttons"]] == ["signal", "cancel"]


def test_detail__a_run_waiting_for_a_signal_that_has_none_yet_shows_an_empty_table(admin_client):
    run = make_run_in("waiting")

    response = admin_client.get(change_url(run))

    assert inline_rows(response, "signals") == []
    assert "Signals None" in visible_text(response)
    assert "Wait: Waiting for signal 'approval', in step 'approval'." in visible_text(response)


def test_detail__a_plain_run_has_no_wait_fields_and_no_wait_tables(admin_client, db_alias):
    run = make_run_in("completed", output={"ok": True})

    response, sql = call_and_capture(db_alias, lambda: admin_client.get(change_url(run)))

    text = visible_text(response)
    for absent in ("Wait:", "Waiting for", "Waking at", "Parent run", "Signals", "Child runs"):
        assert absent not in text, absent
    html = response.content.decode()
    assert 'id="signals-group"' not in html
    assert 'id="children-group"' not in html
    # Whether it has signals or children is asked in the run's own query, not in queries of theirs.
    assert not [q for q in sql if q.startswith('SELECT "durably_signal"')]
    assert not [q for q in sql if '"durably_run"."parent_id" =' in q]


def test_detail__a_sleeping_run(admin_client):
    run = sleeping(minutes=5)

    text = visible_text(admin_client.get(change_url(run)))

    assert re.search(
        rf"Wait: Sleeping until {shown(run.wake_at)} \(in 4 min 5\d s\), "
        r"in step 'cool-down'\.",
        text,
    ), text


def test_detail__a_run_waiting_for_its_children_lists_them(admin_client):
    parent = waiting_for_children(count=3)
    first, second, third = Run.objects.filter(parent=parent).order_by("created_at", "id")
    Run.objects.filter(pk=second.pk).update(status="completed", completed_at=timezone.now())

    response = admin_client.get(change_url(parent))

    text = visible_text(response)
    assert "Wait: Waiting for 3 child runs (1 finished), in step 'fan-in'." in text
    rows = inline_rows(response, "children")
    assert [(row["run"], row["status"]) for row in rows] == [
        (str(first.pk)[:8], "Pending"),
        (str(second.pk)[:8], "Completed"),
        (str(third.pk)[:8], "Pending"),
    ]
    assert rows[0]["job"] == "tests.jobs.noop"
    assert rows[0]["finished"] == "-"
    html = response.content.decode()
    assert f'<a href="{change_url(first)}"><code title="{first.pk}">' in html
    all_children = f"{CHANGELIST}?parent={parent.pk}"
    assert f'<a href="{all_children}">Show the 3 child runs in the run list</a>' in html
    assert listed(admin_client.get(all_children)) == {first.pk, second.pk, third.pk}


def test_detail__a_long_list_of_children_is_cut(admin_client, monkeypatch):
    monkeypatch.setattr("django_durably.admin.waits.CHILD_ROW_LIMIT", 2)
    parent = waiting_for_children(count=3)

    response = admin_client.get(change_url(parent))

    assert len(inline_rows(response, "children")) == 2
    text = visible_text(response)
    assert "1 more row is not shown." in text
    assert "Show the 3 child runs in the run list" in text


def test_detail__a_child_run_links_to_its_parent(admin_client):
    parent = make_run_in("waiting")
    child = make_run_in("pending", parent=parent)

    response = admin_client.get(change_url(child))

    assert f"Parent run: {str(parent.pk)[:8]}" in visible_text(response)
    link = f'<a href="{change_url(parent)}"><code title="{parent.pk}">'
    assert link in response.content.decode()


def test_detail__a_woken_run_says_its_wait_returns_when_it_gets_there(admin_client):
    run = make_run_in(
        "pending", waiting_for=WAITING_FOR_SIGNAL, attempt=1, started_at=timezone.now()
    )

    text = visible_text(admin_client.get(change_url(run)))

    assert (
        "Wait: Waiting for signal 'approval', in step 'approval'. "
        "Woken: the wait returns when the run reaches it again (it is pending)."
    ) in text
    assert "Not running: pending again, waiting for a worker." in text


def test_detail__a_run_woken_from_a_sleep_still_says_until_when_it_slept(admin_client):
    until = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    naive = {"kind": "sleep", "step": "cool-down", "until": "2026-12-07T10:00:00"}  # read as UTC
    run = make_run_in("leased", waiting_for=naive, wake_at=None)

    text = visible_text(admin_client.get(change_url(run)))

    assert f"Wait: Sleeping until {shown(until)}" in text
    assert "Woken: the wait returns when the run reaches it again (it is running)." in text


# -- the Send signal button ----------------------------------------------------------------------


def test_signal_button__offered_for_unfinished_runs_to_who_may_send(admin_client, make_user):
    def buttons(client: Client, run: Run) -> list[str]:
        response = client.get(change_url(run))
        assert response.status_code == 200
        return [b["action"] for b in response.context["durably_buttons"]]

    runs = {status: make_run_in(status) for status in ("pending", "leased", "waiting")}
    finished = [make_run_in(status) for status in ("completed", "failed", "cancelled")]

    for run in runs.values():
        assert buttons(admin_client, run)[0] == "signal"
    for run in finished:
        assert "signal" not in buttons(admin_client, run)
    html = admin_client.get(change_url(runs["waiting"])).content.decode()
    url = signal_url(runs["waiting"])
    assert f'<a href="{url}" class="durably-button durably-signal">Send signal</a>' in html

    def client_of(username: str, *codenames: str) -> Client:
        client = Client()
        client.force_login(make_user(username, *codenames))
        return client

    assert buttons(client_of("viewer", "view_run"), runs["waiting"]) == []
    assert buttons(client_of("changer", "view_run", "change_run"), runs["waiting"]) == ["cancel"]
    assert buttons(client_of("sender", "view_run", "signal_run"), runs["waiting"]) == ["signal"]


def test_signal_form__offers_the_signal_the_run_waits_for_and_a_key_of_its_own(admin_client):
    run = make_run_in("waiting")

    pages = [admin_client.get(signal_url(run)) for _ in range(2)]

    page = pages[0]
    assert page.status_code == 200
    assert page.templates[0].name == SIGNAL_FORM
    form = page.context["form"]
    assert form["name"].value() == "approval"
    keys = {p.context["form"]["idempotency_key"].value() for p in pages}
    assert len(keys) == 2
    assert all(re.fullmatch(r"admin-[0-9a-f]{32}", key) for key in keys)
    html = page.content.decode()
    assert f'<form method="post" action="{signal_url(run)}" novalidate>' in html
    assert f'<a href="{change_url(run)}" class="button cancel-link">Back to the run</a>' in html
    assert "Waiting for signal 'approval'." in visible_text(page)
    assert not Signal.objects.exists()


def test_signal_form__for_a_run_not_waiting_for_a_signal_says_it_is_stored(admin_client):
    run = sleeping()

    page = admin_client.get(signal_url(run))

    assert page.context["form"]["name"].value() is None
    text = visible_text(page)
    assert "Sleeping until" in text
    running = admin_client.get(signal_url(make_run_in("leased")))
    assert "The run is not waiting for a signal now: the signal is stored" in visible_text(running)


def test_signal_form__wakes_the_run_waiting_for_it(signaller):
    run = make_run_in("waiting")

    response = send(signaller, run, payload='{"approved": true, "by": "ada"}', idempotency_key="k1")

    assert response.redirect_chain == [(change_url(run), 302)]
    assert messages_of(response) == [
        (
            "success",
            f"Signal 'approval' sent: it woke run {str(run.pk)[:8]}, which is pending again.",
        )
    ]
    assert stored(run).status == "pending"
    signal = Signal.objects.get()
    assert (signal.run_id, signal.name, signal.payload, signal.idempotency_key) == (
        run.pk,
        "approval",
        {"approved": True, "by": "ada"},
        "k1",
    )
    assert (signal.sent_by, signal.source) == ("signaller", "admin")
    audit = AuditRecord.objects.get()
    assert (audit.action, audit.actor, audit.source, audit.run_id) == (
        "signal",
        "signaller",
        "admin",
        run.pk,
    )
    assert inline_rows(response, "signals")[0]["sent_by"] == "signaller (admin)"
    [trail] = inline_rows(response, "audit_records")
    assert (trail["action"], trail["transition"]) == ("Send signal", "waiting → pending")


def test_signal_form__an_empty_payload_sends_null(signaller):
    run = make_run_in("waiting")

    send(signaller, run, payload="  \n ")

    assert Signal.objects.get().payload is None


def test_signal_form__stores_a_signal_the_run_does_not_wait_for_yet(signaller):
    running, asleep = make_run_in("leased"), sleeping()

    for run, status in ((running, "running"), (asleep, "waiting")):
        response = send(signaller, run, name="later", payload="[1, 2]")

        assert messages_of(response) == [
            (
                "success",
                f"Signal 'later' stored for run {str(run.pk)[:8]}, which is {status} and not "
                "waiting for it: its next wait for 'later' receives it.",
            )
        ]
    assert [stored(running).status, stored(asleep).status] == ["leased", "waiting"]
    trail = inline_rows(signaller.get(change_url(running)), "audit_records")
    assert [row["transition"] for row in trail] == ["running (unchanged)"]
    assert Signal.objects.filter(name="later", payload=[1, 2]).count() == 2


def test_signal_form__the_same_page_sent_twice_stores_one_signal(admin_client):
    run = make_run_in("waiting")
    key = admin_client.get(signal_url(run)).context["form"]["idempotency_key"].value()

    first = send(admin_client, run, payload='"yes"', idempotency_key=key)
    second = send(admin_client, run, payload='"yes"', idempotency_key=key)

    assert messages_of(first)[0][0] == "success"
    assert messages_of(second) == [
        (
            "warning",
            f"Signal 'approval' was already sent to run {str(run.pk)[:8]} with the idempotency "
            f"key '{key}': it was not stored again.",
        )
    ]
    assert Signal.objects.count() == 1
    assert AuditRecord.objects.count() == 1


@pytest.mark.parametrize(
    ("form", "field", "error"),
    [
        ({"payload": "{nope"}, "payload", "Enter valid JSON: Expecting property name"),
        ({"payload": "NaN"}, "payload", "Enter valid JSON: NaN is not JSON."),
        ({"payload": '{"a": 1} trailing'}, "payload", "Enter valid JSON: Extra data"),
        ({"payload": '"nul \\u0000 inside"'}, "payload", "Null characters are not allowed."),
        ({"payload": '{"note": "nul \\u0000 inside"}'}, "payload", "contains a NUL character"),
        ({"name": ""}, "name", "This field is required."),
        ({"name": "x" * 256}, "name", "Ensure this value has at most 255 characters"),
        ({"name": "bad\x00name"}, "name", "Null characters are not allowed."),
        ({"idempotency_key": "k" * 256}, "idempotency_key", "at most 255 characters"),
        ({"idempotency_key": "retrigger:mine"}, "idempotency_key", "may not start with"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_signal_form__a_bad_value_is_a_form_error_and_nothing_is_sent(
    signaller, form, field, error
):
    run = make_run_in("waiting")
    data = {"name": "approval", "payload": "", "idempotency_key": ""} | form

    response = signaller.post(signal_url(run), data)

    assert response.status_code == 200
    assert response.templates[0].name == SIGNAL_FORM
    errors = response.context["form"].errors
    assert list(errors) == [field]
    assert error in errors[field][0], errors
    assert "Please correct the error below." in visible_text(response)
    if field == "payload":  # what was typed is kept, to be corrected
        assert response.context["form"]["payload"].value() == form["payload"]
    assert not Signal.objects.exists()
    assert stored(run).status == "waiting"


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_signal_form__a_finished_run_cannot_receive_signals(signaller, status):
    run = make_run_in(status)
    refusal = [("error", f"Run {run.pk} cannot receive signals: it is {status}.")]

    opened = signaller.get(signal_url(run), follow=True)
    posted = send(signaller, run)

    for response in (opened, posted):
        assert response.redirect_chain == [(change_url(run), 302)]
        assert messages_of(response) == refusal
    assert not Signal.objects.exists()


def test_signal_form__a_run_that_finished_meanwhile_is_reported(signaller, monkeypatch):
    run = make_run_in("waiting")

    def send_after_the_run_was_cancelled(run_id: Any, *args: Any, **kwargs: Any) -> Any:
        Run.objects.filter(pk=run_id).update(status="cancelled", completed_at=timezone.now())
        return send_signal(run_id, *args, **kwargs)

    monkeypatch.setattr(signalling, "send_signal", send_after_the_run_was_cancelled)

    response = send(signaller, run)

    assert response.redirect_chain == [(change_url(run), 302)]
    assert messages_of(response) == [
        ("error", f"Run {run.pk} cannot receive signals: it is cancelled.")
    ]
    assert not Signal.objects.exists()


def test_signal_form__a_run_deleted_meanwhile_is_reported(signaller, monkeypatch):
    run = make_run_in("waiting")

    def send_after_the_run_was_deleted(run_id: Any, *args: Any, **kwargs: Any) -> Any:
        Run.objects.filter(pk=run_id).delete()
        return send_signal(run_id, *args, **kwargs)

    monkeypatch.setattr(signalling, "send_signal", send_after_the_run_was_deleted)

    response = send(signaller, run)

    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert messages_of(response) == [("error", f"No run exists with id {run.pk}.")]


# -- permissions and requests --------------------------------------------------------------------


def test_signal_form__needs_the_signal_and_view_permissions(make_user):
    run = make_run_in("waiting")

    for codenames in (("view_run",), ("view_run", "change_run"), ("signal_run",)):
        client = Client()
        client.force_login(make_user("-".join(codenames), *codenames))

        assert client.get(signal_url(run)).status_code == 403, codenames
        assert send(client, run).status_code == 403, codenames

    assert not Signal.objects.exists()
    assert stored(run).status == "waiting"


def test_signal_form__refuses_other_methods_unknown_runs_and_anonymous_users(admin_client, client):
    run = make_run_in("waiting")

    response = admin_client.put(signal_url(run))
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST"
    assert admin_client.get(signal_url(uuid.uuid4())).status_code == 404
    assert admin_client.post(signal_url("not-a-uuid"), {"name": "approval"}).status_code == 404
    for response in (client.get(signal_url(run)), client.post(signal_url(run), {"name": "x"})):
        assert response.status_code == 302
        assert "/login/" in response["Location"]
    assert not Signal.objects.exists()


def test_signal_form__needs_a_csrf_token(admin_user: User):
    run = make_run_in("waiting")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)

    assert client.post(signal_url(run), {"name": "approval"}).status_code == 403
    assert not Signal.objects.exists()


# -- with a worker -------------------------------------------------------------------------------


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_signal_form__a_waiting_job_receives_the_payload_and_completes(admin_client):
    run = wait_jobs.awaits_signal.trigger({})
    process_until_idle()
    assert stored(run).status == "waiting"
    assert "Waiting for signal 'approval'" in visible_text(admin_client.get(CHANGELIST))

    response = send(admin_client, run, payload='{"approved_by": "ada"}')

    assert messages_of(response)[0][0] == "success"
    process_until_idle()
    run = stored(run)
    assert run.status == "completed"
    assert run.output == {"approved_by": "ada"}
    [row] = inline_rows(admin_client.get(change_url(run)), "signals")
    assert row["consumed_by_step"] == "approval"
    assert row["consumed"] != "not yet"


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_detail__a_fan_out_shows_its_children_and_each_child_its_parent(admin_client):
    parent = wait_jobs.fans_out.trigger({"count": 2, "children_wait": True})
    process_until_idle()
    children = list(Run.objects.filter(parent=parent).order_by("created_at", "id"))
    assert [child.status for child in children] == ["waiting", "waiting"]

    response = admin_client.get(change_url(parent))

    assert "Wait: Waiting for 2 child runs (0 finished), in step 'fan-in'." in (
        visible_text(response)
    )
    assert {row["run"] for row in inline_rows(response, "children")} == {
        str(child.pk)[:8] for child in children
    }
    for child in children:
        send(admin_client, child, name="go", payload='"done"')
    process_until_idle()
    assert stored(parent).status == "completed"
    rows = inline_rows(admin_client.get(change_url(parent)), "children")
    assert [row["status"] for row in rows] == ["Completed", "Completed"]
