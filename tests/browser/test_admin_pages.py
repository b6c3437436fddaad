"""What a person sees in the admin, in a real Chromium at 1280 x 800: the run list fits, times
have seconds, labels, retries, waits and the original of a retriggered run are shown, a retried
run's page has its attempt timeline, every action asks first, and a waiting run can be sent a signal.

``DURABLY_WRITE_SCREENSHOTS=1`` writes ``docs/images/admin-run-list.png`` and
``admin-run-page.png`` (linked from docs/howto/operate-runs-in-the-admin.md).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from django_durably import Retry, operations, process_until_idle
from django_durably.jobs import Job, register, unregister
from django_durably.models import Run, Signal
from tests import jobs
from tests.browser.conftest import PASSWORD
from tests.factories import make_run_in

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

SECONDS = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
ACTION_BUTTON = re.compile(r"^(Go|Run)$")
"""The button that runs the selected action: "Go" until Django 6.0, "Run" since 6.1."""
LIST_COLUMNS = ["ID", "JOB", "STATUS", "LABELS", "CREATED", "DURATION"]
"""The run list's headers, as the admin's CSS shows them (upper case)."""

FIT = """() => {
    const results = document.querySelector('#changelist .results');
    const box = results.getBoundingClientRect();
    return {
        viewport: window.innerWidth,
        pageOverflow: document.documentElement.scrollWidth - window.innerWidth,
        tableOverflow: results.scrollWidth - results.clientWidth,
        visibleRight: Math.min(window.innerWidth, box.right),
        headers: [...document.querySelectorAll('#result_list thead th')].map(th => ({
            text: (th.querySelector('.text') || th).innerText.trim(),
            right: th.getBoundingClientRect().right,
        })),
        filtersRight: document.querySelector('#changelist-filter').getBoundingClientRect().right,
    };
}"""


WEBHOOK_JOB = "webhooks.jobs.deliver_partner_webhook"
RETRIED_JOB = "tests.browser.retried_three_steps"


@pytest.fixture
def retried_jobs() -> Iterator[dict[str, Job[Any, Any]]]:
    """Two jobs that retry, registered until the test ends: ``webhooks.jobs.deliver_partner_webhook``
    (``tests.jobs.noop`` with 5 attempts) and ``tests.browser.retried_three_steps``
    (``tests.jobs.three_steps`` with 3 attempts at once and a 2-minute timeout)."""
    definitions = {
        WEBHOOK_JOB: dataclasses.replace(jobs.noop, name=WEBHOOK_JOB, retry=Retry(max_attempts=5)),
        RETRIED_JOB: dataclasses.replace(
            jobs.three_steps,
            name=RETRIED_JOB,
            retry=Retry(max_attempts=3, initial_delay=0, jitter=False),
            timeout=120.0,
        ),
    }
    for definition in definitions.values():
        register(definition)
    yield definitions
    for name in definitions:
        unregister(name)


TIMELINE_OVERFLOW = """() => {
    const timeline = document.querySelector('#attempts-group fieldset');
    return {
        page: Math.max(0, document.documentElement.scrollWidth - window.innerWidth),
        timeline: Math.max(0, timeline.scrollWidth - timeline.clientWidth),
    };
}"""


def a_day_of_runs() -> dict[str, Run]:
    """Runs a team might have on a busy day: long job names, labels, progress, every status."""
    now = timezone.now()

    def at(seconds_ago: float) -> dict[str, Any]:
        return {"created_at": now - timedelta(seconds=seconds_ago)}

    return {
        "running": make_run_in(
            "leased",
            job_name="imports.jobs.import_contacts_from_crm",
            queue="imports",
            labels={"tenant": "acme", "source": "crm-export-2026-12"},
            progress={"current": 1200, "total": 5000, "message": "saving contacts"},
            **at(4),
        ),
        "waiting": make_run_in(
            "pending",
            job_name="billing.jobs.send_invoice_reminders",
            queue="billing",
            priority=5,
            labels={"tenant": "globex", "batch": "7", "region": "eu-west", "plan": "pro"},
            **at(9),
        ),
        "done": make_run_in(
            "completed",
            job_name="reports.jobs.build_monthly_revenue_report",
            queue="reports",
            labels={"tenant": "acme"},
            progress={"current": 12, "total": 12, "message": "done"},
            output={"rows": 48213},
            **at(95),
        ),
        "failed": make_run_in(
            "failed",
            job_name="search.jobs.reindex_catalogue",
            labels={"tenant": "initech"},
            progress={"current": 3, "total": 8},
            **at(240),
        ),
        "cancelled": make_run_in(
            "cancelled",
            job_name="imports.jobs.import_contacts_from_crm",
            queue="imports",
            labels={"tenant": "globex", "source": "manual-upload"},
            **at(600),
        ),
        "counting": make_run_in(
            "leased",
            job_name="media.jobs.transcode_uploaded_videos",
            queue="media",
            progress={"current": 57, "total": None, "message": None},
            **at(30),
        ),
        "retrying": make_run_in(
            "pending",
            job_name=WEBHOOK_JOB,
            queue="webhooks",
            labels={"partner": "initech"},
            attempt=2,
            failed_attempts=2,
            retry_at=now + timedelta(minutes=4),
            run_after=now + timedelta(minutes=4),
            **at(420),
        ),
        "approval": awaiting_approval(**at(1800)),
    }


def awaiting_approval(**fields: Any) -> Run:
    """A refund waiting (for two more days at most) for a manager's signal ``approval``."""
    until = timezone.now() + timedelta(days=2)
    waiting_for = {
        "kind": "signal",
        "step": "manager-approval",
        "signal": "approval",
        "until": until.isoformat(),
    }
    values: dict[str, Any] = {
        "job_name": "billing.jobs.refund_large_order",
        "queue": "billing",
        "labels": {"tenant": "acme"},
        "waiting_for": waiting_for,
        "wake_at": until,
    }
    return make_run_in("waiting", **(values | fields))


def test_run_list__the_useful_columns_fit_at_1280px(
    log_in, superuser, live_server, screenshot, expect, retried_jobs
):
    runs = a_day_of_runs()
    page = log_in(superuser)

    page.goto(f"{live_server.url}/admin/durably/run/")

    fit = page.evaluate(FIT)
    assert fit["viewport"] == 1280
    assert [header["text"] for header in fit["headers"]][1:] == LIST_COLUMNS
    assert fit["pageOverflow"] <= 0, "the page scrolls sideways"
    assert fit["tableOverflow"] <= 0, "the table scrolls sideways"
    for header in fit["headers"]:
        assert header["right"] <= fit["visibleRight"] + 0.5, header
    assert fit["filtersRight"] <= 1280
    running = page.locator("#result_list tbody tr", has_text=str(runs["running"].pk)[:8])
    assert running.locator(".field-status_cell .durably-status").inner_text() == "Running"
    assert running.locator(".field-labels_list").inner_text() == (
        "source=crm-export-2026-12 tenant=acme"
    )
    assert SECONDS.fullmatch(running.locator(".field-created_cell").inner_text())
    waiting = page.locator("#result_list tbody tr", has_text=str(runs["waiting"].pk)[:8])
    assert (
        waiting.locator(".field-labels_list").inner_text()
        == "batch=7 plan=pro region=eu-west +1 more"
    )
    retrying = page.locator("#result_list tbody tr", has_text=str(runs["retrying"].pk)[:8])
    retry_note = " ".join(retrying.locator(".durably-retrying").inner_text().split())
    assert re.fullmatch(rf"retrying at {SECONDS.pattern}", retry_note), retry_note
    assert retrying.locator(".durably-attempt").inner_text() == "attempt 2 of 5"
    approval = page.locator("#result_list tbody tr", has_text=str(runs["approval"].pk)[:8])
    assert approval.locator(".durably-status").inner_text() == "Waiting"
    wait_note = " ".join(approval.locator(".durably-waiting").inner_text().split())
    assert re.fullmatch(rf"Waiting for signal 'approval' until {SECONDS.pattern}", wait_note), (
        wait_note
    )
    assert page.locator("#changelist-filter").get_by_role("link", name="Running").is_visible()
    retrying_filter = page.locator('#changelist-filter details[data-filter-title="retrying"]')
    assert retrying_filter.get_by_role("link", name="Yes").is_visible()
    screenshot(page, "admin-run-list.png")

    page.locator("#changelist-filter").get_by_role("link", name="Running").click()

    page.wait_for_url("**/admin/durably/run/?status__exact=leased")
    expect(page.locator("#result_list .field-status_cell .durably-status")).to_have_text(
        ["Running", "Running"]
    )


def test_run_page__a_retriggered_run_with_its_times_labels_and_original(
    log_in, superuser, live_server, screenshot
):
    jobs.FLAGS["fail"] = "b"
    original = jobs.three_steps.trigger({"x": 1}, labels={"tenant": "acme", "source": "nightly"})
    process_until_idle()
    jobs.FLAGS.clear()
    retriggered = operations.retrigger_run(original.pk, actor="ada", idempotency_key="k")
    process_until_idle()
    page = log_in(superuser)

    page.goto(f"{live_server.url}/admin/durably/run/{retriggered.pk}/change/")

    assert page.title().startswith(f"tests.three_steps {retriggered.pk} (completed)")
    row = page.locator(".field-retriggered_from .readonly")
    assert re.fullmatch(rf"{str(original.pk)[:8]} by ada at {SECONDS.pattern}", row.inner_text()), (
        row.inner_text()
    )
    assert page.locator(".field-idempotency_key").count() == 0
    assert page.locator(".field-labels_display .readonly").inner_text() == (
        "source=nightly tenant=acme"
    )
    for field in ("created", "started", "finished", "updated"):
        assert SECONDS.search(page.locator(f".field-{field} .readonly").inner_text()), field
    assert re.fullmatch(r"[\d.]+ s", page.locator(".field-duration .readonly").inner_text())
    steps = page.locator("#steps-group tbody tr")
    assert steps.count() == 3
    assert SECONDS.fullmatch(steps.first.locator(".field-started").inner_text())
    screenshot(page, "admin-run-page.png", full_page=True)

    row.get_by_role("link").click()

    page.wait_for_url(f"**/admin/durably/run/{original.pk}/change/")
    assert page.locator(".field-status_display .readonly").inner_text() == "Failed"
    trail = page.locator("#audit_records-group tbody tr").first
    assert "new run" in trail.inner_text()


def test_run_page__the_attempt_timeline_of_a_retried_run(
    log_in, superuser, live_server, retried_jobs
):
    jobs.FLAGS["fail"] = "b"
    run = retried_jobs[RETRIED_JOB].trigger({"x": 1})
    process_until_idle(max_runs=1)  # attempt 1 fails in step b, and is to be retried at once
    jobs.FLAGS.clear()
    process_until_idle()  # attempt 2 replays step a and completes
    page = log_in(superuser)

    page.goto(f"{live_server.url}/admin/durably/run/{run.pk}/change/")

    assert page.title().startswith(f"{RETRIED_JOB} {run.pk} (completed)")
    assert page.locator(".field-attempt .readonly").inner_text() == "2"
    assert page.locator(".field-retry_policy .readonly").inner_text() == (
        "3 attempts, 0s x2 up to 600s"
    )
    assert page.locator(".field-timeout .readonly").inner_text() == "2 min 00 s"
    timeline = page.locator("#attempts-group")
    assert timeline.locator("h2").inner_text() == "ATTEMPTS"
    headers = timeline.locator("thead th").all_inner_texts()
    assert headers == [
        "ATTEMPT",
        "OUTCOME",
        "WORKER",
        "STARTED AT",
        "ENDED AT",
        "DURATION",
        "ERROR",
        "RETRY AT",
    ]
    failed, completed = timeline.locator("tbody tr").all()
    assert failed.locator(".field-number").inner_text() == "1"
    assert failed.locator(".field-outcome_display").inner_text() == "Failed"
    assert failed.locator(".field-error_summary").inner_text() == (
        "builtins.RuntimeError: step b failed on purpose"
    )  # the traceback stays folded
    assert SECONDS.fullmatch(failed.locator(".field-retry_at_display").inner_text())
    assert completed.locator(".field-outcome_display").inner_text() == "Completed"
    assert completed.locator(".field-error_summary").inner_text() == "-"
    for row in (failed, completed):
        assert row.locator(".field-worker_display").inner_text() not in ("", "-")
        for field in ("started", "ended"):
            assert SECONDS.fullmatch(row.locator(f".field-{field}").inner_text()), field
        assert re.fullmatch(r"[\d.]+ s", row.locator(".field-duration").inner_text())
    overflow = page.evaluate(TIMELINE_OVERFLOW)
    assert overflow == {"page": 0, "timeline": 0}, "the page or the timeline scrolls sideways"


def test_cancel_button__asks_first_and_can_be_taken_back(log_in, on_call, live_server):
    run = make_run_in("leased", job_name="imports.jobs.import_contacts_from_crm")
    page = log_in(on_call)
    run_page = f"{live_server.url}/admin/durably/run/{run.pk}/change/"
    page.goto(run_page)
    assert page.locator(".object-tools a").all_inner_texts() == ["CANCEL RUN"]

    page.get_by_role("link", name="Cancel run").click()

    assert page.locator(".durably-question").inner_text() == (
        "Are you sure you want to cancel this run?"
    )
    assert Run.objects.get(pk=run.pk).status == "leased"
    page.get_by_role("link", name="No, take me back").click()
    page.wait_for_url(run_page)
    assert page.locator(".field-status_display .readonly").inner_text() == "Running"

    page.get_by_role("link", name="Cancel run").click()
    page.get_by_role("button", name="Yes, I’m sure").click()

    page.wait_for_url(run_page)
    assert page.locator(".messagelist .success").inner_text() == (
        f"Run {str(run.pk)[:8]} cancelled. Its worker stops at the next step boundary."
    )
    assert page.locator(".field-status_display .readonly").inner_text() == "Cancelled"
    assert Run.objects.get(pk=run.pk).status == "cancelled"


def test_bulk_resume__lists_what_it_will_do_and_asks_first(log_in, superuser, live_server, expect):
    failed = [make_run_in("failed"), make_run_in("cancelled")]
    running = make_run_in("leased")
    page = log_in(superuser)
    page.goto(f"{live_server.url}/admin/durably/run/")
    for run in [*failed, running]:
        page.check(f'input[name="_selected_action"][value="{run.pk}"]')
    page.select_option('select[name="action"]', "resume_runs")

    page.get_by_role("button", name=ACTION_BUTTON).click()

    assert page.locator(".durably-question").inner_text() == (
        "Are you sure you want to resume these 2 runs?"
    )
    listed = page.locator(".durably-confirmation-list li").all_inner_texts()
    assert sorted(text.split()[0] for text in listed) == sorted(str(r.pk)[:8] for r in failed)
    assert page.locator(".durably-kept").inner_text() == (
        "Only failed and cancelled runs can be resumed; left as they are: 1 running."
    )
    assert {Run.objects.get(pk=run.pk).status for run in failed} == {"failed", "cancelled"}

    page.get_by_role("button", name="Yes, I’m sure").click()

    # The page said what it leaves alone; the message is about the runs it was sent.
    expect(page.locator(".messagelist .success")).to_have_text("2 runs resumed.")
    assert {Run.objects.get(pk=run.pk).status for run in failed} == {"pending"}
    assert Run.objects.get(pk=running.pk).status == "leased"


@pytest.fixture
def signaller(django_user_model: Any) -> Any:
    """A staff user who may view runs and send them signals, nothing more."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("signaller", password=PASSWORD, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="durably", codename__in=["view_run", "signal_run"]
        )
    )
    return user


def test_send_signal__a_form_error_then_the_signal_wakes_the_waiting_run(
    log_in, signaller, live_server, expect
):
    run = awaiting_approval()
    page = log_in(signaller)
    run_page = f"{live_server.url}/admin/durably/run/{run.pk}/change/"
    page.goto(run_page)
    assert page.locator(".field-status_display .readonly").inner_text() == "Waiting"
    wait = page.locator(".field-waiting_for_display .readonly").inner_text()
    assert re.fullmatch(
        rf"Waiting for signal 'approval' until {SECONDS.pattern} \(in (47 h 59 min|2 d 0 h)\), "
        r"in step 'manager-approval'\.",
        wait,
    ), wait
    assert page.locator("#signals-group .durably-none").inner_text() == "None"
    assert page.locator(".object-tools a").all_inner_texts() == ["SEND SIGNAL"]

    page.get_by_role("link", name="Send signal").click()

    assert page.locator(".durably-wait").inner_text().startswith("Waiting for signal 'approval'")
    assert page.get_by_label("Signal").input_value() == "approval"
    assert page.get_by_label("Idempotency key").input_value().startswith("admin-")
    page.get_by_label("Payload").fill('{"approved_by": "ada", }')
    page.get_by_role("button", name="Send signal").click()

    expect(page.locator(".errornote")).to_have_text("Please correct the error below.")
    error = page.locator(".field-payload .errorlist").inner_text()
    assert error.startswith("Enter valid JSON: Expecting property name"), error
    assert page.get_by_label("Payload").input_value() == '{"approved_by": "ada", }'
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    assert not Signal.objects.exists()
    page.get_by_label("Payload").fill('{"approved_by": "ada"}')
    page.get_by_role("button", name="Send signal").click()

    page.wait_for_url(run_page)
    assert page.locator(".messagelist .success").inner_text() == (
        f"Signal 'approval' sent: it woke run {str(run.pk)[:8]}, which is pending again."
    )
    assert page.locator(".field-status_display .readonly").inner_text() == "Pending"
    row = page.locator("#signals-group tbody tr")
    assert row.locator(".field-name").inner_text() == "approval"
    assert row.locator(".field-payload_summary").inner_text() == '{"approved_by": "ada"}'
    assert row.locator(".field-sent_by").inner_text() == "signaller (admin)"
    assert row.locator(".field-consumed").inner_text() == "not yet"
    assert Run.objects.get(pk=run.pk).status == "pending"
    assert Signal.objects.get().payload == {"approved_by": "ada"}
