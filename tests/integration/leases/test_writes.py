"""Lease-holder writes (leases.writes, through the step store a worker uses): fenced by status
and generation, so a stale holder or a cancelled run writes nothing; finishing a run."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db.models import F
from django.utils import timezone

from django_durably import cancel_run, leases
from django_durably.checkpoints import ModelStepStore
from django_durably.exceptions import JobCancelled, LeaseLost
from django_durably.models import Run, RunLog, Step
from tests import jobs
from tests.leasing import claim_one, expire, snapshot, store_for

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ERROR = {"type": "builtins.RuntimeError", "message": "boom", "traceback": ""}

WRITES: dict[str, Callable[[ModelStepStore], None]] = {
    "save_completed": lambda store: store.save_completed(
        index=0, name="s", output={"x": 1}, started_at=timezone.now()
    ),
    "save_failed": lambda store: store.save_failed(
        index=0, name="s", error=ERROR, started_at=timezone.now()
    ),
    "save_progress": lambda store: store.save_progress({"current": 1, "total": 2, "message": "m"}),
    "save_log": lambda store: store.save_log(
        level="info", message="hello", data={"k": 1}, step_name="s"
    ),
}

# Each way a lease holder ends a run.
FINISHES = pytest.mark.parametrize(
    "finish",
    [
        lambda run, generation: leases.complete(run.pk, generation, {"ok": True}),
        lambda run, generation: leases.fail(run.pk, generation, ERROR),
    ],
    ids=["complete", "fail"],
)


def written_rows(run: Run) -> int:
    return Step.objects.filter(run_id=run.pk).count() + RunLog.objects.filter(run_id=run.pk).count()


# -- fenced step writes ------------------------------------------------------------------------


@pytest.mark.parametrize("write", list(WRITES))
def test_fenced_write__current_generation_writes(write):
    jobs.noop.trigger()
    run = claim_one()
    before = snapshot(run)

    WRITES[write](store_for(run))

    after = snapshot(run)
    assert after["status"] == "leased"
    assert after["updated_at"] >= before["updated_at"]
    assert written_rows(run) == (0 if write == "save_progress" else 1)
    if write == "save_completed":
        assert (after["current_step_index"], after["completed_step_count"]) == (1, 1)
        assert Step.objects.get(run_id=run.pk).output == {"x": 1}
    if write == "save_progress":
        assert after["progress"] == {"current": 1, "total": 2, "message": "m"}


@pytest.mark.parametrize("write", list(WRITES))
def test_fenced_write__stale_generation_raises_lease_lost_and_writes_nothing(write):
    jobs.noop.trigger()
    run = claim_one()
    Run.objects.filter(pk=run.pk).update(lease_generation=F("lease_generation") + 1)
    before = snapshot(run)

    with pytest.raises(LeaseLost) as raised:
        WRITES[write](store_for(run))

    assert raised.value.run_id == run.pk
    assert snapshot(run) == before
    assert written_rows(run) == 0


@pytest.mark.parametrize("write", list(WRITES))
def test_fenced_write__after_reclaim_by_another_worker_raises_lease_lost(write):
    jobs.noop.trigger()
    run = claim_one("first")
    expire(run)
    thief = claim_one("second")
    assert thief.lease_generation == run.lease_generation + 1
    before = snapshot(run)

    with pytest.raises(LeaseLost):
        WRITES[write](store_for(run))

    assert snapshot(run) == before
    assert written_rows(run) == 0
    # The new holder can still write.
    WRITES[write](store_for(thief))


@pytest.mark.parametrize("write", list(WRITES))
def test_fenced_write__cancelled_run_raises_job_cancelled_and_writes_nothing(write):
    jobs.noop.trigger()
    run = claim_one()
    assert cancel_run(run.pk).cancelled is True
    before = snapshot(run)

    with pytest.raises(JobCancelled) as raised:
        WRITES[write](store_for(run))

    assert raised.value.run_id == run.pk
    after = snapshot(run)
    assert after == before
    assert after["status"] == "cancelled"
    assert written_rows(run) == 0


def test_fenced_write__interrupts_are_base_exceptions():
    assert not issubclass(JobCancelled, Exception)
    assert not issubclass(LeaseLost, Exception)


# -- complete and fail -------------------------------------------------------------------------


def test_complete__current_generation_completes():
    jobs.noop.trigger()
    run = claim_one()

    assert leases.complete(run.pk, run.lease_generation, {"ok": True}) is True

    run.refresh_from_db()
    assert run.status == "completed"
    assert run.output == {"ok": True}
    assert run.lease_expires_at is None
    assert run.completed_at is not None


def test_fail__current_generation_fails():
    jobs.noop.trigger()
    run = claim_one()

    assert leases.fail(run.pk, run.lease_generation, ERROR) is True

    run.refresh_from_db()
    assert run.status == "failed"
    assert run.error == ERROR
    assert run.lease_expires_at is None


@FINISHES
def test_finish__stale_generation_returns_false_and_changes_nothing(finish):
    jobs.noop.trigger()
    run = claim_one("first")
    expire(run)
    claim_one("second")
    before = snapshot(run)

    assert finish(run, run.lease_generation) is False

    assert snapshot(run) == before
    assert before["status"] == "leased"


@FINISHES
def test_finish__cancelled_run_returns_false_and_stays_cancelled(finish):
    jobs.noop.trigger()
    run = claim_one()
    cancel_run(run.pk)
    before = snapshot(run)

    assert finish(run, run.lease_generation) is False

    after = snapshot(run)
    assert after == before
    assert after["status"] == "cancelled"
    assert after["output"] is None
    assert after["error"] is None


def test_finish__second_finish_of_a_finished_run_returns_false():
    jobs.noop.trigger()
    run = claim_one()
    assert leases.complete(run.pk, run.lease_generation, 1) is True

    assert leases.fail(run.pk, run.lease_generation, ERROR) is False
    assert leases.complete(run.pk, run.lease_generation, 2) is False

    run.refresh_from_db()
    assert (run.status, run.output, run.error) == ("completed", 1, None)
