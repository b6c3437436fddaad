"""Timeouts (DESIGN.md section 7): past a job's or a step call's timeout the worker ends the attempt
with one fenced write that bumps the generation, so the thread still inside user code can write
nothing more; the slot gets a new thread; too many stuck threads make the worker stop to be
restarted. Real worker threads, jobs held at gates (tests/jobs.py), waits with deadlines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from django_durably import process_next
from django_durably.models import AttemptOutcome, Run, RunAttempt, Step, StepStatus
from django_durably.worker import Worker
from tests import jobs
from tests.concurrency import start, start_worker, wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def worker() -> Iterator[Callable[..., Worker]]:
    """``worker(**options)``: a worker running on a thread, stopped when the test ends."""
    started: list[tuple[Worker, Any]] = []

    def make(**options: Any) -> Worker:
        options.setdefault("poll_interval", 0.05)
        options.setdefault("lease_seconds", 5)
        made = Worker(**options)
        started.append((made, start_worker(made)))
        return made

    yield make
    for made, thread in started:
        made.stop(hard=True)
        thread.join(10)


def status_of(run: Run) -> str:
    return str(Run.objects.values_list("status", flat=True).get(pk=run.pk))


def test_job_timeout__ends_the_attempt_fences_the_thread_and_frees_the_slot(worker, gates):
    opened, entered = gates("timeout")
    run = jobs.times_out.trigger(None)
    running = worker(concurrency=1)
    assert entered.wait(10)

    wait_until(lambda: status_of(run) == "failed", what="the attempt to be ended at its timeout")

    run.refresh_from_db()
    assert run.error["type"] == "django_durably.exceptions.RunTimedOut"
    assert "timeout of 0.3s" in run.error["message"]
    assert run.lease_generation == 2  # bumped: the stuck thread's lease is fenced out for good
    (attempt,) = RunAttempt.objects.filter(run=run.pk)
    assert (attempt.number, attempt.outcome) == (1, AttemptOutcome.TIMED_OUT)
    assert running.stats.abandoned == 1
    assert running.abandoned_threads() == 1

    # The only slot is free again although its old thread is still held at the gate.
    other = jobs.noop.trigger("next")
    wait_until(lambda: status_of(other) == "completed", what="the freed slot to run another run")
    assert not opened.is_set()

    opened.set()  # the stuck thread finishes its step: its checkpoint is refused
    wait_until(lambda: running.abandoned_threads() == 0, what="the abandoned thread to return")
    assert not Step.objects.filter(run=run.pk, name="gate", status=StepStatus.COMPLETED).exists()
    assert jobs.CALLS["times_out:last"] == 0
    assert status_of(run) == "failed"
    assert running.stats.outcomes.get("timed_out") == 1


def test_job_timeout__retried_by_the_job_policy(worker, gates, record_signals):
    gates("attempt-1")
    sent = record_signals("run_retry_scheduled")
    run = jobs.times_out_once.trigger(None)
    worker(concurrency=2)

    wait_until(lambda: status_of(run) == "completed", what="attempt 2 to complete")

    run.refresh_from_db()
    assert (run.attempt, run.failed_attempts) == (2, 1)
    assert [(a.number, a.outcome) for a in run.attempt_history()] == [
        (1, AttemptOutcome.TIMED_OUT),
        (2, AttemptOutcome.COMPLETED),
    ]
    assert jobs.CALLS["times_out:first"] == 1  # checkpointed in attempt 1, replayed in attempt 2
    assert [s.kwargs["outcome"] for s in sent] == ["timed_out"]


def test_step_timeout__the_step_fails_with_step_timed_out(worker, gates, record_signals):
    gates("timeout")
    sent = record_signals("step_failed", "run_failed")
    run = jobs.step_times_out.trigger(None)
    worker(concurrency=1)

    wait_until(lambda: status_of(run) == "failed", what="the step's timeout to end the attempt")

    (failed,) = Step.objects.filter(run=run.pk)
    assert (failed.name, failed.status, failed.step_attempt) == ("slow", "failed", 1)
    assert failed.error["type"] == "django_durably.exceptions.StepTimedOut"
    assert Run.objects.get(pk=run.pk).error["type"] == "django_durably.exceptions.StepTimedOut"
    wait_until(lambda: len(sent) == 2, what="the signals of the timed-out attempt")
    assert [s.name for s in sent] == ["step_failed", "run_failed"]
    assert sent[0].kwargs["step_attempt"] == 1


def test_abandoned_threads__past_the_cap_the_worker_stops_to_be_restarted(settings, gates):
    settings.DURABLY_MAX_ABANDONED_THREADS = 0
    gates("timeout")
    run = jobs.times_out.trigger(None)
    stopping = Worker(concurrency=2, poll_interval=0.05, lease_seconds=5, grace_period=5)
    thread = start(stopping.run)

    stats = thread.outcome(timeout=15)

    assert stats.restart_requested is True
    assert stats.abandoned == 1
    assert status_of(run) == "failed"


def test_process_one__the_attempt_is_ended_on_time_while_the_call_is_stuck(gates):
    opened, entered = gates("timeout")
    run = jobs.times_out.trigger(None)
    caller = start(process_next, lease_seconds=5)
    assert entered.wait(10)

    wait_until(lambda: status_of(run) == "failed", what="the keeper to end the attempt")
    assert caller.is_alive()  # the calling thread is still inside the job: Python cannot stop it

    opened.set()
    outcome = caller.outcome(timeout=10)
    assert outcome.status == "timed_out"
    assert not Step.objects.filter(run=run.pk, name="gate", status=StepStatus.COMPLETED).exists()
