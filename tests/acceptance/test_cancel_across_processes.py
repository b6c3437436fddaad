"""A run cancelled from another process while a worker process is inside one of its long steps.

The worker learns of it at once on PostgreSQL (the cancel's notification) and at its next lease
renewal on SQLite (``--lease-seconds 3`` renews every second), or sooner when the step calls
``step.check()``. It stops the job (inside the step that checks, or at the end of one that
cannot be interrupted), writes nothing more under its lease but the ``cancelled`` row of the
interrupted step, and leaves the status ``cancelled``. Resumed, the run is completed by a worker
without re-running the steps completed before the cancel.

``tests.side_effects`` appends one line per step body to ``<dir>/side-effects.txt``, so the file
shows which step bodies really ran, by which attempt.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from django_durably import cancel_run, resume_run
from django_durably.models import AuditRecord, Run, RunLog, Step
from tests import jobs
from tests.acceptance.processes import Workers, completed_by, side_effects, wait_entered, wait_for
from tests.concurrency import holds

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, databases="__all__")]

LEASE_SECONDS = 3.0
RENEW_INTERVAL = LEASE_SECONDS / 3  # the worker's default: a third of the lease
MARGIN = 2.0  # for the renewal statement and a busy machine


def stored(run: Run) -> tuple[set[int], set[int]]:
    """The ids of the run's step rows and log rows written under a lease (not the ``cancelled``
    row of the step a cancel interrupted)."""
    return (
        set(
            Step.objects.filter(run_id=run.pk)
            .exclude(status="cancelled")
            .values_list("pk", flat=True)
        ),
        set(RunLog.objects.filter(run_id=run.pk).values_list("pk", flat=True)),
    )


@pytest.mark.parametrize("long_step", ["checks", "blocks"])
def test_cancel__a_worker_process_stops_within_a_renewal_interval_and_writes_nothing_more(
    workers: Workers, tmp_path: Path, long_step: str, db_alias: str
):
    """``checks``: the long step calls ``step.check()`` while it waits, so the execution ends as
    cancelled at once, with the step still blocked. ``blocks``: the step ignores cancellation; the
    worker notices (PostgreSQL: by the cancel's notification; SQLite: within one renewal
    interval), and the execution ends at the step's end, whose checkpoint is refused."""
    folder = tmp_path / "run"
    folder.mkdir()
    run = jobs.side_effects.trigger(
        {
            "dir": str(folder),
            "steps": 3,
            "block_at": 1,
            "check_while_blocked": long_step == "checks",
        }
    )
    worker = workers.start(
        "--lease-seconds", str(LEASE_SECONDS), "--poll-interval", "0.1", "--worker-id", "cw"
    )
    wait_entered(worker, folder, 1)
    running = Run.objects.get(pk=run.pk)
    assert (running.status, running.lease_owner, running.completed_step_count) == (
        "leased",
        "cw",
        1,
    )

    result = cancel_run(run.pk, actor="acceptance", source="test")
    cancelled_at = time.monotonic()
    at_cancel = stored(run)

    assert (result.cancelled, result.from_status) == (True, "leased")
    if long_step == "checks":
        # Stopped inside the step, which is still blocked: the gate was never opened.
        assert worker.wait_for_outcome(run.pk, 1, timeout=RENEW_INTERVAL + MARGIN) == "cancelled"
        assert time.monotonic() - cancelled_at <= RENEW_INTERVAL + MARGIN
        assert not (folder / "gate").exists()
        assert side_effects(folder) == ["step-0 attempt-1"]
    else:
        notified = f"Run {run.pk}: cancelled; stopping before its next step."
        renewed = f"Run {run.pk}: lease renewal refused (cancelled)"
        wait_for(
            lambda: notified in worker.log() or renewed in worker.log(),
            timeout=RENEW_INTERVAL + MARGIN,
            what="the worker to notice the cancel",
            workers=[worker],
        )
        assert time.monotonic() - cancelled_at <= RENEW_INTERVAL + MARGIN
        if db_alias == "postgres":
            assert notified in worker.log()  # the notification, not a renewal
        # The step body cannot be interrupted: no outcome while it is blocked...
        holds(
            lambda: f"run={run.pk} job=tests.side_effects attempt=1 outcome=" not in worker.log(),
            seconds=0.5,
            what="no outcome while the step is blocked",
        )
        (folder / "gate").touch()
        # ...and once it returns, its checkpoint is refused and the execution ends as cancelled.
        assert worker.wait_for_outcome(run.pk, 1, timeout=10) == "cancelled"
        assert side_effects(folder) == ["step-0 attempt-1", "step-1 attempt-1"]

    # Nothing was written after the cancel, and the status stays cancelled.
    holds(
        lambda: Run.objects.filter(pk=run.pk, status="cancelled").exists(),
        seconds=RENEW_INTERVAL,
        what="the run to stay cancelled",
    )
    assert stored(run) == at_cancel
    cancelled = Run.objects.get(pk=run.pk)
    assert (cancelled.output, cancelled.error, cancelled.completed_step_count) == (None, None, 1)
    assert list(Step.objects.filter(run_id=run.pk).values_list("name", "status")) == [
        ("step-0", "completed"),
        ("step-1", "cancelled"),  # interrupted by the cancel: its work is not checkpointed
    ]
    assert not (folder / "entered-2-1").exists()

    # Resumed, the same worker completes it; step-0 is replayed, not re-run.
    assert resume_run(run.pk, actor="acceptance", source="test").from_status == "cancelled"
    done = completed_by(worker, run, timeout=30, what="the worker to complete the resumed run")
    assert (done.attempt, done.lease_generation, done.lease_owner) == (2, 2, "cw")
    assert done.output == {"attempt": 2, "steps": [0, 1, 2]}
    assert list(
        Step.objects.filter(run_id=run.pk, status="completed")
        .order_by("index")
        .values_list("name", "attempt")
    ) == [("step-0", 1), ("step-1", 2), ("step-2", 2)]
    assert Step.objects.filter(run_id=run.pk).count() == 4  # and the cancelled step-1
    lines = side_effects(folder)
    assert lines.count("step-0 attempt-1") == 1
    assert [line for line in lines if "attempt-2" in line] == [
        "step-1 attempt-2",
        "step-2 attempt-2",
    ]
    assert worker.wait_for_outcome(run.pk, 2, timeout=10) == "completed"
    assert list(
        AuditRecord.objects.filter(run_uuid=run.pk)
        .order_by("id")
        .values_list("action", "from_status", "to_status", "actor", "source")
    ) == [
        ("cancel", "leased", "cancelled", "acceptance", "test"),
        ("resume", "cancelled", "pending", "acceptance", "test"),
    ]
