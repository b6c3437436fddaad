"""Correctness under pauses and races (issue 12): a claim's fencing token is the one it wrote, a
worker tracks attempts rather than run ids, and a cancel stops a job before its next step starts.

Pauses are injected at exact points by hooks of the tests (``execute_wrapper``, gates in the jobs),
never by sleeps in the library.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from django_durably import cancel_run, leases, process_next, resume_run
from django_durably.exceptions import LeaseLost
from django_durably.models import Run, Step
from django_durably.worker import Worker
from tests import jobs
from tests.concurrency import start, start_worker, wait_event, wait_until
from tests.leasing import handle_of, store_for
from tests.sql import keyword

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


# -- 1. the fencing token comes from the claim itself -------------------------------------------


class PauseAfterClaimCommit:
    """An ``execute_wrapper`` that holds the claiming thread at the first statement it sends after
    its claiming UPDATE, outside a transaction: where a claim that committed would re-read the row
    it claimed. A claim that returns what it wrote sends no such statement and is never held."""

    def __init__(self) -> None:
        self.claimed = False
        self.paused = threading.Event()
        self.resume = threading.Event()

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ):
        if self.claimed and not context["connection"].in_atomic_block and not self.paused.is_set():
            self.paused.set()
            assert self.resume.wait(30), "the test never let the claim go on"
        result = execute(sql, params, many, context)
        if keyword(sql) == "UPDATE" and "lease_owner" in sql:
            self.claimed = True
        return result


def claim_paused_after_commit(alias: str, hook: PauseAfterClaimCommit) -> list[Run]:
    with connections[alias].execute_wrapper(hook):
        return leases.claim(worker_id="w1", limit=1, lease_seconds=60)


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "concurrency-key"])
def test_claim__returns_the_lease_it_wrote_when_paused_after_committing(db_alias, keyed):
    """W1's claim commits generation 1; before W1 looks at what it claimed, the run is cancelled,
    resumed and claimed by W2 as generation 2. W1 must hold generation 1 (fenced out), not adopt
    W2's generation 2, renew W2's lease as its own or hand it back."""
    run = jobs.per_user.trigger({"user": 7}) if keyed else jobs.noop.trigger()
    hook = PauseAfterClaimCommit()
    first = start(claim_paused_after_commit, db_alias, hook)
    wait_until(lambda: hook.paused.is_set() or not first.is_alive(), what="W1's claim to commit")

    cancel_run(run.pk)
    resume_run(run.pk)
    [second] = leases.claim(worker_id="w2", limit=1, lease_seconds=60)
    hook.resume.set()
    [claimed] = first.outcome()

    assert (claimed.pk, claimed.lease_generation, claimed.lease_owner) == (run.pk, 1, "w1")
    assert (second.lease_generation, second.lease_owner) == (2, "w2")
    stale = handle_of(claimed)
    with pytest.raises(LeaseLost):
        store_for(claimed).save_completed(index=0, name="s", output=1, started_at=timezone.now())
    assert leases.renew([stale.key], 60) == {stale.key: "lost"}
    assert leases.release(run.pk, claimed.lease_generation) is False
    row = Run.objects.get(pk=run.pk)
    assert (row.status, row.lease_generation, row.lease_owner) == ("leased", 2, "w2")
    assert not Step.objects.filter(run_id=run.pk).exists()


def test_renew__two_attempts_of_one_run_are_told_apart():
    """A process can hold a stale attempt of a run beside a new claim of it."""
    run = jobs.noop.trigger()
    [old] = leases.claim(worker_id="w", limit=1)
    cancel_run(run.pk)
    resume_run(run.pk)
    [new] = leases.claim(worker_id="w", limit=1)

    states = leases.renew([(run.pk, old.lease_generation), (run.pk, new.lease_generation)], 60)

    assert states == {
        (run.pk, old.lease_generation): "lost",
        (run.pk, new.lease_generation): "held",
    }


# -- 2. a worker tracks attempts, not run ids ---------------------------------------------------


def test_worker__an_old_attempt_ending_keeps_the_new_attempt_of_the_same_run(gates):
    """Attempt 1 is inside a step when the run is cancelled and resumed; the same worker claims
    attempt 2 in its other slot. When attempt 1 ends (lost), attempt 2 is still in flight, and a
    stop waits for it and records it, instead of exiting and leaving it leased."""
    gate_1, entered_1 = gates("attempt-1")
    gate_2, entered_2 = gates("attempt-2")
    run = jobs.gated_per_attempt.trigger()
    worker = Worker(concurrency=2, poll_interval=0.05, grace_period=30, lease_seconds=60)
    thread = start_worker(worker)
    try:
        wait_event(entered_1, what="attempt 1 to enter its gate step")
        cancel_run(run.pk)
        resume_run(run.pk)
        wait_event(entered_2, what="the worker to claim attempt 2 of the run")
        assert worker.in_flight() == 2

        gate_1.set()
        wait_until(
            lambda: worker.stats.outcomes.get("lost") == 1 and worker.in_flight() < 2,
            what="attempt 1 to end lost and be recorded",
        )
        assert worker.in_flight() == 1  # attempt 2 is still tracked, renewed and waited for

        worker.stop()
        assert thread.is_alive()
        gate_2.set()
        thread.join(30)
    finally:
        worker.stop(hard=True)
        gate_1.set()
        gate_2.set()

    assert not thread.is_alive()
    assert worker.stats.outcomes == {"lost": 1, "completed": 1}
    row = Run.objects.get(pk=run.pk)
    assert (row.status, row.attempt, row.output) == ("completed", 2, "done")
    assert jobs.CALLS["gated:last"] == 1


# -- 3. a cancel stops the job before its next step starts --------------------------------------


def test_process_next__cancel_between_steps_stops_the_next_step(gates):
    """In-process, with no listener and no renewal due (60 s lease): the step boundary reads the
    run, so the step after a cancel never starts."""
    gate, entered = gates("pause")  # jobs.pauses_between_steps waits there, outside any step
    run = jobs.pauses_between_steps.trigger()
    job = start(process_next, lease_seconds=60)
    wait_event(entered, what="the job to pause between its steps")

    assert cancel_run(run.pk).cancelled is True
    gate.set()
    outcome = job.outcome()

    assert outcome.status == "cancelled"
    assert jobs.CALLS["pause:first"] == 1
    assert jobs.CALLS["pause:next"] == 0
    assert list(Step.objects.filter(run_id=run.pk).values_list("name", "status")) == [
        ("first", "completed")
    ]


def test_worker__cancel_reaches_the_running_attempt_before_its_next_step(db_alias, gates):
    """A worker: on PostgreSQL the cancel's notification marks the attempt cancelled at once (no
    renewal is due for 20 s); on SQLite the step boundary reads the run. Either way the next step
    never starts."""
    gate, entered = gates("pause")  # jobs.pauses_between_steps waits there, outside any step
    run = jobs.pauses_between_steps.trigger()
    worker = Worker(concurrency=1, poll_interval=0.05, lease_seconds=60, until_idle=True)
    thread = start_worker(worker)
    try:
        wait_event(entered, what="the job to pause between its steps")
        assert cancel_run(run.pk).cancelled is True
        if db_alias == "postgres":
            wait_until(
                lambda: [h.state for h in worker.keeper.tracked()] == ["cancelled"],
                what="the cancel notification to reach the attempt",
            )
    finally:
        gate.set()
    thread.join(30)

    assert not thread.is_alive()
    assert worker.stats.outcomes == {"cancelled": 1}
    assert jobs.CALLS["pause:next"] == 0
    assert Run.objects.get(pk=run.pk).status == "cancelled"


def test_cancel__during_a_step_records_it_cancelled_and_sends_step_cancelled(record_signals, gates):
    gate, entered = gates("gate")
    received = record_signals("step_cancelled")
    try:
        run = jobs.gated.trigger()
        worker = Worker(concurrency=1, poll_interval=0.05, lease_seconds=60, until_idle=True)
        thread = start_worker(worker)
        wait_event(entered, what="the job to enter its gate step")
        cancel_run(run.pk)
        gate.set()
        thread.join(30)
    finally:
        gate.set()

    assert worker.stats.outcomes == {"cancelled": 1}
    steps = list(
        Step.objects.filter(run_id=run.pk).order_by("index").values_list("name", "status", "output")
    )
    assert steps == [("first", "completed", None), ("gate", "cancelled", None)]
    assert [(r["run_id"], r["step_name"], r["index"], r["attempt"]) for _, r, _ in received] == [
        (run.pk, "gate", 1, 1)
    ]


def test_record_cancelled_step__nothing_once_the_run_moved_on():
    """The cancelled row belongs to the lease that was cancelled: after a resume and a new claim,
    the old lease writes nothing."""
    run = jobs.noop.trigger()
    [old] = leases.claim(worker_id="w", limit=1)
    cancel_run(run.pk)
    resume_run(run.pk)
    leases.claim(worker_id="w", limit=1)
    now = timezone.now()

    recorded = leases.record_cancelled_step(
        run.pk, old.lease_generation, index=0, name="s", attempt=1, started_at=now, completed_at=now
    )

    assert recorded is False
    assert not Step.objects.filter(run_id=run.pk).exists()
