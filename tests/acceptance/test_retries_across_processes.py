"""Retries and timeouts with real worker processes: a job that kills its worker is failed after
``DURABLY_MAX_RECLAIMS`` lost workers instead of looping, and a worker with more threads stuck in
timed-out jobs than ``DURABLY_MAX_ABANDONED_THREADS`` re-executes itself and goes on working."""

from __future__ import annotations

import signal

import pytest

from django_durably.models import AttemptOutcome, Run, RunAttempt
from tests import jobs
from tests.acceptance.processes import Workers, completed_by, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, databases="__all__")]

FAST = ("--lease-seconds", "1", "--poll-interval", "0.1")


def test_poison_run__a_job_that_kills_its_worker_fails_instead_of_looping(workers: Workers):
    run = jobs.kills_its_worker.trigger(None)
    env = {"DURABLY_WORKER_MAX_RECLAIMS": "2"}

    for number in (1, 2):  # each claim runs the job, which SIGKILLs its worker
        killed = workers.start(*FAST, "--worker-id", f"killed-{number}", env=env)
        assert killed.wait_exit(30) == -signal.SIGKILL
    survivor = workers.start(*FAST, "--worker-id", "survivor", env=env)
    wait_for(
        lambda: Run.objects.filter(pk=run.pk, status="failed").exists(),
        timeout=30,
        what="the third claim to fail the run",
        workers=[survivor],
    )

    failed = Run.objects.get(pk=run.pk)
    assert failed.error is not None
    assert failed.error["type"] == "django_durably.exceptions.WorkerLost"
    assert (failed.attempt, failed.failed_attempts) == (3, 2)
    history = [(a.number, a.worker, a.outcome) for a in RunAttempt.objects.filter(run=run.pk)]
    assert history == [
        (1, "killed-1", AttemptOutcome.LOST),
        (2, "killed-2", AttemptOutcome.LOST),
        (3, "survivor", AttemptOutcome.FAILED),
    ]
    assert survivor.alive()  # the job was not run a third time


def test_abandoned_threads__past_the_cap_the_worker_restarts_itself(workers: Workers):
    stuck = jobs.sleeps_past_its_timeout.trigger({"seconds": 60})
    worker = workers.start(
        *FAST, "--worker-id", "restarts", env={"DURABLY_WORKER_MAX_ABANDONED_THREADS": "0"}
    )
    pid = worker.pid

    worker.wait_for_log("Restarting:", timeout=30)
    wait_for(
        lambda: worker.log().count("Worker restarts starting") >= 2,
        timeout=30,
        what="the worker to start again in its own process",
        workers=[worker],
    )

    assert worker.pid == pid and worker.alive()
    timed_out = Run.objects.get(pk=stuck.pk)
    assert timed_out.status == "failed"
    assert timed_out.error is not None
    assert timed_out.error["type"] == "django_durably.exceptions.RunTimedOut"
    after = jobs.noop.trigger("after the restart")
    done = completed_by(worker, after, timeout=30, what="the restarted worker to run a run")
    assert done.lease_owner == "restarts"
