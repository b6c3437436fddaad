"""Retries (DESIGN.md section 7): a run that raises with attempts left is pending again on the same
id, its completed steps kept; a step's own policy tries its function again, in place or on a later
claim; every attempt is a ``RunAttempt`` row; cancel wins over a retry; a run whose worker keeps
dying fails instead of looping."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db.models.functions import Now

from django_durably import (
    NonRetryable,
    PendingRunExists,
    cancel_run,
    leases,
    process_next,
    process_one,
    process_until_idle,
    resume_run,
)
from django_durably.models import AttemptOutcome, Run, RunAttempt, RunStatus, Step, StepStatus
from tests import jobs
from tests.concurrency import start, wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def attempts(run: Run) -> list[tuple[int, str]]:
    """(number, outcome) of each ended attempt: the rows, and the run for its completing one."""
    return [(a.number, a.outcome) for a in Run.objects.get(pk=run.pk).attempt_history()]


def steps(run: Run) -> list[tuple[str, str, int, int]]:
    """(name, status, run attempt, step attempt) of each step row, in order."""
    return [
        (s.name, s.status, s.attempt, s.step_attempt)
        for s in Step.objects.filter(run=run.pk).order_by("id")
    ]


# -- run-level retries -------------------------------------------------------------------------


def test_run_retry__same_run_tried_again_until_it_succeeds_steps_kept(record_signals):
    jobs.FLAGS["retried"] = 3  # the service is down for the first two calls
    run = jobs.retried.trigger(None)
    sent = record_signals("run_retry_scheduled", "run_failed", "run_completed")

    assert process_until_idle() == 3

    run.refresh_from_db()
    assert (run.status, run.output, run.attempt, run.failed_attempts) == ("completed", 3, 3, 2)
    assert run.retry_at is None
    assert jobs.CALLS["retried:before"] == 1  # the completed step was replayed, never re-run
    assert attempts(run) == [
        (1, AttemptOutcome.FAILED),
        (2, AttemptOutcome.FAILED),
        (3, AttemptOutcome.COMPLETED),
    ]
    history = run.attempt_history()
    assert RunAttempt.objects.filter(run=run.pk).count() == 2  # the completing one is the run
    assert [a.error["message"] for a in history[:2]] == [
        "retried is down (call 1)",
        "retried is down (call 2)",
    ]
    assert history[2].error is None
    assert all(a.started_at is not None and a.started_at <= a.ended_at for a in history)
    assert all(a.retry_at is not None for a in history[:2])
    names = [s.name for s in sent]
    assert names == ["run_retry_scheduled", "run_retry_scheduled", "run_completed"]
    assert [s.kwargs["attempt"] for s in sent[:2]] == [1, 2]
    assert sent[0].kwargs["outcome"] == "failed"
    assert sent[0].kwargs["error"]["type"] == "tests.jobs.Transient"


def test_run_retry__fails_when_attempts_run_out_with_every_error_kept():
    jobs.FLAGS["retried"] = 10
    run = jobs.retried.trigger(None)

    assert process_until_idle() == 3

    run.refresh_from_db()
    assert (run.status, run.attempt, run.failed_attempts) == ("failed", 3, 3)
    assert run.error["message"] == "retried is down (call 3)"  # the last error
    assert attempts(run) == [(n, AttemptOutcome.FAILED) for n in (1, 2, 3)]
    assert [a.retry_at is None for a in RunAttempt.objects.filter(run=run.pk)] == [
        False,
        False,
        True,
    ]


def test_run_retry__due_after_the_delay_by_the_database_clock():
    jobs.FLAGS["retried_later"] = RuntimeError("down")
    run = jobs.retried_later.trigger(None)

    outcome = process_next()

    assert outcome is not None and outcome.status == "retrying"
    stored = Run.objects.annotate(now=Now()).get(pk=run.pk)
    assert stored.status == RunStatus.PENDING
    assert stored.retry_at == stored.run_after == outcome.retry_at
    # Written by the statement that ended the attempt: database now (updated_at) + 60 s.
    assert stored.run_after - stored.updated_at == timedelta(seconds=60)
    assert stored.lease_expires_at is None and stored.completed_at is None
    assert stored.error["message"] == "down"
    assert process_one() is False  # not due yet
    assert list(Run.objects.retrying()) == [stored]


@pytest.mark.parametrize(
    "error", [KeyError("gone"), NonRetryable("declined")], ids=["give_up_on", "NonRetryable"]
)
def test_run_retry__given_up_at_once(error):
    jobs.FLAGS["retried_later"] = error
    run = jobs.retried_later.trigger(None)

    assert process_next().status == "failed"  # type: ignore[union-attr]

    run.refresh_from_db()
    assert (run.status, run.failed_attempts, run.retry_at) == ("failed", 1, None)
    assert attempts(run) == [(1, AttemptOutcome.FAILED)]


def test_run_retry__retry_on_other_exceptions_is_not_retried(settings):
    settings.DURABLY_DEFAULT_RETRY = {"max_attempts": 5, "initial_delay": 0, "retry_on": (OSError,)}
    jobs.FLAGS["fail"] = "b"
    run = jobs.three_steps.trigger({})  # raises RuntimeError: not an OSError

    assert process_until_idle() == 1

    run.refresh_from_db()
    assert run.status == "failed"


def test_default_retry__applies_to_jobs_without_a_policy(settings):
    settings.DURABLY_DEFAULT_RETRY = {"max_attempts": 2, "initial_delay": 0, "jitter": False}
    jobs.FLAGS["fail"] = "b"
    run = jobs.three_steps.trigger({})

    assert process_until_idle() == 2

    run.refresh_from_db()
    assert (run.status, run.attempt, run.failed_attempts) == ("failed", 2, 2)
    assert jobs.CALLS["a"] == 1  # step "a" completed on attempt 1 and was replayed


def test_cancel__wins_over_a_pending_retry():
    jobs.FLAGS["retried_later"] = RuntimeError("down")
    run = jobs.retried_later.trigger(None)
    process_one()

    result = cancel_run(run.pk)

    assert result.cancelled and result.from_status == "pending"
    run.refresh_from_db()
    assert (run.status, run.retry_at) == ("cancelled", None)
    assert process_one() is False
    assert not Run.objects.retrying().exists()


def test_resume__gives_a_failed_run_its_attempts_back():
    jobs.FLAGS["retried"] = 10
    run = jobs.retried.trigger(None)
    process_until_idle()
    jobs.FLAGS["retried"] = 5  # up again from the fifth call

    resume_run(run.pk)
    assert Run.objects.get(pk=run.pk).failed_attempts == 0
    assert process_until_idle() == 2

    run.refresh_from_db()
    assert (run.status, run.attempt, run.failed_attempts) == ("completed", 5, 1)
    assert [n for n, _outcome in attempts(run)] == [1, 2, 3, 4, 5]


def test_retrying_run__does_not_block_a_trigger_with_its_concurrency_key():
    """A run waiting for its retry continues an attempt: a new trigger with the same key is a new
    pending run (the claim still runs one at a time per key)."""
    first = jobs.retried_with_key.trigger(None)
    with pytest.raises(PendingRunExists):
        jobs.retried_with_key.trigger(None)
    claimed = leases.claim(worker_id="w")
    assert [r.pk for r in claimed] == [first.pk]
    assert leases.finish(
        [leases.FinishRow(first.pk, 1, RunStatus.PENDING, {"type": "E"}, retry_delay=0)]
    )

    second = jobs.retried_with_key.trigger(None)

    assert second.disposition == "created"
    assert {r.pk for r in Run.objects.filter(status="pending")} == {first.pk, second.pk}
    (claimed,) = leases.claim(worker_id="w", limit=2)  # one key, one lease at a time
    assert claimed.pk == first.pk  # due first
    assert leases.complete(claimed.pk, claimed.lease_generation, None)
    assert process_until_idle() == 1
    assert set(Run.objects.values_list("status", flat=True)) == {"completed"}


# -- step-level retries ------------------------------------------------------------------------


def test_step_retry__waits_in_place_and_only_that_step_runs_again():
    jobs.FLAGS["step_retried"] = 3
    run = jobs.step_retried.trigger({"retry": {"max_attempts": 3, "initial_delay": 0.01}})

    assert process_until_idle() == 1

    run.refresh_from_db()
    assert (run.status, run.output, run.attempt) == ("completed", 3, 1)
    assert steps(run) == [
        ("before", "completed", 1, 1),
        ("call", "failed", 1, 1),
        ("call", "failed", 1, 2),
        ("call", "completed", 1, 3),
        ("after", "completed", 1, 1),
    ]
    assert jobs.CALLS["step_retried:before"] == 1
    assert attempts(run) == [(1, AttemptOutcome.COMPLETED)]


def test_step_retry__gives_up_and_the_error_reaches_the_run():
    jobs.FLAGS["step_retried"] = 10
    run = jobs.step_retried.trigger({"retry": {"max_attempts": 2, "initial_delay": 0.01}})

    process_until_idle()

    run.refresh_from_db()
    assert run.status == "failed"
    assert run.error["type"] == "tests.jobs.Transient"
    assert [s[1:] for s in steps(run)[1:]] == [("failed", 1, 1), ("failed", 1, 2)]


def test_step_retry__a_long_delay_releases_the_run_until_the_next_try(settings, record_signals):
    settings.DURABLY_INLINE_RETRY_MAX_DELAY = 0.05
    jobs.FLAGS["step_retried"] = 2
    run = jobs.step_retried.trigger({"retry": {"max_attempts": 3, "initial_delay": 0.3}})
    sent = record_signals("run_retry_scheduled")

    outcome = process_next()

    assert outcome is not None and outcome.status == "retrying"
    stored = Run.objects.get(pk=run.pk)
    assert (stored.status, stored.failed_attempts) == (
        "pending",
        0,
    )  # a step's retry, not the run's
    assert stored.run_after - stored.updated_at == timedelta(seconds=0.3)
    assert attempts(run) == [(1, AttemptOutcome.STEP_RETRY)]
    assert sent[0].kwargs["outcome"] == "step_retry"
    assert sent[0].kwargs["step_name"] == "call"

    wait_until(process_one, timeout=10, what="the step's next try to be due")

    run.refresh_from_db()
    assert (run.status, run.output, run.attempt) == ("completed", 2, 2)
    assert steps(run) == [
        ("before", "completed", 1, 1),
        ("call", "failed", 1, 1),
        ("call", "completed", 2, 2),  # try 2, continued on the next claim
        ("after", "completed", 2, 1),
    ]
    assert attempts(run) == [(1, AttemptOutcome.STEP_RETRY), (2, AttemptOutcome.COMPLETED)]


def test_cancel__stops_a_step_waiting_in_place_for_its_retry():
    jobs.FLAGS["step_retried"] = 10
    run = jobs.step_retried.trigger({"retry": {"max_attempts": 5, "initial_delay": 5}})
    worker = start(process_next, lease_seconds=1.5)  # renewals every 0.5 s hear of the cancel
    wait_until(
        lambda: Step.objects.filter(run=run.pk, status="failed").exists(),
        what="the first try to fail",
    )

    cancel_run(run.pk)

    outcome = worker.outcome(timeout=4)  # long before the 5 s delay is over
    assert outcome.status == "cancelled"
    assert jobs.CALLS["step_retried"] == 1  # the function never ran again
    assert [s[:2] for s in steps(run)] == [
        ("before", "completed"),
        ("call", "failed"),
        ("call", "cancelled"),
    ]
    assert Run.objects.get(pk=run.pk).status == "cancelled"
    assert attempts(run) == [(1, AttemptOutcome.CANCELLED)]


# -- the attempt history of other ends -------------------------------------------------------------


def test_hand_back__recorded_and_not_counted():
    run = jobs.noop.trigger(None)
    (claimed,) = leases.claim(worker_id="w-1")

    assert leases.release(run.pk, claimed.lease_generation)
    (again,) = leases.claim(worker_id="w-2")

    assert again.failed_attempts == 0
    assert attempts(run) == [(1, AttemptOutcome.RELEASED)]
    assert RunAttempt.objects.get(run=run.pk).worker == "w-1"


def test_cancel__of_a_handed_back_run_does_not_record_its_attempt_twice():
    """A hand back ends the attempt (``released``); the run stays leased until a claim takes it,
    and a cancel then ends the run, not that attempt again (found by the chaos suite)."""
    run = jobs.noop.trigger(None)
    (claimed,) = leases.claim(worker_id="w-1")
    assert leases.release(run.pk, claimed.lease_generation)

    assert not leases.release(run.pk, claimed.lease_generation)  # handed back once, not twice
    cancel_run(run.pk)

    assert attempts(run) == [(1, AttemptOutcome.RELEASED)]
    assert Run.objects.get(pk=run.pk).status == "cancelled"


def lose_worker(run: Run, worker: str) -> Any:
    """Claim ``run`` as ``worker`` with a lease that has already run out: a worker that died."""
    (claimed,) = leases.claim(worker_id=worker)
    assert claimed.pk == run.pk
    Run.objects.filter(pk=run.pk).update(lease_expires_at=Now() - timedelta(seconds=1))
    return claimed


def test_reclaim__records_the_lost_attempt_and_counts_it():
    run = jobs.noop.trigger(None)
    lose_worker(run, "dead-1")

    (claimed,) = leases.claim(worker_id="w-2")

    assert (claimed.attempt, claimed.failed_attempts) == (2, 1)
    (lost,) = RunAttempt.objects.filter(run=run.pk)
    assert (lost.number, lost.worker, lost.outcome) == (1, "dead-1", AttemptOutcome.LOST)
    assert lost.error["type"] == "django_durably.exceptions.WorkerLost"
    assert lost.started_at is not None and lost.ended_at is not None


def test_poison_run__fails_instead_of_being_claimed_again(settings):
    settings.DURABLY_MAX_RECLAIMS = 2
    run = jobs.noop.trigger(None)
    lose_worker(run, "dead-1")
    lose_worker(run, "dead-2")  # the reclaim by dead-2 counted dead-1's attempt

    outcome = process_next()  # finds dead-2's attempt lost too: 2 of 2

    assert outcome is not None and outcome.status == "failed"
    run.refresh_from_db()
    assert (run.status, run.failed_attempts) == ("failed", 2)  # the losses; the refusal is not one
    assert run.error["type"] == "django_durably.exceptions.WorkerLost"
    assert "DURABLY_MAX_RECLAIMS is 2" in run.error["message"]
    assert attempts(run) == [
        (1, AttemptOutcome.LOST),
        (2, AttemptOutcome.LOST),
        (3, AttemptOutcome.FAILED),
    ]


def test_poison_run__with_a_policy_its_max_attempts_is_the_limit():
    jobs.FLAGS["retried"] = 1
    run = jobs.retried.trigger(None)  # max_attempts=3
    for worker in ("dead-1", "dead-2", "dead-3"):
        lose_worker(run, worker)

    assert process_next().status == "failed"  # type: ignore[union-attr]

    run.refresh_from_db()
    assert run.failed_attempts == 3
    assert "the retry policy's max_attempts is 3" in run.error["message"]
    assert jobs.CALLS["retried"] == 0


def test_cancel__of_a_running_attempt_is_recorded():
    run = jobs.noop.trigger(None)
    leases.claim(worker_id="w-1")

    cancel_run(run.pk)

    (cancelled,) = RunAttempt.objects.filter(run=run.pk)
    assert (cancelled.number, cancelled.worker, cancelled.outcome) == (
        1,
        "w-1",
        AttemptOutcome.CANCELLED,
    )
    assert Step.objects.filter(run=run.pk, status=StepStatus.CANCELLED).count() == 0
