"""Races between workers and operators, with real threads on each database."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from functools import partial

import pytest
from django.db.models import Q

from django_durably import cancel_run, leases, process_next, process_until_idle
from django_durably.exceptions import RunNotCancellable
from django_durably.models import Run, Step
from tests import jobs
from tests.concurrency import at_once, start, wait_event, wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ITERATIONS = 20


def test_race__cancel_during_a_step_wins_over_persisting_it():
    outcomes = Counter()
    for _ in range(ITERATIONS):
        gate, entered = threading.Event(), threading.Event()
        jobs.FLAGS["gate"], jobs.FLAGS["gate:entered"] = gate, entered
        run = jobs.gated.trigger()
        worker = start(process_next)
        try:
            wait_event(entered, what="the job to enter the gate step")
            assert cancel_run(run.pk).cancelled is True
        finally:
            gate.set()
        outcome = worker.outcome()

        assert outcome is not None
        assert outcome.run_id == run.pk
        outcomes[outcome.status] += 1
        run.refresh_from_db()
        assert run.status == "cancelled"
        assert run.output is None
        completed = set(
            Step.objects.filter(run_id=run.pk, status="completed").values_list("name", flat=True)
        )
        assert completed == {"first"}
        assert run.completed_step_count == 1

    assert outcomes == {"cancelled": ITERATIONS}
    assert jobs.CALLS["gated:first"] == ITERATIONS
    assert jobs.CALLS["entered:gate"] == ITERATIONS
    assert jobs.CALLS["gated:last"] == 0


def test_race__cancel_against_completion_has_exactly_one_winner():
    winners = Counter()
    for i in range(ITERATIONS):
        run = jobs.three_steps.trigger({})
        # Cancel at different points: at once (often while pending), as soon as the run is seen
        # running (among its step writes), once its last step is stored, or once its final log
        # line is stored (then only the completion write is left to race against).
        moment = ("at once", "running", "last step", "logged")[i % 4]

        def cancel(run_id=run.pk, moment=moment):
            runs = Run.objects.filter(pk=run_id)
            if moment == "running":
                seen = runs.exclude(status="pending")
            elif moment == "last step":
                seen = runs.filter(Q(completed_step_count=3) | ~Q(status__in=["pending", "leased"]))
            elif moment == "logged":
                seen = runs.filter(Q(logs__isnull=False) | ~Q(status__in=["pending", "leased"]))
            if moment != "at once":
                wait_until(seen.exists, interval=0.001, what=f"the run to reach {moment!r}")
            return cancel_run(run_id)

        outcome, cancelled = at_once(process_next, cancel, catch=RunNotCancellable)

        run.refresh_from_db()
        if run.status == "completed":
            winners["completed"] += 1
            assert isinstance(cancelled, RunNotCancellable)
            assert cancelled.status == "completed"
            assert outcome is not None
            assert outcome.status == "completed"
            assert run.output == {"a": 1, "b": "b", "c": [1, "b"]}
        else:
            winners["cancelled"] += 1
            assert run.status == "cancelled"
            assert cancelled.cancelled is True
            # The worker either found nothing to claim or stopped as cancelled; never completed.
            assert outcome is None or outcome.status == "cancelled"
            assert run.output is None
            assert run.completed_at is not None

    assert sum(winners.values()) == ITERATIONS
    assert Run.objects.filter(status__in=["completed", "cancelled"]).count() == ITERATIONS


def claim_one_as(worker_id: str) -> Callable[[], list[Run]]:
    return partial(leases.claim, worker_id=worker_id, limit=1)


def test_race__two_claims_on_one_pending_run_get_it_once():
    for _ in range(ITERATIONS):
        run = jobs.noop.trigger()

        results = at_once(claim_one_as("first"), claim_one_as("second"))

        winners = [claimed for claimed in results if claimed]
        assert len(winners) == 1, results
        [[won]] = winners
        assert won.pk == run.pk
        assert won.lease_generation == 1
        run.refresh_from_db()
        assert (run.status, run.lease_generation, run.attempt) == ("leased", 1, 1)
        assert run.lease_owner == won.lease_owner
        leases.complete(run.pk, 1, None)


def test_race__two_claims_on_one_expired_lease_get_it_once():
    jobs.noop.trigger()
    [held] = leases.claim(worker_id="gone", limit=1)
    for generation in range(2, ITERATIONS + 2):
        Run.objects.filter(pk=held.pk).update(lease_expires_at=held.created_at)

        results = at_once(claim_one_as("first"), claim_one_as("second"))

        winners = [claimed for claimed in results if claimed]
        assert len(winners) == 1, results
        assert winners[0][0].lease_generation == generation


def test_race__concurrent_claims_lease_one_run_per_concurrency_key():
    sharing = (jobs.per_user, jobs.noop, jobs.singleton, jobs.three_steps)
    for iteration in range(ITERATIONS):
        # Alternate: every claimer sees all four runs, or each sees only the run on its own queue
        # (so nothing but the key check keeps two of them from leasing the same key).
        own_queues = iteration % 2 == 1
        runs = [
            job.trigger({"user": 1}, concurrency_key="user:1", queue=f"q{i}")
            for i, job in enumerate(sharing)
        ]
        claims = at_once(
            *(
                partial(
                    leases.claim,
                    worker_id=f"w{i}",
                    queues=[f"q{i}"] if own_queues else None,
                    limit=2,
                )
                for i in range(len(sharing))
            )
        )
        claimed = [run for runs_claimed in claims for run in runs_claimed]

        assert len(claimed) == 1, claimed
        assert Run.objects.filter(status="leased", concurrency_key="user:1").count() == 1
        Run.objects.filter(pk__in=[r.pk for r in runs]).delete()


def test_race__workers_processing_until_idle_complete_each_run_exactly_once():
    total, threads = 50, 4
    runs = jobs.counted.trigger_many([{"n": n} for n in range(total)])

    processed = at_once(
        *(partial(process_until_idle, worker_id=f"w{i}") for i in range(threads)), timeout=60
    )

    assert sum(processed) == total
    assert Run.objects.filter(pk__in=[r.pk for r in runs], status="completed").count() == total
    assert Run.objects.filter(attempt=1).count() == total
    assert Step.objects.filter(status="completed").count() == total
    assert {f"counted:{n}": 1 for n in range(total)} == dict(jobs.CALLS)
