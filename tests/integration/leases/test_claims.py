"""Claiming (leases.claims): a claim leases ready runs with a new generation and an expiry by the
database clock, reclaims expired leases, and leases at most one run per concurrency key."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models.functions import Now
from django.utils import timezone

from django_durably import cancel_run, leases
from django_durably.models import Run
from tests import jobs
from tests.leasing import claim_one, db_now_and_expiry, expire

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ERROR = {"type": "builtins.RuntimeError", "message": "boom", "traceback": ""}


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
