"""The admin's view of retries: a run's attempt timeline (its stored attempts, then the one that
completed it, read from the run), "retrying at" and "attempt 3 of 5" in the list, the Retrying
filter, the job's policy and timeout on the run's page, and a step's tries."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from django.utils import timezone

from django_durably import Retry
from django_durably.admin.display import short_error
from django_durably.jobs import Job, register, unregister
from django_durably.models import Run
from tests import jobs
from tests.factories import ERROR, make_attempt, make_run, make_run_in, make_step
from tests.integration.test_admin import CHANGELIST, change_url, listed, visible_text
from tests.sql import statements

pytestmark = pytest.mark.django_db(databases="__all__")

RETRIED_JOB = "tests.admin.retried"
STEP_RETRY_ERROR = {
    "type": "builtins.OSError",
    "message": "disk <full>\nsecond line",
    "traceback": "TB <here>",
    "retry": "step",
    "step": "save",
    "step_attempt": "2",
}


@pytest.fixture
def retried_job() -> Iterator[Job[Any, Any]]:
    """``tests.jobs.noop`` registered as ``tests.admin.retried``, with 5 attempts and a 90 s timeout,
    until the test ends."""
    definition = dataclasses.replace(
        jobs.noop,
        name=RETRIED_JOB,
        retry=Retry(max_attempts=5, initial_delay=1, backoff=2, max_delay=600),
        timeout=90.0,
    )
    register(definition)
    yield definition
    unregister(RETRIED_JOB)


def retrying(**fields: Any) -> Run:
    """A pending run waiting for its retry in 5 minutes, after ``attempt`` (default 2) attempts."""
    retry_at = timezone.now() + timedelta(minutes=5)
    defaults: dict[str, Any] = {"attempt": 2, "failed_attempts": 2, "lease_generation": 2}
    return make_run_in("pending", retry_at=retry_at, run_after=retry_at, **(defaults | fields))


def completed(attempt: int, **fields: Any) -> Run:
    """A run completed by its attempt ``attempt`` on ``worker-1``, which took 4.5 s: the run is
    the record of that attempt (it has no ``RunAttempt`` row)."""
    ended = timezone.now()
    values: dict[str, Any] = {
        "status": "completed",
        "attempt": attempt,
        "lease_generation": attempt,
        "lease_owner": "worker-1",
        "started_at": ended - timedelta(minutes=2),
        "attempt_started_at": ended - timedelta(seconds=4.5),
        "completed_at": ended,
    }
    return make_run(**(values | fields))


def shown(value: Any) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")


def cell_text(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]*>", " ", html)).split())


def inline_rows(response: Any, prefix: str) -> list[dict[str, str]]:
    """The rows of a run page's read-only table, as ``{field: visible text}``."""
    html = response.content.decode()
    group = re.search(rf'id="{prefix}-group">(.*?)</fieldset>', html, re.DOTALL)
    assert group is not None, f"no {prefix} table"
    return [
        {
            name: cell_text(cell)
            for name, cell in re.findall(r'<td class="field-(\w+)">(.*?)</td>', row, re.DOTALL)
        }
        for row in re.findall(r'<tr class="form-row">(.*?)</tr>', group[1], re.DOTALL)
    ]


def attempt_cells(response: Any) -> list[str]:
    """The attempt lines of the run list, in its order."""
    return [
        cell_text(cell)
        for cell in re.findall(
            r'<div class="durably-attempt"[^>]*>(.*?)</div>', response.content.decode()
        )
    ]


# -- the attempt timeline ----------------------------------------------------------------------


def test_attempt_timeline__lists_each_attempt_in_order(admin_client):
    run = retrying(attempt=3, failed_attempts=2)
    now = timezone.now()
    lost = make_attempt(
        run,
        number=2,
        outcome="lost",
        worker="worker-b",
        started_at=now - timedelta(minutes=3),
        ended_at=now - timedelta(minutes=2),
    )
    failed = make_attempt(
        run,
        number=1,
        error=ERROR,
        started_at=now - timedelta(minutes=10, seconds=4.5),
        ended_at=now - timedelta(minutes=10),
        retry_at=now - timedelta(minutes=9),
    )
    released = make_attempt(
        run,
        number=3,
        outcome="step_retry",
        worker="",
        started_at=None,
        error=STEP_RETRY_ERROR,
        retry_at=run.retry_at,
    )

    response = admin_client.get(change_url(run))

    rows = inline_rows(response, "attempts")
    assert [row["number"] for row in rows] == ["1", "2", "3"]
    assert rows[0] == {
        "number": "1",
        "outcome_display": "Failed",
        "worker_display": "worker-1",
        "started": shown(failed.started_at),
        "ended": shown(failed.ended_at),
        "duration": "4.50 s",
        "error_summary": "builtins.RuntimeError: boom Tb",  # the traceback unfolds
        "retry_at_display": shown(failed.retry_at),  # past: no "in ..."
    }
    assert rows[1] | {"started": "", "ended": ""} == {
        "number": "2",
        "outcome_display": "Worker lost",
        "worker_display": "worker-b",
        "started": "",
        "ended": "",
        "duration": "1 min 00 s",
        "error_summary": "-",
        "retry_at_display": "-",
    }
    assert rows[1]["started"] == shown(lost.started_at)
    assert rows[2]["outcome_display"] == "Released for a step retry"
    assert rows[2]["worker_display"] == "-"
    assert rows[2]["started"] == "-"
    assert rows[2]["duration"] == "-"
    assert rows[2]["error_summary"].startswith(
        "step save, try 2: builtins.OSError: disk <full> disk <full> second line TB <here>"
    )
    assert re.fullmatch(
        rf"{shown(released.retry_at)} \(in 4 min 5\d s\)", rows[2]["retry_at_display"]
    )
    html = response.content.decode()
    assert "disk &lt;full&gt;" in html
    assert "disk <full>" not in html
    assert 'class="durably-outcome durably-outcome-lost"' in html
    assert html.index('id="attempts-group"') < html.index('id="steps-group"')


def test_attempt_timeline__a_run_never_tried_has_none(admin_client):
    run = make_run_in("pending")

    response = admin_client.get(change_url(run))

    assert inline_rows(response, "attempts") == []
    assert "Attempts None" in visible_text(response)


def test_attempt_timeline__a_completed_run_ends_with_the_attempt_that_completed_it(admin_client):
    run = completed(attempt=2, lease_owner="worker-b")
    make_attempt(run, number=1, error=ERROR)

    rows = inline_rows(admin_client.get(change_url(run)), "attempts")

    assert [(row["number"], row["outcome_display"]) for row in rows] == [
        ("1", "Failed"),
        ("2", "Completed"),
    ]
    assert rows[1] == {
        "number": "2",
        "outcome_display": "Completed",
        "worker_display": "worker-b",
        "started": shown(run.attempt_started_at),
        "ended": shown(run.completed_at),
        "duration": "4.50 s",
        "error_summary": "-",
        "retry_at_display": "-",
    }


def test_attempt_timeline__queries_do_not_grow_and_long_histories_are_cut(
    admin_client, db_alias, monkeypatch
):
    run = retrying(attempt=2)
    make_step(run, index=0)
    for number in (1, 2):
        make_attempt(run, number=number)
    admin_client.get(change_url(run))  # warm up the session and content types
    few = statements(db_alias, lambda: admin_client.get(change_url(run)))
    for number in range(3, 13):
        make_attempt(run, number=number, outcome="released")
    monkeypatch.setattr("django_durably.admin.inlines.INLINE_ROW_LIMIT", 5)

    many = statements(db_alias, lambda: admin_client.get(change_url(run)))
    response = admin_client.get(change_url(run))

    assert len(many) == len(few) + 1  # the count of the rows not shown
    assert len([sql for sql in many if "durably_runattempt" in sql]) == 2
    assert [row["number"] for row in inline_rows(response, "attempts")] == ["1", "2", "3", "4", "5"]
    assert "7 more rows are not shown." in visible_text(response)


def test_attempt_timeline__the_completed_attempt_costs_no_query(admin_client, db_alias):
    done = completed(attempt=3)
    failed = make_run_in("failed", attempt=3)
    for run in (done, failed):
        for number in (1, 2):
            make_attempt(run, number=number)
    admin_client.get(change_url(failed))  # warm up the session and content types

    def page_of(run: Run) -> list[str]:
        return statements(db_alias, lambda: admin_client.get(change_url(run)))

    sent = {run: page_of(run) for run in (done, failed)}

    assert len(sent[done]) == len(sent[failed])
    assert len([sql for sql in sent[done] if "durably_runattempt" in sql]) == 1


@pytest.mark.parametrize(
    ("stored", "last", "note"),
    [
        (3, "4 Completed", None),
        (4, "5 Completed", None),  # the completed attempt is the 5th row
        (5, "5 Handed back", "1 more row is not shown."),  # it is the one not shown
        (11, "5 Handed back", "7 more rows are not shown."),
    ],
)
def test_attempt_timeline__the_completed_attempt_is_cut_as_the_last_row(
    admin_client, monkeypatch, stored, last, note
):
    run = completed(attempt=stored + 1)
    for number in range(1, stored + 1):
        make_attempt(run, number=number, outcome="released")
    monkeypatch.setattr("django_durably.admin.inlines.INLINE_ROW_LIMIT", 5)

    response = admin_client.get(change_url(run))

    rows = inline_rows(response, "attempts")
    assert f"{rows[-1]['number']} {rows[-1]['outcome_display']}" == last
    if note is None:
        assert "not shown" not in visible_text(response)
    else:
        assert note in visible_text(response)


def test_short_error__cuts_long_messages_and_names_a_step_retry():
    long = {"type": "builtins.ValueError", "message": "x" * 200, "traceback": ""}
    short = short_error(long)
    assert short.startswith('<details class="durably-error"><summary>builtins.ValueError: xxx')
    assert "x…</summary>" in short
    assert f'<pre class="durably-traceback">{"x" * 200}</pre>' in short
    plain = {"type": "builtins.KeyError", "message": "'a'", "traceback": ""}
    assert (
        short_error(plain) == '<span class="durably-error">builtins.KeyError: &#x27;a&#x27;</span>'
    )
    numbered = {"type": "T", "message": "m", "step": "fetch", "step_attempt": 3}
    assert cell_text(short_error(numbered)) == "step fetch, try 3: T: m"
    unnumbered = {"type": "T", "message": "m", "step": "fetch", "step_attempt": "?"}
    assert cell_text(short_error(unnumbered)) == "step fetch: T: m"


# -- the run list ------------------------------------------------------------------------------


def test_changelist__a_retrying_run_says_when_and_which_attempt(admin_client, retried_job):
    retried = retrying(job_name=RETRIED_JOB, attempt=2)
    first_failed = retrying(job_name=RETRIED_JOB, attempt=1, failed_attempts=1)
    elsewhere = retrying(job_name="imports.jobs.not_registered_here", attempt=2)
    running = make_run_in("leased", job_name=RETRIED_JOB, attempt=4, failed_attempts=3)
    handed_back = make_run_in("leased", job_name=RETRIED_JOB, attempt=7, failed_attempts=4)
    no_policy = make_run_in("failed", attempt=3)
    runs = [retried, first_failed, elsewhere, running, handed_back, no_policy]
    for index, run in enumerate(runs):  # the list's order: newest first
        Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=index))

    response = admin_client.get(CHANGELIST)

    assert attempt_cells(response) == [
        "attempt 2 of 5",
        "attempt 1 of 5",  # a first attempt goes without saying, unless it is retried
        "attempt 2",  # the job's policy is not known here
        "attempt 4 of 5",
        "attempt 7",  # hand-backs do not count against the policy
        "attempt 3",  # the policy does not retry
    ]
    html = response.content.decode()
    assert html.count('<div class="durably-retrying">retrying at <time') == 3
    assert f">{shown(retried.retry_at)}</time></div>" in html
    assert (
        'title="2 failed attempts count against the retry policy '
        '(5 attempts, 1s x2 up to 600s, jitter)">attempt 2 of 5</div>'
    ) in html
    assert 'title="1 failed attempt counts against the retry policy' in html


def test_changelist__a_pending_run_that_is_not_retrying_says_nothing_of_it(admin_client):
    make_run_in("pending", run_after=timezone.now() + timedelta(minutes=5))
    make_run_in("failed", attempt=1, retry_at=timezone.now())  # not pending: not retrying

    html = admin_client.get(CHANGELIST).content.decode()

    assert 'class="durably-retrying"' not in html
    assert 'class="durably-attempt"' not in html


def test_changelist__the_retrying_filter(admin_client):
    waiting = retrying()
    pending = make_run_in("pending")
    running = make_run_in("leased")
    failed = make_run_in("failed", retry_at=timezone.now())

    def runs(**query: str) -> set[Any]:
        return listed(admin_client.get(CHANGELIST, query))

    assert runs(retrying="yes") == {waiting.pk}
    assert runs(retrying="no") == {pending.pk, running.pk, failed.pk}
    assert runs() == {waiting.pk, pending.pk, running.pk, failed.pk}
    assert runs(retrying="no", status__exact="pending") == {pending.pk}
    assert runs(retrying="yes", status="running") == set()
    assert runs(retrying="no", status="running") == {running.pk}
    assert runs(retrying="yes", status__in="pending,failed") == {waiting.pk}
    text = visible_text(admin_client.get(CHANGELIST, {"retrying": "yes"}))
    assert "By retrying All Yes No" in text
    counted = visible_text(admin_client.get(CHANGELIST, {"_facets": "True"}))
    assert "By retrying All Yes (1) No (3)" in counted


# -- the run page ------------------------------------------------------------------------------


def test_detail__shows_the_jobs_retry_policy_and_timeout(admin_client, retried_job):
    started = timezone.now() - timedelta(minutes=1)
    run = retrying(job_name=RETRIED_JOB, attempt=2, failed_attempts=2, started_at=started)

    text = visible_text(admin_client.get(change_url(run)))

    assert "Attempt: 2 Failed attempts: 2 " in text
    assert "Retry policy: 5 attempts, 1s x2 up to 600s, jitter Timeout: 1 min 30 s" in text
    assert re.search(rf"Retrying at: {shown(run.retry_at)} \(in 4 min 5\d s\)", text)
    assert "Started at: Not running: waiting to be tried again. Its first attempt" in text


def test_detail__without_the_job_registered_or_a_retry_says_neither(admin_client):
    unknown = retrying(job_name="imports.jobs.not_registered_here")
    no_retry = make_run_in("failed", attempt=1)

    unknown_text = visible_text(admin_client.get(change_url(unknown)))
    no_retry_text = visible_text(admin_client.get(change_url(no_retry)))

    assert "Retry policy" not in unknown_text
    assert "Timeout" not in unknown_text
    assert "Retrying at:" in unknown_text
    assert "Retry policy: no retry Timeout: none" in no_retry_text
    assert "Retrying at" not in no_retry_text


def test_step_inline__shows_the_try_after_the_first(admin_client):
    run = make_run_in("failed")
    make_step(run, index=0, name="fetch")
    make_step(run, index=1, name="save", status="failed", step_attempt=3, error=STEP_RETRY_ERROR)

    response = admin_client.get(change_url(run))

    rows = inline_rows(response, "steps")
    assert [row["status_display"] for row in rows] == ["Completed", "Failed try 3"]
    assert '<span class="durably-step-try">try 3</span>' in response.content.decode()
