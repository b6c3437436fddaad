"""Lease-holder writes are fenced by status and generation; claims, renewals and releases."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from django_durably import cancel_run, leases
from django_durably.checkpoints import ModelStepStore
from django_durably.exceptions import JobCancelled, LeaseLost
from django_durably.leases import LeaseHandle
from django_durably.models import Run, RunLog, Step
from tests import jobs
from tests.leasing import claim_one, store_for

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


def key(run: Run) -> tuple[Any, int]:
    """The ``(run_id, generation)`` of the lease ``run`` was claimed with."""
    return (run.pk, run.lease_generation)


def snapshot(run: Run) -> dict[str, Any]:
    return dict(Run.objects.filter(pk=run.pk).values().get())


def expire(run: Run) -> None:
    assert Run.objects.filter(pk=run.pk).update(lease_expires_at=Now() - timedelta(seconds=1))


def written_rows(run: Run) -> int:
    return Step.objects.filter(run_id=run.pk).count() + RunLog.objects.filter(run_id=run.pk).count()


def db_now_and_expiry(run: Run) -> tuple[Any, Any]:
    return (
        Run.objects.filter(pk=run.pk)
        .annotate(now=Now())
        .values_list("now", "lease_expires_at")
        .get()
    )


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


@pytest.mark.parametrize(
    "finish",
    [
        lambda run, generation: leases.complete(run.pk, generation, {"ok": True}),
        lambda run, generation: leases.fail(run.pk, generation, ERROR),
    ],
    ids=["complete", "fail"],
)
def test_finish__stale_generation_returns_false_and_changes_nothing(finish):
    jobs.noop.trigger()
    run = claim_one("first")
    expire(run)
    claim_one("second")
    before = snapshot(run)

    assert finish(run, run.lease_generation) is False

    assert snapshot(run) == before
    assert before["status"] == "leased"


@pytest.mark.parametrize(
    "finish",
    [
        lambda run, generation: leases.complete(run.pk, generation, {"ok": True}),
        lambda run, generation: leases.fail(run.pk, generation, ERROR),
    ],
    ids=["complete", "fail"],
)
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


# -- claim -------------------------------------------------------------------------------------


def test_claim__leases_with_a_new_generation_and_a_database_clock_expiry():
    pending = jobs.noop.trigger()
    assert (pending.lease_generation, pending.attempt) == (0, 0)

    run = claim_one("worker-1", lease_seconds=30)

    assert run.pk == pending.pk
    assert run.status == "leased"
    assert run.lease_generation == 1
    assert run.attempt == 1
    assert run.lease_owner == "worker-1"
    assert run.started_at is not None
    db_now, expires_at = db_now_and_expiry(run)
    assert timedelta(seconds=25) < expires_at - db_now <= timedelta(seconds=30)
    assert Run.objects.filter(pk=run.pk).validly_leased().exists()


def test_claim__unexpired_lease_is_not_claimable():
    jobs.noop.trigger()
    claim_one()

    assert leases.claim(worker_id="other", limit=1) == []


def test_claim__expired_lease_is_reclaimed_with_the_next_generation():
    jobs.noop.trigger()
    first = claim_one("first")
    expire(first)

    second = claim_one("second")

    assert second.pk == first.pk
    assert second.lease_generation == first.lease_generation + 1
    assert second.attempt == 2
    assert second.lease_owner == "second"
    assert second.started_at == first.started_at
    db_now, expires_at = db_now_and_expiry(second)
    assert expires_at > db_now


def test_claim__finished_runs_are_not_claimable():
    for _ in range(3):
        jobs.noop.trigger()
    completed, failed, cancelled = leases.claim(worker_id="w", limit=3)
    leases.complete(completed.pk, completed.lease_generation, None)
    leases.fail(failed.pk, failed.lease_generation, ERROR)
    cancel_run(cancelled.pk)
    Run.objects.update(lease_expires_at=Now() - timedelta(seconds=1))

    assert leases.claim(worker_id="w", limit=3) == []


def test_claim__not_before_run_after():
    jobs.noop.trigger(run_after=timezone.now() + timedelta(hours=1))

    assert leases.claim(worker_id="w", limit=1) == []


def test_claim__limit_returns_several_runs():
    triggered = {jobs.noop.trigger(i).pk for i in range(3)}

    claimed = leases.claim(worker_id="w", limit=2)

    assert len(claimed) == 2
    assert {run.pk for run in claimed} < triggered
    assert len(leases.claim(worker_id="w", limit=5)) == 1


# -- concurrency keys --------------------------------------------------------------------------


def test_concurrency_key__only_one_run_per_key_is_leased():
    first = jobs.per_user.trigger({"user": 1})
    second = jobs.noop.trigger(None, concurrency_key="user:1")
    assert first.concurrency_key == second.concurrency_key == "user:1"

    claimed = leases.claim(worker_id="w", limit=2)

    assert len(claimed) == 1
    assert leases.claim(worker_id="w", limit=2) == []
    [holder] = claimed
    assert leases.complete(holder.pk, holder.lease_generation, None)
    [next_run] = leases.claim(worker_id="w", limit=2)
    assert {holder.pk, next_run.pk} == {first.pk, second.pk}


def test_concurrency_key__busy_key_does_not_block_an_unrelated_run_behind_it():
    # Four runs sharing a key (one pending run per job and key) come first in claim order.
    same_key = {
        jobs.per_user.trigger({"user": 1}, priority=10).pk,
        jobs.noop.trigger(None, concurrency_key="user:1", priority=10).pk,
        jobs.singleton.trigger(None, concurrency_key="user:1", priority=10).pk,
        jobs.three_steps.trigger({}, concurrency_key="user:1", priority=10).pk,
    }
    unrelated = jobs.noop.trigger("other", priority=0)

    claimed = leases.claim(worker_id="w", limit=2)

    ids = {run.pk for run in claimed}
    assert len(ids) == 2
    assert unrelated.pk in ids
    assert len(ids & same_key) == 1


def test_concurrency_key__leased_key_is_skipped_for_an_unrelated_run():
    holder = jobs.per_user.trigger({"user": 1}, priority=10)
    waiting = jobs.noop.trigger(None, concurrency_key="user:1", priority=10)
    unrelated = jobs.noop.trigger("other", priority=0)
    assert claim_one().pk in {holder.pk, waiting.pk}

    [claimed] = leases.claim(worker_id="w", limit=1)

    assert claimed.pk == unrelated.pk


def test_concurrency_key__expired_holder_and_pending_run_are_not_both_leased():
    jobs.per_user.trigger({"user": 1})
    holder = claim_one()
    jobs.noop.trigger(None, concurrency_key="user:1")
    expire(holder)

    claimed = leases.claim(worker_id="w", limit=2)

    assert len(claimed) == 1
    assert Run.objects.validly_leased().filter(concurrency_key="user:1").count() == 1


# -- renew and release -------------------------------------------------------------------------


def test_renew__held_lease_is_extended():
    jobs.noop.trigger()
    run = claim_one(lease_seconds=5)
    _, before = db_now_and_expiry(run)

    assert leases.renew([key(run)], 120) == {key(run): "held"}

    db_now, after = db_now_and_expiry(run)
    assert after > before
    assert after - db_now > timedelta(seconds=100)


def test_renew__reports_held_cancelled_and_lost_in_one_call():
    for i in range(4):
        jobs.noop.trigger(i)
    held, cancelled, stolen, expired = leases.claim(worker_id="w", limit=4)
    cancel_run(cancelled.pk)
    Run.objects.filter(pk=stolen.pk).update(lease_generation=F("lease_generation") + 1)
    expire(expired)
    _, expired_at = db_now_and_expiry(expired)

    states = leases.renew([key(run) for run in (held, cancelled, stolen, expired)], 60)

    assert states == {
        key(held): "held",
        key(cancelled): "cancelled",
        key(stolen): "lost",
        key(expired): "lost",
    }
    assert db_now_and_expiry(expired)[1] == expired_at  # an expired lease is not revived
    assert Run.objects.get(pk=cancelled.pk).status == "cancelled"


def test_renew__a_run_finished_under_this_lease_is_finished_not_lost():
    jobs.noop.trigger_many([1, 2, 3])
    completed, failed, stolen = leases.claim(worker_id="w", limit=3)
    assert leases.complete(completed.pk, completed.lease_generation, "done")
    assert leases.fail(
        failed.pk, failed.lease_generation, {"type": "E", "message": "", "traceback": ""}
    )
    Run.objects.filter(pk=stolen.pk).update(lease_generation=F("lease_generation") + 1)
    assert leases.complete(stolen.pk, stolen.lease_generation + 1, "by the new owner")

    states = leases.renew([key(run) for run in (completed, failed, stolen)], 60)

    assert states == {key(completed): "finished", key(failed): "finished", key(stolen): "lost"}


def test_renew__nothing_to_renew():
    assert leases.renew([], 60) == {}


def test_release__run_is_claimable_at_once():
    jobs.noop.trigger()
    run = claim_one("first")

    assert leases.release(run.pk, run.lease_generation) is True

    again = claim_one("second")
    assert again.pk == run.pk
    assert again.lease_generation == run.lease_generation + 1


def test_release__stale_generation_is_a_no_op():
    jobs.noop.trigger()
    run = claim_one("first")
    expire(run)
    claim_one("second")
    before = snapshot(run)

    assert leases.release(run.pk, run.lease_generation) is False

    assert snapshot(run) == before


# -- the local handle --------------------------------------------------------------------------


def test_lease_handle__check_raises_lease_lost_after_the_deadline():
    handle = LeaseHandle(run_id=jobs_run_id(), generation=1, deadline=time.monotonic() - 0.001)

    with pytest.raises(LeaseLost):
        handle.check()
    assert handle.state == "lost"


def test_lease_handle__check_passes_before_the_deadline_and_reports_cancel():
    handle = LeaseHandle(run_id=jobs_run_id(), generation=1, deadline=time.monotonic() + 60)
    handle.check()

    handle.state = "cancelled"
    with pytest.raises(JobCancelled):
        handle.check()


def test_lease_handle__lost_state_raises_even_before_the_deadline():
    handle = LeaseHandle(run_id=jobs_run_id(), generation=1, deadline=time.monotonic() + 60)
    handle.state = "lost"

    with pytest.raises(LeaseLost):
        handle.check()


def jobs_run_id() -> Any:
    return jobs.noop.trigger().pk
