"""A worker that dies or stalls mid-run: another worker finishes the run, and the first one, if it
comes back, can persist nothing.

``tests.side_effects`` appends one line per step body to ``<dir>/side-effects.txt``, so the file
shows which step bodies really ran, by which attempt.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest
from django.db import connections

from django_durably.models import Run, RunLog, Step
from tests import jobs
from tests.acceptance.processes import (
    WorkerProcess,
    Workers,
    completed_by,
    side_effects,
    wait_entered,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, databases="__all__")]

STEPS = 6


def completed_steps(run: Run) -> list[tuple[str, int]]:
    rows = Step.objects.filter(run_id=run.pk, status="completed").order_by("index")
    return list(rows.values_list("name", "attempt"))


def sqlite_write_lock_free() -> bool:
    """Whether a writer could start now on the SQLite test database (no one holds its lock)."""
    database = sqlite3.connect(connections["default"].settings_dict["NAME"], timeout=0.2)
    try:
        database.execute("BEGIN IMMEDIATE")
        database.rollback()
    except sqlite3.OperationalError:
        return False
    finally:
        database.close()
    return True


def freeze(process: WorkerProcess, alias: str) -> None:
    """SIGSTOP ``process``; on SQLite, never while it holds the database's write lock (a frozen
    writer would block every other process, which PostgreSQL's server-side statements avoid)."""
    for _attempt in range(50):
        process.stop()
        if alias != "default" or sqlite_write_lock_free():
            return
        process.send(signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"{process!r} kept holding the SQLite write lock")


@pytest.mark.parametrize("kill_at", [0, 2, 4])
def test_crash__a_killed_workers_run_resumes_without_repeating_completed_steps(
    workers: Workers, tmp_path: Path, kill_at: int
):
    folder = tmp_path / "run"
    folder.mkdir()
    run = jobs.side_effects.trigger({"dir": str(folder), "steps": STEPS, "block_at": kill_at})
    a = workers.start("--lease-seconds", "2", "--poll-interval", "0.1", "--worker-id", "crash-a")
    wait_entered(a, folder, kill_at)

    a.kill()
    assert a.wait_exit(10) == -signal.SIGKILL
    killed = Run.objects.get(pk=run.pk)
    assert (killed.status, killed.lease_owner, killed.attempt) == ("leased", "crash-a", 1)
    assert killed.completed_step_count == kill_at
    assert side_effects(folder) == [f"step-{i} attempt-1" for i in range(kill_at)]

    b = workers.start("--lease-seconds", "30", "--poll-interval", "0.1", "--worker-id", "crash-b")
    done = completed_by(b, run, timeout=30, what="worker B to reclaim and complete the run")
    assert (done.attempt, done.lease_generation, done.lease_owner) == (2, 2, "crash-b")
    assert done.output == {"attempt": 2, "steps": list(range(STEPS))}
    assert done.completed_step_count == STEPS
    # B could only claim the run once A's lease had expired (both times by the database clock).
    assert done.completed_at is not None and killed.lease_expires_at is not None
    assert done.completed_at >= killed.lease_expires_at
    # Steps completed by A were replayed from their checkpoints, never re-run.
    expected = [(f"step-{i}", 1 if i < kill_at else 2) for i in range(STEPS)]
    assert side_effects(folder) == [f"{name} attempt-{attempt}" for name, attempt in expected]
    assert completed_steps(done) == expected
    assert Step.objects.filter(run_id=run.pk).count() == STEPS  # no failed rows either
    assert b.wait_for_outcome(run.pk, 2, timeout=10) == "completed"


@pytest.mark.parametrize("a_resumes", ["after_b_completed", "while_b_holds_the_lease"])
def test_stale_owner__a_stopped_worker_writes_nothing_after_losing_its_lease(
    db_alias: str, workers: Workers, tmp_path: Path, a_resumes: str
):
    """A is frozen in step-1 until its lease expires; B reclaims. When A resumes, its step body
    finishes, but its checkpoint and log writes are refused: fenced by the run's status when B has
    completed the run, by the lease generation alone while B is still running it (B then waits in
    step-2)."""
    folder = tmp_path / "run"
    folder.mkdir()
    blocks = {"1": 1} if a_resumes == "after_b_completed" else {"1": 1, "2": 2}
    run = jobs.side_effects.trigger({"dir": str(folder), "steps": 3, "blocks": blocks})
    a = workers.start("--lease-seconds", "2", "--poll-interval", "0.1", "--worker-id", "stale-a")
    wait_entered(a, folder, 1)

    freeze(a, db_alias)
    logs_before_stop = set(RunLog.objects.filter(run_id=run.pk).values_list("pk", flat=True))
    wait_for(
        lambda: Run.objects.expired().filter(pk=run.pk).exists(),
        timeout=15,
        what="A's lease to expire in the database",
    )
    b = workers.start("--lease-seconds", "30", "--poll-interval", "0.1", "--worker-id", "stale-b")
    if a_resumes == "after_b_completed":
        completed_by(b, run, timeout=30, what="worker B to reclaim and complete the run")
    else:
        wait_entered(b, folder, 2, 2)
        held = Run.objects.get(pk=run.pk)
        assert (held.status, held.lease_generation, held.lease_owner) == ("leased", 2, "stale-b")

    # A wakes up inside step-1 of attempt 1: its step body finishes, but every write is fenced.
    (folder / "gate").touch()
    a.send(signal.SIGCONT)
    assert a.wait_for_outcome(run.pk, 1, timeout=30) == "lost"
    if a_resumes == "while_b_holds_the_lease":
        assert Run.objects.get(pk=run.pk).status == "leased"
        (folder / "gate-2").touch()
        completed_by(b, run, timeout=30, what="worker B to complete the run")

    done = Run.objects.get(pk=run.pk)
    assert (done.attempt, done.lease_generation, done.lease_owner) == (2, 2, "stale-b")
    assert done.output == {"attempt": 2, "steps": [0, 1, 2]}
    assert completed_steps(done) == [("step-0", 1), ("step-1", 2), ("step-2", 2)]
    assert Step.objects.filter(run_id=run.pk).count() == 3
    new_logs = RunLog.objects.filter(run_id=run.pk).exclude(pk__in=logs_before_stop)
    assert sorted(new_logs.values_list("step_name", "attempt")) == [("step-1", 2), ("step-2", 2)]
    # A's step body did run (at-least-once), after B's run of step-1; only its writes were refused.
    lines = side_effects(folder)
    assert lines[:2] == ["step-0 attempt-1", "step-1 attempt-2"]
    assert sorted(lines[2:]) == ["step-1 attempt-1", "step-2 attempt-2"]
    assert b.wait_for_outcome(run.pk, 2, timeout=10) == "completed"

    a.send(signal.SIGTERM)
    assert a.wait_exit(20) == 0
    assert "outcome=completed" not in a.log()
