"""Stopping a worker process with signals: the first SIGTERM drains, the second hands back at once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from django_durably.models import Run, RunAttempt
from tests import jobs
from tests.acceptance.processes import (
    WorkerProcess,
    Workers,
    completed_by,
    side_effects,
    wait_entered,
)
from tests.concurrency import holds

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, databases="__all__")]

FIRST_SIGNAL = "SIGTERM: no new claims"


def start_blocked_run(workers: Workers, folder: Path, *options: str) -> tuple[Run, WorkerProcess]:
    """Trigger a run whose first step waits at the gate, and a worker that enters that step."""
    folder.mkdir()
    run = jobs.side_effects.trigger({"dir": str(folder), "steps": 2, "block_at": 0})
    worker = workers.start("--poll-interval", "0.1", *options)
    wait_entered(worker, folder, 0)
    return run, worker


def test_first_sigterm__stops_claiming_and_lets_the_running_job_finish(
    workers: Workers, tmp_path: Path
):
    folder = tmp_path / "run"
    run, worker = start_blocked_run(
        workers, folder, "--concurrency", "2", "--grace-period", "60", "--worker-id", "graceful"
    )

    worker.send(signal.SIGTERM)
    worker.wait_for_log(FIRST_SIGNAL, timeout=10)
    late = jobs.noop.trigger("triggered after the signal")
    # A slot is free and the run is ready (on PostgreSQL a notification is sent): it stays pending
    # over several poll intervals because the worker no longer claims.
    holds(
        lambda: worker.alive() and Run.objects.filter(pk=late.pk, status="pending").exists(),
        seconds=1.0,
        what="the late run to stay pending while the worker drains",
    )

    (folder / "gate").touch()
    assert worker.wait_exit(20) == 0
    done = Run.objects.get(pk=run.pk)
    assert (done.status, done.attempt, done.lease_owner) == ("completed", 1, "graceful")
    assert side_effects(folder) == ["step-0 attempt-1", "step-1 attempt-1"]
    late.refresh_from_db()
    assert (late.status, late.lease_generation) == ("pending", 0)
    log = worker.log()
    assert f"run={run.pk} job=tests.side_effects attempt=1 outcome=completed" in log
    assert "exiting: 1 claimed, 1 completed" in log


def test_second_sigterm__hands_the_run_back_for_another_worker_at_once(
    workers: Workers, tmp_path: Path
):
    folder = tmp_path / "run"
    run, a = start_blocked_run(
        workers, folder, "--lease-seconds", "60", "--grace-period", "60", "--worker-id", "hard-a"
    )
    generation = Run.objects.get(pk=run.pk).lease_generation

    a.send(signal.SIGTERM)
    a.wait_for_log(FIRST_SIGNAL, timeout=10)
    a.send(signal.SIGTERM)
    handed_back_at = time.monotonic()
    assert a.wait_exit(10) == 0
    assert "SIGTERM again" in a.log()
    assert f"run={run.pk} outcome=released" in a.log()
    assert "exiting: 1 claimed, 1 released\n" in a.log()

    handed = Run.objects.get(pk=run.pk)
    # No owner: handed back, so the claim that takes it does not count the attempt as lost.
    assert (handed.status, handed.lease_generation, handed.lease_owner) == (
        "leased",
        generation,
        "",
    )
    (attempt,) = RunAttempt.objects.filter(run=run.pk)
    assert (attempt.number, attempt.worker, attempt.outcome) == (1, "hard-a", "released")
    # The lease is over by the database clock: claimable now, not in 60 seconds.
    assert Run.objects.expired().filter(pk=run.pk).exists()

    b = workers.start("--poll-interval", "0.1", "--worker-id", "hard-b")
    completed_by(b, run, timeout=15, what="worker B to take the handed-back run")
    assert time.monotonic() - handed_back_at < 60
    done = Run.objects.get(pk=run.pk)
    assert (done.attempt, done.lease_generation, done.lease_owner) == (2, generation + 1, "hard-b")
    assert done.failed_attempts == 0
    # A was stopped inside step-0's body: that body never finished, so B ran every step.
    assert side_effects(folder) == ["step-0 attempt-2", "step-1 attempt-2"]
