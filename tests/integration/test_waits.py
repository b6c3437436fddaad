"""Durable waits, the details behind the contract (tests/acceptance/test_waits_contract.py): the
rows a wait writes (its record, its attempt, its checkpoint), the signals and audit records sent,
the worker's timers, a child's timeout waking its parent, the concurrency-key constraint of a woken
run, and the errors of misuse."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import OperationalError, connections
from django.db.models.functions import Now

from django_durably import (
    InvalidValue,
    Retry,
    RunNotWaiting,
    StepContext,
    cancel_run,
    job,
    leases,
    process_next,
    process_until_idle,
    send_signal,
)
from django_durably.exceptions import RunWaiting, SignalTimeout
from django_durably.executor import AttemptEnd, record
from django_durably.models import (
    AttemptOutcome,
    AuditRecord,
    Run,
    RunAttempt,
    RunStatus,
    Signal,
    Step,
    StepStatus,
)
from django_durably.testing import InMemoryStepStore
from django_durably.waits import wake_due_runs
from django_durably.worker import Worker
from tests import jobs, wait_jobs
from tests.concurrency import at_once, start, start_worker, wait_event, wait_until
from tests.leasing import handle_of

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@job(name="tests.waits.keyed_signal", concurrency_key="the-key")
def keyed_signal(step: StepContext, input: Any) -> Any:
    return step.wait_for_signal("go")


@job(name="tests.waits.retried_signal", retry=Retry(max_attempts=3, initial_delay=0))
def retried_signal(step: StepContext, input: Any) -> Any:
    return step.wait_for_signal("go", timeout=0)


@job(name="tests.waits.misuse")
def misuse(step: StepContext, input: str) -> Any:
    if input == "naive":
        step.sleep_until("nap", datetime(2030, 1, 1))  # noqa: DTZ001 - the misuse under test
    if input == "negative":
        step.sleep("nap", -1)
    if input == "keyed-children":
        step.trigger("kids", wait_jobs.child, [{"n": 1}], idempotency_key="k")
    return "unreachable"


@job(name="tests.waits.slow_child", timeout=0.3)
def slow_child(step: StepContext, input: Any) -> None:
    step.run("block", jobs.wait_for_gate, "slow-child")


@job(name="tests.waits.waits_for_slow_child")
def waits_for_slow_child(step: StepContext, input: Any) -> Any:
    child = step.trigger("kid", slow_child, None)
    return step.wait_for_runs("join", [child])


def stored(run: Run) -> Run:
    return Run.objects.get(pk=run.pk)


# -- the rows a wait writes -----------------------------------------------------------------------


def test_signal_wait__writes_its_record_its_attempt_and_then_its_checkpoint(record_signals):
    sent = record_signals("run_waiting", "signal_sent", "run_woken")
    run = wait_jobs.awaits_signal.trigger(None)

    outcome = process_next()

    assert outcome is not None and outcome.status == "waiting" and outcome.wake_at is None
    waiting = stored(run)
    assert (waiting.status, waiting.lease_owner, waiting.lease_expires_at) == ("waiting", "", None)
    assert waiting.waiting_for == {
        "kind": "signal",
        "step": "approval",
        "signal": "approval",
        "until": None,
    }
    record = Step.objects.get(run=run.pk, name="approval")
    assert (record.status, record.output) == (StepStatus.WAITING, waiting.waiting_for)
    attempt = RunAttempt.objects.get(run=run.pk)
    assert (attempt.number, attempt.outcome) == (1, AttemptOutcome.WAITING)
    assert [s.name for s in sent] == ["run_waiting"]
    assert sent[0].kwargs["kind"] == "signal" and sent[0].kwargs["step_name"] == "approval"

    result = send_signal(run.pk, "approval", {"ok": True}, actor="ada", source="api")

    assert (result.created, result.woke, result.run_status) == (True, True, "pending")
    woken = stored(run)
    assert (woken.status, woken.wake_at) == ("pending", None)
    assert woken.waiting_for is not None  # kept until the wait returns
    audit = AuditRecord.objects.get(run_uuid=run.pk)
    assert (audit.action, audit.actor, audit.source) == ("signal", "ada", "api")
    assert (audit.from_status, audit.to_status) == ("waiting", "pending")
    assert [s.name for s in sent][1:] == ["signal_sent", "run_woken"]

    assert process_until_idle() == 1

    done = stored(run)
    assert (done.status, done.output, done.waiting_for, done.attempt) == (
        "completed",
        {"ok": True},
        None,
        2,
    )
    checkpoint = Step.objects.get(run=run.pk, name="approval", status=StepStatus.COMPLETED)
    assert checkpoint.output == {"value": {"ok": True}, "until": None}
    signal = Signal.objects.get(run=run.pk)
    assert signal.is_consumed and signal.consumed_by_step == "approval"


def test_sleep__wakes_only_when_due_by_the_database_clock():
    run = wait_jobs.sleeper.trigger({"seconds": 3600})
    process_until_idle()
    waiting = stored(run)
    assert waiting.status == "waiting" and waiting.wake_at is not None

    assert wake_due_runs() == 0
    assert stored(run).status == "waiting"

    # Woken early (the timer row moved, its record not): the replay sleeps again, until the
    # wake time computed the first time, not an hour from now.
    Run.objects.filter(pk=run.pk).update(wake_at=Now())
    assert wake_due_runs() == 1
    assert stored(run).status == "pending"
    process_until_idle()
    again = stored(run)
    assert (again.status, again.wake_at) == ("waiting", waiting.wake_at)
    assert Step.objects.filter(run=run.pk, name="nap", status=StepStatus.WAITING).count() == 1


def test_signal__to_a_finished_run_is_refused_but_a_repeat_of_its_key_is_answered():
    run = wait_jobs.awaits_signal.trigger(None)
    first = send_signal(run.pk, "approval", 1, idempotency_key="once")
    process_until_idle()
    assert stored(run).status == "completed"

    again = send_signal(run.pk, "approval", 1, idempotency_key="once")
    assert (again.created, again.signal_id) == (False, first.signal_id)
    with pytest.raises(RunNotWaiting) as refused:
        send_signal(run.pk, "approval", 2)
    assert refused.value.status == "completed"
    assert Signal.objects.filter(run=run.pk).count() == 1


@pytest.mark.parametrize(
    ("name", "payload", "key", "field"),
    [
        ("", None, None, "name"),
        ("x" * 256, None, None, "name"),
        ("ok", {1, 2}, None, "payload"),
        ("ok", None, "", "idempotency_key"),
    ],
)
def test_signal__bad_values_are_typed_errors_and_store_nothing(name, payload, key, field):
    run = wait_jobs.awaits_signal.trigger(None)
    with pytest.raises(InvalidValue) as refused:
        send_signal(run.pk, name, payload, idempotency_key=key)
    assert refused.value.field == field
    assert not Signal.objects.exists()


def test_woken_run_keeps_its_concurrency_key_beside_a_newer_pending_run():
    run = keyed_signal.trigger(None)
    process_until_idle()
    assert stored(run).status == "waiting"
    newer = keyed_signal.trigger(None)  # the waiting run does not hold the pending key

    send_signal(run.pk, "go", "first")  # woken: pending beside the newer pending run

    assert {stored(run).status, stored(newer).status} == {"pending"}
    process_until_idle()
    assert stored(run).output == "first"


def test_wait_timeouts_and_failed_children_are_not_retried():
    run = retried_signal.trigger(None)

    process_until_idle()

    failed = stored(run)
    assert failed.status == "failed" and failed.error["type"].endswith("SignalTimeout")
    assert failed.failed_attempts == 1  # no retry: the timeout would be replayed at once


# -- errors of misuse ------------------------------------------------------------------------------


@pytest.mark.parametrize("misuse_of", ["naive", "negative", "keyed-children"])
def test_wait_misuse_fails_the_run_with_a_clear_error(misuse_of):
    run = misuse.trigger(misuse_of)
    process_until_idle()
    failed = stored(run)
    assert failed.status == "failed"
    assert failed.error["type"].endswith("InvalidWait")
    assert not Run.objects.filter(parent=run.pk).exists()


def test_wait_for_a_run_that_is_not_a_child_fails_naming_it():
    stranger = wait_jobs.child.trigger({"n": 1})
    run = wait_jobs.waits_for_a_stranger.trigger({"run_id": str(stranger.pk)})
    process_until_idle()
    failed = stored(run)
    assert failed.status == "failed" and str(stranger.pk) in failed.error["message"]


# -- children ----------------------------------------------------------------------------------------


def test_a_child_ended_at_its_timeout_wakes_its_parent(gates):
    gate, _entered = gates("slow-child")
    parent = waits_for_slow_child.trigger(None)
    worker = Worker(concurrency=2, poll_interval=0.05, lease_seconds=5, listen=False)
    thread = start_worker(worker)
    try:
        wait_until(lambda: stored(parent).status == "failed", timeout=30, what="the parent to fail")
    finally:
        gate.set()
        worker.stop()
        thread.join(30)
    failed = stored(parent)
    assert failed.error["type"].endswith("ChildRunFailed")
    child = Run.objects.get(parent=parent.pk)
    assert child.status == "failed" and child.error["type"].endswith("RunTimedOut")


def test_cancelling_a_waiting_parent_cancels_its_waiting_children():
    parent = wait_jobs.fans_out.trigger({"count": 2, "children_wait": True})
    process_until_idle()
    assert stored(parent).status == "waiting"
    children = list(Run.objects.filter(parent=parent.pk))
    assert {c.status for c in children} == {"waiting"}

    assert cancel_run(parent.pk).cancelled

    assert stored(parent).status == "cancelled"
    assert {c.status for c in Run.objects.filter(parent=parent.pk)} == {"cancelled"}
    assert stored(parent).waiting_for is None


# -- the worker's timers -----------------------------------------------------------------------------


def test_worker_wakes_a_sleeping_run_at_its_time_without_a_notification():
    run = wait_jobs.sleeper.trigger({"seconds": 0.5})
    # A poll interval far longer than the sleep: only the timer the worker learnt of wakes it.
    worker = Worker(concurrency=1, poll_interval=30, lease_seconds=5, listen=False)
    thread = start_worker(worker)
    try:
        wait_until(
            lambda: stored(run).status == "completed", timeout=20, what="the sleeper to complete"
        )
    finally:
        worker.stop()
        thread.join(30)
    assert worker.stats.outcomes.get("waiting") == 1
    assert worker.stats.outcomes.get("completed") == 1


# -- the in-memory store ---------------------------------------------------------------------------


def test_in_memory_store_unwinds_at_a_wait_and_replays_once_the_signal_is_seeded():
    store = InMemoryStepStore()

    def approval(step: StepContext) -> Any:
        step.sleep("nap", 60)
        return step.wait_for_signal("approval", timeout=timedelta(days=1))

    with pytest.raises(RunWaiting):
        approval(store.context())
    assert (store.waiting, store.sleeps) == ("approval", ["nap"])

    store.signals["approval"] = [{"user": "ada"}]
    assert approval(store.context(attempt=2)) == {"user": "ada"}
    assert store.sleeps == ["nap"]  # replayed, not slept again
    assert store.waiting is None


def test_in_memory_store_records_children_and_returns_their_outputs():
    store = InMemoryStepStore()

    def fan(step: StepContext) -> Any:
        ids = step.trigger("kids", "tests.wait_jobs.child", [{"n": 1}, {"n": 2}])
        return step.wait_for_runs("join", ids)

    with pytest.raises(RunWaiting):
        fan(store.context())
    first, second = (child_id for child_id, _job, _input in store.children)
    store.child_outputs.update({first: 10, second: 20})
    assert fan(store.context(attempt=2)) == [10, 20]
    assert len(store.children) == 2  # created once


def test_signal_timeout_is_catchable_inside_the_job():
    run = wait_jobs.signal_or_fallback.trigger({"timeout": 0})
    process_until_idle()
    done = stored(run)
    assert (done.status, done.output) == (RunStatus.COMPLETED, "fallback")
    assert issubclass(SignalTimeout, TimeoutError)
    checkpoint = Step.objects.get(run=run.pk, name="approval", status=StepStatus.COMPLETED)
    assert checkpoint.output["timed_out"] is True


# -- races -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("trial", range(6))
def test_race__a_child_ending_while_its_parent_is_cancelled(trial):
    parent = wait_jobs.fans_out.trigger({"count": 1})
    assert process_next() is not None  # the parent: triggers its child, then waits
    child = Run.objects.get(parent=parent.pk)
    assert stored(parent).status == "waiting"

    ended, cancelled = at_once(process_next, lambda: cancel_run(parent.pk))

    assert cancelled.cancelled and cancelled.from_status == "waiting"
    assert stored(parent).status == "cancelled"  # never woken back to pending
    assert stored(child).status in ("completed", "cancelled")
    if ended is not None:  # the child was claimed: its end is either recorded or refused
        assert ended.status in ("completed", "cancelled")
    assert process_until_idle() == 0
    assert stored(parent).status == "cancelled"


def test_a_child_end_and_its_parent_wake_up_are_one_transaction(db_alias):
    """A database error while waking the parent fails the child's end with it: nothing half-done
    (a child completed, its waiting parent never told). The end is lost and, as any end that could
    not be written, the child runs again once its lease is given back."""
    parent = wait_jobs.fans_out.trigger({"count": 1})
    assert process_next() is not None  # the parent: triggers its child, then waits
    (child,) = leases.claim(worker_id="w", limit=1)
    end = AttemptEnd(child, handle_of(child), "completed", time.monotonic(), output=10)

    def refuse_the_wake(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        # The parent's lock: FOR UPDATE on PostgreSQL, a guarded UPDATE on SQLite.
        if "FOR UPDATE" in sql or sql.startswith('UPDATE "durably_run" SET "updated_at"'):
            raise OperationalError("the database went away (injected)")
        return execute(sql, params, many, context)

    with connections[db_alias].execute_wrapper(refuse_the_wake):
        (outcome,) = record([end], worker_id="w")

    assert outcome.status == "lost"
    assert stored(child).status == "leased"  # its end was not written either
    assert stored(parent).status == "waiting"
    assert leases.release(child.pk, child.lease_generation)
    process_until_idle()
    assert stored(child).status == "completed"
    assert stored(parent).status == "completed"
    assert stored(parent).output["outputs"] == [0]  # the child's own output, n * 10 for n = 0


@job(name="tests.waits.gated_fan_in")
def gated_fan_in(step: StepContext, input: dict[str, Any]) -> Any:
    """Triggers a child, waits at a gate, then waits for the child."""
    ids = step.trigger("kid", wait_jobs.child, [{"n": 1}])
    step.run("gate", jobs.wait_for_gate, input["gate"])
    return step.wait_for_runs("join", ids)


RACE_TRIALS = 16


@pytest.mark.slow
def test_race__a_child_ending_while_its_parent_settles_its_wait_never_leaves_it_waiting(gates):
    """The child's end (and its wake-up of the parent) lands anywhere in the parent's settling of
    its wait: the parent either sees the end, or is woken by it; it never waits for good."""
    window = 0.03  # about one settle and one child's run, spread over the trials
    for n in range(RACE_TRIALS):
        gate, entered = gates(f"fan-in-{n}")
        parent = gated_fan_in.trigger({"gate": f"fan-in-{n}"})
        holder = start(process_next)  # the parent: triggers its child, then holds at the gate
        wait_event(entered, what="the parent at its gate")

        def open_later(delay: float = window * n / RACE_TRIALS, gate: Any = gate) -> None:
            time.sleep(delay)  # an offset into the race window, not a wait for a condition
            gate.set()

        _opened, child_outcome = at_once(open_later, process_next)
        assert child_outcome is not None and child_outcome.status == "completed"
        parent_outcome = holder.outcome(30)
        assert parent_outcome.status in ("completed", "waiting"), n

        process_until_idle()
        assert stored(parent).status == "completed", (n, parent_outcome.status)
        assert stored(parent).output == [10]
