"""Holding a lease (leases.holding): renewing and releasing it by generation, and what the local
handle of an attempt says about it."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F

from django_durably import cancel_run, leases
from django_durably.exceptions import JobCancelled, LeaseLost
from django_durably.leases import LeaseHandle
from django_durably.models import Run
from tests import jobs
from tests.leasing import claim_one, db_now_and_expiry, expire, snapshot

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def key(run: Run) -> tuple[Any, int]:
    """The ``(run_id, generation)`` of the lease ``run`` was claimed with."""
    return (run.pk, run.lease_generation)


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
