"""The admin: read-only run history, actions and buttons that go through ``operations``."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_durably import operations, process_until_idle
from django_durably.admin.display import format_duration
from django_durably.models import AuditRecord, Run, RunLog, Step
from tests import jobs
from tests.factories import make_audit_record, make_log, make_run_in, make_step
from tests.sql import statements

pytestmark = pytest.mark.django_db(databases="__all__")

CHANGELIST = reverse("admin:durably_run_changelist")
AUDIT_CHANGELIST = reverse("admin:durably_auditrecord_changelist")
FINISHED = ("completed", "failed", "cancelled")


def change_url(run: Run | uuid.UUID) -> str:
    pk = run.pk if isinstance(run, Run) else run
    return reverse("admin:durably_run_change", args=[pk])


def button_url(run: Run | uuid.UUID | str, action: str) -> str:
    pk = run.pk if isinstance(run, Run) else run
    return reverse(f"admin:durably_run_{action}", args=[pk])


def statuses(*runs: Run) -> list[str]:
    return [Run.objects.get(pk=run.pk).status for run in runs]


def messages_of(response: Any) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in response.context["messages"]]


def act(client: Client, action: str, runs: list[Run], **extra: str) -> Any:
    """Run a bulk action on ``runs``, confirmed (as its confirmation page's form sends it)."""
    data = {"action": action, "_selected_action": [str(r.pk) for r in runs], "post": "yes"}
    return client.post(CHANGELIST, data | extra, follow=True)


def choose(client: Client, action: str, runs: list[Run], **extra: str) -> Any:
    """Pick an action for ``runs`` in the list and click Go: its confirmation page."""
    data = {"action": action, "_selected_action": [str(r.pk) for r in runs], "index": "0"}
    return client.post(CHANGELIST, data | extra)


def listed(response: Any) -> set[uuid.UUID]:
    return {run.pk for run in response.context["cl"].result_list}


@pytest.fixture
def staff_client(db: None) -> Any:
    """``staff_client("cancel_run", ...)``: a logged-in staff user with view permission and these."""

    def make(*codenames: str) -> Client:
        user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:8]}", is_staff=True)
        perms = Permission.objects.filter(
            content_type__app_label="durably", codename__in=["view_run", *codenames]
        )
        assert perms.count() == len({"view_run", *codenames})
        user.user_permissions.set(perms)
        client = Client()
        client.force_login(user)
        return client

    return make


# -- the list ----------------------------------------------------------------------------------


def test_changelist__shows_badges_progress_and_timing(admin_client):
    done = make_run_in("completed", job_name="tests.three_steps")
    running = make_run_in("leased", progress={"current": 2, "total": 8, "message": "saving"})
    counting = make_run_in("pending", progress={"current": 5, "total": None, "message": None})
    failed = make_run_in("failed", queue="reports", attempt=3)

    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    assert listed(response) == {done.pk, running.pk, counting.pk, failed.pk}
    html = response.content.decode()
    for status in ("completed", "leased", "pending", "failed"):
        assert f'class="durably-status durably-status-{status}"' in html
    assert ">Running</span>" in html
    assert '<progress value="25" max="100" title="saving"' in html
    assert '<span class="durably-progress">2/8</span>' in html
    assert '<span class="durably-progress">5</span>' in html
    assert str(done.pk)[:8] in html
    assert '<span class="durably-job">tests.<wbr>three_<wbr>steps</span>' in html
    assert '<div class="durably-queue">queue reports</div>' in html
    assert '<div class="durably-attempt">attempt 3</div>' in html
    assert html.count('class="durably-attempt"') == 1  # a first attempt goes without saying
    assert "1 min 30 s" in html  # duration of the finished runs
    assert reverse("admin:durably_run_add") not in html


def test_changelist__query_count_does_not_grow_with_runs(
    admin_client, db_alias, django_assert_max_num_queries
):
    for i in range(3):
        make_run_in("leased", progress={"current": i, "total": 3}, labels={"i": str(i)})
    admin_client.get(CHANGELIST)  # warm up the session and content types
    few = statements(db_alias, lambda: admin_client.get(CHANGELIST))
    for i in range(27):
        make_run_in(FINISHED[i % 3], job_name=f"tests.job_{i % 4}", queue=f"q{i % 2}")

    with django_assert_max_num_queries(8, using=db_alias):
        response = admin_client.get(CHANGELIST)

    assert len(response.context["cl"].result_list) == 30
    many = statements(db_alias, lambda: admin_client.get(CHANGELIST))
    assert len(many) == len(few)
    assert not any('"input"' in sql for sql in many if "durably_run" in sql)


def test_changelist__filters_by_status_job_queue_and_date(admin_client):
    failed = make_run_in("failed", job_name="tests.three_steps")
    pending = make_run_in("pending", queue="reports")
    old = make_run_in("completed")
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=30))

    assert listed(admin_client.get(CHANGELIST, {"status__exact": "failed"})) == {failed.pk}
    assert listed(admin_client.get(CHANGELIST, {"job": jobs.noop.name})) == {pending.pk, old.pk}
    assert listed(admin_client.get(CHANGELIST, {"queue": "reports"})) == {pending.pk}
    week_ago = (timezone.now() - timedelta(days=7)).isoformat()
    assert listed(admin_client.get(CHANGELIST, {"created_at__gte": week_ago})) == {
        failed.pk,
        pending.pk,
    }
    html = admin_client.get(CHANGELIST).content.decode()
    assert "?job=tests.three_steps" in html  # the job filter offers the jobs that have runs
    assert "?queue=reports" in html


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("three_steps", {"a"}),
        ("import-7", {"b"}),
        ("acme", {"b"}),
        ("café", {"c"}),
        ("'say \"hi\"'", {"d"}),
        ("nothing-matches", set()),
    ],
)
def test_changelist__search(admin_client, term, expected):
    runs = {
        "a": make_run_in("completed", job_name="tests.three_steps"),
        "b": make_run_in("failed", idempotency_key="import-7-2026", labels={"tenant": "acme"}),
        "c": make_run_in("pending", labels={"city": "Café Paris"}),
        "d": make_run_in("pending", labels={"greeting": 'say "hi"'}),
    }

    response = admin_client.get(CHANGELIST, {"q": term})

    assert listed(response) == {runs[key].pk for key in expected}


def test_changelist__search_by_run_id_and_its_start(admin_client):
    run = make_run_in("failed")
    other = make_run_in("failed", idempotency_key=str(run.pk))  # a key that is the other run's id
    make_run_in("completed")

    assert listed(admin_client.get(CHANGELIST, {"q": str(run.pk)})) == {run.pk, other.pk}
    assert run.pk in listed(admin_client.get(CHANGELIST, {"q": str(run.pk)[:8]}))
    assert listed(admin_client.get(CHANGELIST, {"q": str(run.pk).upper()})) == {run.pk, other.pk}
    assert listed(admin_client.get(CHANGELIST, {"q": str(uuid.uuid4())})) == set()


def test_changelist__no_django_delete_and_no_add(admin_client):
    make_run_in("completed")
    response = admin_client.get(CHANGELIST)
    actions = [name for name, _ in response.context["action_form"].fields["action"].choices]
    assert actions == ["", "cancel_runs", "resume_runs", "retrigger_runs", "delete_runs"]
    run = make_run_in("completed")
    assert admin_client.get(reverse("admin:durably_run_delete", args=[run.pk])).status_code == 403
    assert admin_client.get(reverse("admin:durably_run_add")).status_code == 403
    response = admin_client.post(change_url(run), {"status": "pending"})
    assert response.status_code == 403
    assert statuses(run) == ["completed"]


def test_changelist__shows_labels_and_times_to_the_second(admin_client):
    run = make_run_in(
        "completed", labels={"tenant": "acme", "region": "eu", "plan": "pro", "batch": "7"}
    )

    response = admin_client.get(CHANGELIST)

    columns = [str(header["text"]) for header in response.context["result_headers"]][1:]
    assert columns == ["id", "job", "status", "labels", "created", "duration"]
    html = response.content.decode()
    assert '<code class="durably-label" title="batch=7">batch=7</code>' in html
    assert '<code class="durably-label" title="plan=pro">plan=pro</code>' in html
    assert '<span class="durably-more-labels" title="tenant=acme">+1 more</span>' in html
    created = timezone.localtime(run.created_at).strftime("%Y-%m-%d %H:%M:%S")
    assert f">{created}</time>" in html
    started = timezone.localtime(run.started_at).strftime("%Y-%m-%d %H:%M:%S")
    finished = timezone.localtime(run.completed_at).strftime("%Y-%m-%d %H:%M:%S")
    assert f'<span title="started {started}, finished {finished}">1 min 30 s</span>' in html


NUL_FILTERS = [
    {"job": "\x00"},
    {"queue__exact": "re\x00ports"},
    {"status__exact": "\x00"},
    {"status": "leased\x00"},
    {"retrying": "yes\x00"},
    {"job_name__startswith": "\x00"},
]


@pytest.mark.parametrize("params", NUL_FILTERS, ids=lambda params: next(iter(params)))
def test_changelist__ignores_a_filter_value_with_a_nul_character(admin_client, params):
    failed, pending = make_run_in("failed"), make_run_in("pending", queue="reports")

    response = admin_client.get(CHANGELIST, params)

    assert response.status_code == 200
    assert listed(response) == {failed.pk, pending.pk}
    [name] = params
    assert messages_of(response) == [
        ("error", f"Filter {name} ignored: null characters are not allowed.")
    ]
    narrowed = admin_client.get(CHANGELIST, params | {"queue": "reports"})
    assert listed(narrowed) == {pending.pk}  # the other filters still apply


@pytest.mark.parametrize(
    "params",
    [{"action__exact": "\x00"}, {"source__exact": "ad\x00min"}, {"actor__contains": "\x00"}],
    ids=lambda params: next(iter(params)),
)
def test_audit_list__ignores_a_filter_value_with_a_nul_character(admin_client, params):
    record = make_audit_record(make_run_in("cancelled"))

    response = admin_client.get(AUDIT_CHANGELIST, params)

    assert response.status_code == 200
    assert [a.pk for a in response.context["cl"].result_list] == [record.pk]
    [name] = params
    assert messages_of(response) == [
        ("error", f"Filter {name} ignored: null characters are not allowed.")
    ]


def visible_text(response: Any) -> str:
    """What a person reads on the page: its title and its text, without tags or scripts."""
    html = re.sub(r"<(script|style).*?</\1>", "", response.content.decode(), flags=re.DOTALL)
    text = " ".join(unescape(re.sub(r"<[^>]*>", " ", html)).split())
    return re.sub(r" ([.,;])", r"\1", text)  # "at <time>10:00</time>." reads "at 10:00."


def test_admin__calls_leased_running_everywhere(admin_client):
    running = make_run_in("leased", job_name="tests.three_steps")
    other = make_run_in("failed")
    record = make_audit_record(running, from_status="leased", to_status="cancelled")
    pages = {
        "list": admin_client.get(CHANGELIST),
        "run": admin_client.get(change_url(running)),
        "audit list": admin_client.get(AUDIT_CHANGELIST),
        "audit record": admin_client.get(
            reverse("admin:durably_auditrecord_change", args=[record.pk])
        ),
        "bulk confirmation": choose(admin_client, "cancel_runs", [running, other]),
        "button confirmation": admin_client.get(button_url(running, "cancel")),
        "refusal": admin_client.get(button_url(running, "resume"), follow=True),
    }

    for name, page in pages.items():
        text = visible_text(page)
        assert not re.search(r"\bleased\b", text, re.IGNORECASE), name
        assert re.search(r"\brunning\b", text, re.IGNORECASE), name
    assert f"tests.three_steps {running.pk} (running)" in visible_text(pages["run"])
    history = admin_client.get(reverse("admin:durably_run_history", args=[running.pk]))
    assert history.status_code == 302  # the audit trail is a run's history
    assert history["Location"] == change_url(running) + "#audit_records-group"
    assert "running → cancelled" in visible_text(pages["audit list"])
    assert messages_of(pages["refusal"]) == [
        ("error", f"Run {running.pk} cannot be resumed: it is running.")
    ]
    for query in ({"status": "running"}, {"status__exact": "running"}, {"status__exact": "leased"}):
        assert listed(admin_client.get(CHANGELIST, query)) == {running.pk}, query
    assert listed(admin_client.get(CHANGELIST, {"status__in": "running,failed"})) == {
        running.pk,
        other.pk,
    }


# -- the detail page ---------------------------------------------------------------------------


def test_detail__shows_everything_escaped(admin_client, db_alias, django_assert_max_num_queries):
    run = make_run_in(
        "failed",
        input={"html": "<script>alert(1)</script>", "n": [1, 2]},
        labels={"tenant": "acme"},
        progress={"current": 1, "total": 2, "message": "half <b>way</b>"},
        error={
            "type": "builtins.ValueError",
            "message": "bad <input>",
            "traceback": 'Traceback (most recent call last):\n  File "<x>", line 1\nValueError',
        },
    )
    started = timezone.now() - timedelta(seconds=2)
    make_step(run, index=0, name="fetch", output={"rows": 3}, started_at=started)
    make_step(
        run,
        index=1,
        name="save",
        status="failed",
        error={"type": "builtins.OSError", "message": "disk <full>", "traceback": "TB <here>"},
        started_at=started,
    )
    make_log(run, message="imported <3> rows", data={"k": "v"})
    make_audit_record(run, actor="alice", source="api")

    with django_assert_max_num_queries(8, using=db_alias):
        response = admin_client.get(change_url(run))

    assert response.status_code == 200
    html = response.content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<pre class="durably-json">{\n  &quot;' in html  # indented JSON
    assert "&quot;html&quot;: &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;" in html
    assert "<strong>builtins.ValueError</strong>: bad &lt;input&gt;" in html
    assert '<pre class="durably-traceback">Traceback (most recent call last):' in html
    assert "&lt;x&gt;" in html
    assert "half &lt;b&gt;way&lt;/b&gt;" in html
    assert '<code class="durably-label" title="tenant=acme">tenant=acme</code>' in html
    # the steps, log lines and audit trail
    assert "fetch" in html
    assert "<code>{&quot;rows&quot;: 3}</code>" in html
    assert "builtins.OSError: disk &lt;full&gt;" in html
    assert "TB &lt;here&gt;" in html
    assert "imported &lt;3&gt; rows" in html
    assert "Audit trail" in html
    assert "alice" in html
    assert "pending → cancelled" in html
    # read-only: no form fields, no save buttons
    assert 'name="_save"' not in html
    assert 'name="job_name"' not in html


def test_detail__leaves_out_empty_sections(admin_client):
    def sections(run: Run) -> list[str]:
        return [
            str(fieldset.name)
            for fieldset in admin_client.get(change_url(run)).context["adminform"]
        ]

    assert sections(make_run_in("completed", output={"ok": True})) == [
        "None",
        "Progress",
        "Timing",
        "Input",
        "Output",
        "Lease",
    ]
    assert sections(make_run_in("failed"))[3:] == ["Input", "Error", "Lease"]
    assert sections(make_run_in("pending"))[3:] == ["Input", "Lease"]


def test_detail__long_inlines_are_cut(admin_client, monkeypatch):
    monkeypatch.setattr("django_durably.admin.inlines.INLINE_ROW_LIMIT", 3)
    run = make_run_in("completed")
    for i in range(5):
        make_log(run, message=f"line {i}")

    html = admin_client.get(change_url(run)).content.decode()

    assert "line 2" in html
    assert "line 3" not in html
    assert "2 more rows are not shown." in html


def test_detail__times_to_the_second_with_durations(admin_client):
    run = make_run_in("completed", attempt=1)
    Run.objects.filter(pk=run.pk).update(created_at=run.started_at - timedelta(seconds=2.5))
    make_step(run, name="fetch", started_at=run.started_at)
    make_log(run, message="fetched")

    html = admin_client.get(change_url(run)).content.decode()

    def shown(value: Any) -> str:
        return f">{timezone.localtime(value).strftime('%Y-%m-%d %H:%M:%S')}</time>"

    run.refresh_from_db()
    assert shown(run.created_at) in html
    assert f"{shown(run.started_at)} (2.50 s after it was created)" in html
    assert shown(run.completed_at) in html
    assert "1 min 30 s" in html
    step = Step.objects.get(run=run)
    log = RunLog.objects.get(run=run)
    assert shown(step.started_at) in html
    assert shown(log.created_at) in html


def test_detail__a_run_pending_again_says_it_waits_not_when_it_started(admin_client):
    run = make_run_in("failed")
    operations.resume_run(run.pk)

    response = admin_client.get(change_url(run))

    text = visible_text(response)
    first = timezone.localtime(run.started_at).strftime("%Y-%m-%d %H:%M:%S")
    assert (
        f"Started at: Not running: pending again, waiting for a worker. "
        f"Its first attempt started at {first}."
    ) in text
    assert "Duration: -" in text


def test_detail__a_retriggered_run_links_to_its_original(admin_client):
    original = make_run_in("failed")
    keyed = operations.retrigger_run(original.pk, actor="alice", idempotency_key="k1")
    keyless = operations.retrigger_run(original.pk, actor="bob")

    for new_run, actor in ((keyed, "alice"), (keyless, "bob")):
        response = admin_client.get(change_url(new_run))

        html = response.content.decode()
        short = str(original.pk)[:8]
        link = f'<a href="{change_url(original)}"><code title="{original.pk}">{short}</code></a>'
        assert link in html
        text = visible_text(response)
        assert f"Retriggered from: {short} by {actor} at " in text
        assert "retrigger:" not in text
        assert "Idempotency key" not in text


def test_detail__a_retriggered_run_whose_original_is_gone(admin_client):
    original = make_run_in("failed")
    new_run = operations.retrigger_run(original.pk)
    operations.delete_run(original.pk)

    text = visible_text(admin_client.get(change_url(new_run)))

    assert f"Retriggered from: {str(original.pk)[:8]} (deleted) by " in text


def test_detail__a_key_that_looks_like_a_retrigger_proves_nothing(admin_client):
    original = make_run_in("failed")
    planted = make_run_in("pending", idempotency_key=f"retrigger:{original.pk}:k1")

    text = visible_text(admin_client.get(change_url(planted)))

    assert "Retriggered from" not in text
    assert f"Idempotency key: retrigger:{original.pk}:k1" in text


def test_detail__buttons_follow_status_and_permissions(admin_client, staff_client):
    pending, failed, done = make_run_in("pending"), make_run_in("failed"), make_run_in("completed")

    def buttons(client: Client, run: Run) -> list[str]:
        response = client.get(change_url(run))
        assert response.status_code == 200
        return [b["action"] for b in response.context["durably_buttons"]]

    assert buttons(admin_client, pending) == ["signal", "cancel"]  # signals: test_admin_waits
    assert buttons(admin_client, failed) == ["resume", "retrigger"]
    assert buttons(admin_client, done) == ["retrigger"]
    html = admin_client.get(change_url(failed)).content.decode()
    assert (
        f'<a href="{button_url(failed, "resume")}" class="durably-button durably-resume">' in html
    )

    viewer = staff_client()
    assert buttons(viewer, pending) == []
    assert buttons(viewer, failed) == []
    assert 'class="durably-button' not in viewer.get(change_url(failed)).content.decode()
    assert buttons(staff_client("resume_run"), failed) == ["resume"]
    assert buttons(staff_client("change_run"), failed) == ["resume", "retrigger"]


# -- bulk actions ------------------------------------------------------------------------------


def test_cancel_action__reports_each_outcome(admin_client):
    targets = [make_run_in("pending"), make_run_in("pending"), make_run_in("leased")]
    others = [make_run_in("cancelled"), make_run_in("completed"), make_run_in("failed")]

    response = act(admin_client, "cancel_runs", targets + others)

    assert messages_of(response) == [
        ("warning", "3 runs cancelled; 1 already completed; 1 already failed; 1 already cancelled.")
    ]
    assert statuses(*targets) == ["cancelled"] * 3
    assert statuses(*others) == ["cancelled", "completed", "failed"]
    audits = AuditRecord.objects.all()
    assert sorted((a.run_id, a.action, a.actor, a.source, a.to_status) for a in audits) == sorted(
        (run.pk, "cancel", "admin", "admin", "cancelled") for run in targets
    )


def test_cancel_action__all_cancelled_is_a_success(admin_client):
    response = act(admin_client, "cancel_runs", [make_run_in("pending")])
    assert messages_of(response) == [("success", "1 run cancelled.")]


def test_resume_action__reports_each_outcome(admin_client):
    targets = [make_run_in("failed"), make_run_in("cancelled")]
    others = [make_run_in("pending"), make_run_in("leased"), make_run_in("completed")]
    blocked = make_run_in("failed", concurrency_key="k")
    make_run_in("pending", concurrency_key="k")  # holds the key: the blocked run cannot be pending

    response = act(admin_client, "resume_runs", [*targets, *others, blocked])

    assert messages_of(response) == [
        (
            "warning",
            "2 runs resumed; 1 already pending; 1 still running; 1 already completed; "
            "1 blocked by a pending run with the same concurrency key.",
        )
    ]
    assert statuses(*targets, *others, blocked) == [
        "pending",
        "pending",
        "pending",
        "leased",
        "completed",
        "failed",
    ]
    assert Run.objects.get(pk=targets[0].pk).error is None
    assert set(AuditRecord.objects.values_list("run_id", "action", "actor", "source")) == {
        (run.pk, "resume", "admin", "admin") for run in targets
    }


def test_retrigger_action__reports_each_outcome(admin_client):
    targets = [
        make_run_in("completed", input={"n": 1}),
        make_run_in("failed", input={"n": 1}, labels={"t": "x"}),
    ]
    others = [make_run_in("pending"), make_run_in("leased")]
    orphan = make_run_in("failed", job_name="tests.no_longer_registered")

    response = act(admin_client, "retrigger_runs", [*targets, *others, orphan])

    assert messages_of(response) == [
        (
            "warning",
            "2 runs retriggered; 1 still pending; 1 still running; "
            "1 whose job is no longer registered.",
        )
    ]
    assert statuses(*targets, *others, orphan) == [
        "completed",
        "failed",
        "pending",
        "leased",
        "failed",
    ]
    audits = list(AuditRecord.objects.all())
    assert {(a.run_id, a.action, a.actor, a.source) for a in audits} == {
        (run.pk, "retrigger", "admin", "admin") for run in targets
    }
    new_runs = Run.objects.filter(pk__in=[a.detail["new_run_id"] for a in audits])
    assert sorted((r.status, r.job_name, r.input == {"n": 1}) for r in new_runs) == [
        ("pending", jobs.noop.name, True),
        ("pending", jobs.noop.name, True),
    ]
    assert Run.objects.count() == 7


def test_retrigger_action__the_same_page_sent_twice_retriggers_once(admin_client):
    targets = [make_run_in("completed"), make_run_in("failed")]
    page = admin_client.get(CHANGELIST)
    key = page.context["action_form"]["idempotency_key"].value()
    assert f'name="idempotency_key" value="{key}"' in page.content.decode()

    first = act(admin_client, "retrigger_runs", targets, idempotency_key=key)
    second = act(admin_client, "retrigger_runs", targets, idempotency_key=key)
    third = act(admin_client, "retrigger_runs", targets[:1])  # a page without a key

    assert messages_of(first) == [("success", "2 runs retriggered.")]
    assert messages_of(second) == [
        ("warning", "0 runs retriggered; 2 already retriggered from this page.")
    ]
    assert messages_of(third) == [("success", "1 run retriggered.")]
    assert Run.objects.count() == 5
    assert AuditRecord.objects.count() == 3


def test_retrigger_action__each_page_load_gets_its_own_key(admin_client):
    keys = {
        admin_client.get(CHANGELIST).context["action_form"]["idempotency_key"].value()
        for _ in range(2)
    }

    assert len(keys) == 2


@pytest.mark.parametrize(
    ("action", "selected", "question", "kept"),
    [
        (
            "cancel_runs",
            ["pending", "leased", "completed"],
            "Are you sure you want to cancel these 2 runs?",
            "Runs that have already finished are left as they are: 1 completed.",
        ),
        (
            "resume_runs",
            ["failed", "cancelled", "leased"],
            "Are you sure you want to resume these 2 runs?",
            "Only failed and cancelled runs can be resumed; left as they are: 1 running.",
        ),
        (
            "retrigger_runs",
            ["completed", "failed", "pending"],
            "Are you sure you want to retrigger these 2 finished runs?",
            "Runs that have not finished are left as they are: 1 pending.",
        ),
    ],
)
def test_actions__ask_for_confirmation_like_delete(admin_client, action, selected, question, kept):
    runs = [make_run_in(status) for status in selected]

    page = choose(admin_client, action, runs)

    assert page.status_code == 200
    assert page.templates[0].name == "admin/durably/run/action_confirmation.html"
    text = visible_text(page)
    assert question in text
    assert kept in text
    assert 'value="Yes, I’m sure"' in page.content.decode()
    assert "No, take me back" in text
    assert set(page.context["ids"]) == {run.pk for run in runs[:2]}
    assert statuses(*runs) == selected
    assert Run.objects.count() == 3
    assert not AuditRecord.objects.exists()

    form = {
        "action": action,
        "_selected_action": [str(pk) for pk in page.context["ids"]],
        "post": "yes",
    }
    if page.context["idempotency_key"]:
        form["idempotency_key"] = page.context["idempotency_key"]
    confirmed = admin_client.post(CHANGELIST, form, follow=True)

    assert messages_of(confirmed)[0][0] == "success"
    assert AuditRecord.objects.count() == 2


def test_retrigger_action__the_confirmation_page_sent_twice_retriggers_once(admin_client):
    runs = [make_run_in("completed"), make_run_in("failed")]
    key = admin_client.get(CHANGELIST).context["action_form"]["idempotency_key"].value()
    page = choose(admin_client, "retrigger_runs", runs, idempotency_key=key)
    assert page.context["idempotency_key"] == key  # the list page's key goes on
    form = {
        "action": "retrigger_runs",
        "_selected_action": [str(pk) for pk in page.context["ids"]],
        "post": "yes",
        "idempotency_key": key,
    }

    first = admin_client.post(CHANGELIST, form, follow=True)
    second = admin_client.post(CHANGELIST, form, follow=True)

    assert messages_of(first) == [("success", "2 runs retriggered.")]
    assert messages_of(second) == [
        ("warning", "0 runs retriggered; 2 already retriggered from this page.")
    ]
    assert Run.objects.count() == 4


def test_delete_action__confirms_then_deletes_only_finished_runs(admin_client):
    finished = [make_run_in("completed"), make_run_in("failed"), make_run_in("cancelled")]
    unfinished = [make_run_in("pending"), make_run_in("leased")]
    make_step(finished[0], name="a")
    data = {
        "action": "delete_runs",
        "_selected_action": [str(r.pk) for r in finished + unfinished],
        "index": "0",
    }

    confirmation = admin_client.post(CHANGELIST, data)

    assert confirmation.status_code == 200
    assert confirmation.templates[0].name == "admin/durably/run/action_confirmation.html"
    html = confirmation.content.decode()
    assert "Are you sure you want to delete these 3 finished runs?" in html
    assert "Runs that have not finished are kept:" in html
    assert "1 pending, 1 running." in html
    assert Run.objects.count() == 5
    assert set(confirmation.context["ids"]) == {r.pk for r in finished}

    confirmed = {
        "action": "delete_runs",
        "_selected_action": [str(pk) for pk in confirmation.context["ids"]],
        "post": "yes",
    }
    response = admin_client.post(CHANGELIST, confirmed, follow=True)

    assert messages_of(response) == [("success", "3 runs deleted.")]
    assert set(Run.objects.values_list("pk", flat=True)) == {r.pk for r in unfinished}
    assert not Step.objects.exists()
    audits = AuditRecord.objects.all()
    assert {(a.run_id, a.run_uuid, a.action, a.actor, a.source) for a in audits} == {
        (None, run.pk, "delete", "admin", "admin") for run in finished
    }


def test_delete_action__with_nothing_finished_reports_at_once(admin_client):
    runs = [make_run_in("pending"), make_run_in("leased")]
    response = act(admin_client, "delete_runs", runs)
    assert messages_of(response) == [
        ("warning", "0 runs deleted; 1 still pending; 1 still running.")
    ]
    assert Run.objects.count() == 2


def test_actions__report_a_run_a_worker_finished_meanwhile(admin_client, monkeypatch):
    racing, other = make_run_in("leased"), make_run_in("pending")
    real_cancel = operations.cancel_run

    def cancel_after_the_worker_finished(run_id, **kwargs):
        if run_id == racing.pk:  # the worker completes the run between selection and cancel
            Run.objects.filter(pk=run_id).update(
                status="completed", completed_at=timezone.now(), lease_expires_at=None
            )
        return real_cancel(run_id, **kwargs)

    monkeypatch.setattr(operations, "cancel_run", cancel_after_the_worker_finished)

    response = act(admin_client, "cancel_runs", [racing, other])

    assert messages_of(response) == [("warning", "1 run cancelled; 1 already completed.")]
    assert statuses(racing, other) == ["completed", "cancelled"]
    assert list(AuditRecord.objects.values_list("run_id", flat=True)) == [other.pk]


# -- permissions -------------------------------------------------------------------------------


def test_view_only_staff__sees_history_but_no_actions(staff_client):
    viewer = staff_client()
    run = make_run_in("failed")
    make_step(run, name="fetch", started_at=run.started_at)

    response = viewer.get(CHANGELIST)
    assert response.status_code == 200
    assert response.context["action_form"] is None or not response.context["cl"].actions
    assert "cancel_runs" not in response.content.decode()
    detail = viewer.get(change_url(run))
    assert detail.status_code == 200
    assert "fetch" in detail.content.decode()  # the steps inline is visible to viewers

    for action in ("cancel_runs", "resume_runs", "retrigger_runs", "delete_runs"):
        act(viewer, action, [run])
    for action in ("cancel", "resume", "retrigger"):
        assert viewer.post(button_url(run, action)).status_code == 403
    assert statuses(run) == ["failed"]
    assert Run.objects.count() == 1
    assert not AuditRecord.objects.exists()


def test_actions__each_needs_its_permission(staff_client):
    def offered(client: Client) -> list[str]:
        form = client.get(CHANGELIST).context["action_form"]
        return [name for name, _ in form.fields["action"].choices][1:] if form else []

    make_run_in("completed")
    assert offered(staff_client("cancel_run")) == ["cancel_runs"]
    assert offered(staff_client("resume_run")) == ["resume_runs"]
    assert offered(staff_client("retrigger_run")) == ["retrigger_runs"]
    assert offered(staff_client("delete_run")) == ["delete_runs"]
    assert offered(staff_client("change_run")) == ["cancel_runs", "resume_runs", "retrigger_runs"]

    canceller = staff_client("cancel_run")
    failed = make_run_in("failed")
    act(canceller, "resume_runs", [failed])
    assert canceller.post(button_url(failed, "resume")).status_code == 403
    assert statuses(failed) == ["failed"]
    pending = make_run_in("pending")
    response = act(canceller, "cancel_runs", [pending])
    assert messages_of(response) == [("success", "1 run cancelled.")]
    audit = AuditRecord.objects.get()
    assert audit.actor.startswith("staff-")
    assert audit.source == "admin"


def test_buttons__need_the_view_permission_too(make_user):
    acts_but_cannot_view = Client()
    acts_but_cannot_view.force_login(
        make_user("no-view", "cancel_run", "resume_run", "retrigger_run", "delete_run")
    )
    pending, failed = make_run_in("pending"), make_run_in("failed")

    for run, action in ((pending, "cancel"), (failed, "resume"), (failed, "retrigger")):
        assert acts_but_cannot_view.get(button_url(run, action)).status_code == 403
        assert acts_but_cannot_view.post(button_url(run, action)).status_code == 403
    for action in ("cancel_runs", "resume_runs", "retrigger_runs", "delete_runs"):
        response = acts_but_cannot_view.post(
            CHANGELIST, {"action": action, "_selected_action": [str(failed.pk)], "post": "yes"}
        )
        assert response.status_code == 403

    assert statuses(pending, failed) == ["pending", "failed"]
    assert Run.objects.count() == 2
    assert not AuditRecord.objects.exists()


def test_buttons__refuse_other_methods_unknown_runs_and_anonymous_users(admin_client, client):
    run = make_run_in("pending")
    for action in ("cancel", "resume", "retrigger"):
        response = admin_client.put(button_url(run, action))
        assert response.status_code == 405
        assert response["Allow"] == "GET, POST"
    assert admin_client.get(button_url(uuid.uuid4(), "cancel")).status_code == 404
    assert admin_client.post(button_url(uuid.uuid4(), "cancel")).status_code == 404
    assert admin_client.post(button_url("not-a-uuid", "resume")).status_code == 404
    for response in (client.get(button_url(run, "cancel")), client.post(button_url(run, "cancel"))):
        assert response.status_code == 302
        assert "/login/" in response["Location"]
    assert statuses(run) == ["pending"]


def test_buttons__need_a_csrf_token(admin_user):
    run = make_run_in("pending")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(button_url(run, "cancel")).status_code == 403
    assert statuses(run) == ["pending"]


# -- buttons -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "action", "question"),
    [
        ("leased", "cancel", "Are you sure you want to cancel this run?"),
        ("failed", "resume", "Are you sure you want to resume this run?"),
        ("completed", "retrigger", "Are you sure you want to retrigger this run?"),
    ],
)
def test_buttons__open_a_confirmation_page_first(admin_client, status, action, question):
    run = make_run_in(status)
    html = admin_client.get(change_url(run)).content.decode()
    assert f'<a href="{button_url(run, action)}" class="durably-button durably-{action}">' in html

    page = admin_client.get(button_url(run, action))

    assert page.status_code == 200
    assert page.templates[0].name == "admin/durably/run/button_confirmation.html"
    html = page.content.decode()
    assert question in html
    assert f'<form method="post" action="{button_url(run, action)}">' in html
    assert f'<a href="{change_url(run)}" class="button cancel-link">No, take me back</a>' in html
    assert statuses(run) == [status]
    assert Run.objects.count() == 1
    assert not AuditRecord.objects.exists()


def test_buttons__a_stale_link_says_why_nothing_can_be_done(admin_client):
    done = make_run_in("completed")

    response = admin_client.get(button_url(done, "cancel"), follow=True)

    assert response.redirect_chain == [(change_url(done), 302)]
    assert messages_of(response) == [
        ("error", f"Run {done.pk} cannot be cancelled: it is completed.")
    ]


def test_cancel_button(admin_client):
    running, done = make_run_in("leased"), make_run_in("completed")

    response = admin_client.post(button_url(running, "cancel"), follow=True)

    assert response.redirect_chain == [(change_url(running), 302)]
    short = str(running.pk)[:8]
    assert messages_of(response) == [
        ("success", f"Run {short} cancelled. Its worker stops at the next step boundary.")
    ]
    assert statuses(running) == ["cancelled"]
    again = admin_client.post(button_url(running, "cancel"), follow=True)
    assert messages_of(again) == [("warning", f"Run {short} was already cancelled.")]

    refused = admin_client.post(button_url(done, "cancel"), follow=True)
    assert refused.redirect_chain == [(change_url(done), 302)]
    assert messages_of(refused) == [
        ("error", f"Run {done.pk} cannot be cancelled: it is completed.")
    ]
    assert statuses(done) == ["completed"]
    assert AuditRecord.objects.get().run_id == running.pk


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_resume_and_retrigger_buttons__on_a_run_that_failed_half_way(admin_client):
    jobs.FLAGS["fail"] = "b"
    run = jobs.three_steps.trigger({"x": 1})
    process_until_idle()
    assert statuses(run) == ["failed"]
    assert [b["action"] for b in admin_client.get(change_url(run)).context["durably_buttons"]] == [
        "resume",
        "retrigger",
    ]

    response = admin_client.post(button_url(run, "resume"), follow=True)

    assert response.redirect_chain == [(change_url(run), 302)]
    assert messages_of(response)[0][0] == "success"
    assert "resumed" in messages_of(response)[0][1]
    run.refresh_from_db()
    assert run.status == "pending"
    assert run.error is None
    assert list(run.steps.filter(status="completed").values_list("name", flat=True)) == ["a"]
    jobs.FLAGS.clear()
    process_until_idle()
    assert statuses(run) == ["completed"]
    assert jobs.CALLS["a"] == 1  # the checkpoint was replayed, not run again

    response = admin_client.post(button_url(run, "retrigger"), follow=True)

    new_run = Run.objects.exclude(pk=run.pk).get()
    assert response.redirect_chain == [(change_url(new_run), 302)]
    assert new_run.status == "pending"
    assert new_run.input == {"x": 1}
    level, text = messages_of(response)[0]
    assert level == "success"
    assert f'<a href="{change_url(run)}">{str(run.pk)[:8]}</a>' in text
    assert list(
        AuditRecord.objects.order_by("id").values_list("action", "actor", "source", "run_id")
    ) == [("resume", "admin", "admin", run.pk), ("retrigger", "admin", "admin", run.pk)]


def test_retrigger_button__a_second_click_shows_the_run_the_first_one_made(admin_client):
    run = make_run_in("completed")
    page = admin_client.get(button_url(run, "retrigger"))
    form = {"idempotency_key": page.context["idempotency_key"]}
    assert f'name="idempotency_key" value="{form["idempotency_key"]}"' in page.content.decode()

    first = admin_client.post(button_url(run, "retrigger"), form, follow=True)
    second = admin_client.post(button_url(run, "retrigger"), form, follow=True)

    new_run = Run.objects.exclude(pk=run.pk).get()
    assert first.redirect_chain == second.redirect_chain == [(change_url(new_run), 302)]
    assert messages_of(first)[0][0] == "success"
    level, text = messages_of(second)[0]
    assert level == "info"
    assert text.startswith("This run was already retriggered from run")
    assert AuditRecord.objects.count() == 1


def test_retrigger_button__each_confirmation_page_gets_its_own_key(admin_client):
    run = make_run_in("failed")

    keys = {
        admin_client.get(button_url(run, "retrigger")).context["idempotency_key"] for _ in range(2)
    }

    assert len(keys) == 2
    assert all(len(key) == 32 for key in keys)


def test_resume_button__reports_a_blocking_pending_run(admin_client):
    failed = make_run_in("failed", concurrency_key="k")
    holder = make_run_in("pending", concurrency_key="k")

    response = admin_client.post(button_url(failed, "resume"), follow=True)

    assert response.redirect_chain == [(change_url(failed), 302)]
    level, text = messages_of(response)[0]
    assert level == "error"
    assert str(holder.pk) in text
    assert statuses(failed) == ["failed"]


def test_retrigger_button__reports_an_unregistered_job(admin_client):
    orphan = make_run_in("failed", job_name="tests.no_longer_registered")

    response = admin_client.post(button_url(orphan, "retrigger"), follow=True)

    assert response.redirect_chain == [(change_url(orphan), 302)]
    level, text = messages_of(response)[0]
    assert level == "error"
    assert text.startswith("No job is registered under the name 'tests.no_longer_registered'.")
    assert Run.objects.count() == 1
    assert not AuditRecord.objects.exists()


# -- the audit trail ---------------------------------------------------------------------------


def test_audit_admin__lists_searches_and_is_read_only(admin_client):
    run = make_run_in("pending")
    make_run_in("pending")
    admin_client.post(button_url(run, "cancel"))
    gone = make_run_in("completed")
    act(admin_client, "delete_runs", [gone], post="yes")

    response = admin_client.get(AUDIT_CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert f'<a href="{change_url(run)}">' in html
    assert "(deleted)" in html
    assert "pending → cancelled" in html
    assert reverse("admin:durably_auditrecord_add") not in html
    found = admin_client.get(AUDIT_CHANGELIST, {"q": str(run.pk)}).context["cl"].result_list
    assert [a.action for a in found] == ["cancel"]
    found = admin_client.get(AUDIT_CHANGELIST, {"action__exact": "delete"}).context["cl"]
    assert [a.run_uuid for a in found.result_list] == [gone.pk]
    record = AuditRecord.objects.get(action="cancel")
    detail = admin_client.get(reverse("admin:durably_auditrecord_change", args=[record.pk]))
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()


def test_format_duration():
    assert format_duration(timedelta(seconds=0.4123)) == "0.41 s"
    assert format_duration(timedelta(seconds=42.25)) == "42.2 s"
    assert format_duration(timedelta(minutes=4, seconds=5)) == "4 min 05 s"
    assert format_duration(timedelta(hours=2, minutes=3)) == "2 h 03 min"
    assert format_duration(timedelta(days=3, hours=4)) == "3 d 4 h"
