"""The worker loop in-process (threads); subprocess workers are in tests/acceptance."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from django_durably.models import Run, Step
from django_durably.worker import Worker
from tests import jobs
from tests.concurrency import start_worker, wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def in_the_gate(gates: Any) -> Any:
    """``run, worker, thread = in_the_gate(**options)``: a run of ``jobs.gated`` inside its gate
    step on a one-slot worker started with those options (the gate: ``gates("gate")``)."""

    def start(**options: Any) -> tuple[Run, Worker, threading.Thread]:
        _, entered = gates("gate")
        run = jobs.gated.trigger()
        worker = Worker(concurrency=1, poll_interval=0.05, **options)
        thread = start_worker(worker)
        assert entered.wait(20)
        return run, worker, thread

    return start


def test_worker__until_idle_drains_every_run_once():
    runs = jobs.three_steps.trigger_many([{"n": i} for i in range(30)])
    stats = Worker(concurrency=3, until_idle=True, poll_interval=0.05).run()
    assert stats.claimed == 30
    assert stats.outcomes == {"completed": 30}
    assert Run.objects.filter(pk__in=[r.pk for r in runs], status="completed").count() == 30
    assert jobs.CALLS["a"] == 30
    assert Step.objects.filter(status="completed").count() == 90


def test_worker__max_runs_stops_after_that_many():
    jobs.noop.trigger_many(list(range(5)))
    stats = Worker(concurrency=2, max_runs=3, poll_interval=0.05).run()
    assert stats.claimed == 3
    assert Run.objects.filter(status="completed").count() == 3
    assert Run.objects.filter(status="pending").count() == 2


def test_worker__queues_filter():
    jobs.noop.trigger(1, queue="emails")
    other = jobs.noop.trigger(2, queue="reports")
    Worker(queues=["emails"], until_idle=True, poll_interval=0.05).run()
    assert Run.objects.get(queue="emails").status == "completed"
    other.refresh_from_db()
    assert other.status == "pending"


def test_worker__picks_up_a_run_triggered_while_idle():
    worker = Worker(concurrency=1, poll_interval=0.2)
    thread = start_worker(worker)
    try:
        run = jobs.noop.trigger({"late": True})
        wait_until(
            lambda: Run.objects.get(pk=run.pk).status == "completed",
            timeout=20,
            what="the late run",
        )
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_worker__graceful_stop_lets_the_running_job_finish(gates, in_the_gate):
    gate, _ = gates("gate")
    run, worker, thread = in_the_gate(grace_period=20)
    worker.stop()
    jobs.noop.trigger("not claimed after the stop")
    gate.set()
    thread.join(20)
    assert not thread.is_alive()
    run.refresh_from_db()
    assert run.status == "completed"
    assert Run.objects.get(job_name=jobs.noop.name).status == "pending"


def test_worker__grace_period_over_hands_the_run_back(gates, in_the_gate):
    gate, _ = gates("gate")
    run, worker, thread = in_the_gate(grace_period=0.2)
    generation = Run.objects.get(pk=run.pk).lease_generation
    worker.stop()
    thread.join(20)
    assert not thread.is_alive()
    handed_back = Run.objects.get(pk=run.pk)
    # Still leased under the same generation, but the lease is over: claimable at once.
    assert handed_back.status == "leased"
    assert handed_back.lease_generation == generation
    assert Run.objects.ready().filter(pk=run.pk).exists()
    gate.set()
    # The abandoned job thread stops at its next step boundary and writes nothing.
    wait_until(lambda: jobs.CALLS["entered:gate"] == 1, timeout=20, what="gate entered")
    assert not Step.objects.filter(run_id=run.pk, name="last").exists()


def test_worker__hard_stop_hands_back_at_once(gates, in_the_gate):
    gate, _ = gates("gate")
    run, worker, thread = in_the_gate(grace_period=60)
    worker.stop()
    worker.stop(hard=True)
    thread.join(10)
    assert not thread.is_alive()
    assert Run.objects.ready().filter(pk=run.pk).exists()
    gate.set()


def test_worker__records_ends_that_come_in_together_in_one_write(monkeypatch, gates):
    """Group commit: a slot does not write its run's end; the claim loop writes every end that came
    in since its last write in one ``record()`` (one statement on PostgreSQL, see
    test_query_counts)."""
    from django_durably import worker as worker_module

    gate, _ = gates("gate")
    runs = [jobs.gated.trigger() for _ in range(3)]
    worker = Worker(concurrency=3, until_idle=True, poll_interval=0.05)
    batches: list[int] = []
    real_record = worker_module.record

    def held_record(ends, **kwargs):
        if not batches:  # hold the first write until all three jobs have ended
            wait_until(
                lambda: len(ends) + len(worker._ended) == 3, timeout=20, what="all three ends"
            )
        batches.append(len(ends))
        return real_record(ends, **kwargs)

    monkeypatch.setattr(worker_module, "record", held_record)
    thread = start_worker(worker)
    wait_until(lambda: jobs.CALLS["entered:gate"] == 3, timeout=20, what="three jobs at the gate")
    gate.set()
    thread.join(20)

    assert not thread.is_alive()
    assert sum(batches) == 3
    assert max(batches) >= 2, batches  # at least two ends in one write
    assert worker.stats.outcomes == {"completed": 3}
    assert Run.objects.filter(pk__in=[r.pk for r in runs], status="completed").count() == 3


def test_worker__does_not_write_ends_while_its_keeper_renews():
    """The renewal and the batched end write both update several of the worker's runs: they take
    turns (two multi-row UPDATEs locking the same rows in opposite orders could deadlock)."""
    run = jobs.counted.trigger({"n": 1})
    worker = Worker(concurrency=1, poll_interval=0.05)
    worker.keeper.writing.acquire()  # as if a renewal were in flight
    holding = True
    thread = start_worker(worker)
    try:
        wait_until(lambda: jobs.CALLS["counted:1"] == 1, timeout=20, what="the job ran")
        wait_until(
            lambda: worker._busy == 0 and not worker._ended, timeout=20, what="its end taken up"
        )
        assert Run.objects.get(pk=run.pk).status == "leased"  # the write waits for the renewal
        worker.keeper.writing.release()
        holding = False
        wait_until(
            lambda: Run.objects.get(pk=run.pk).status == "completed", timeout=20, what="written"
        )
    finally:
        if holding:
            worker.keeper.writing.release()
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()


# -- what it reports ---------------------------------------------------------------------------


@pytest.mark.parametrize("hard", [False, True], ids=["grace-over", "hard-stop"])
def test_worker__counts_runs_it_hands_back_as_released(hard, gates, in_the_gate):
    gate, _ = gates("gate")
    run, worker, thread = in_the_gate(grace_period=0 if not hard else 60)

    worker.stop(hard=hard)
    thread.join(20)
    gate.set()

    assert not thread.is_alive()
    assert worker.stats.claimed == 1
    assert worker.stats.outcomes == {"released": 1}
    assert Run.objects.ready().filter(pk=run.pk).exists()


def debug_actions(caplog: pytest.LogCaptureFixture) -> set[str]:
    return {
        getattr(record, "action", "")
        for record in caplog.records
        # Renewals are the lease keeper's; the rest is the worker loop's.
        if record.name in ("django_durably.worker", "django_durably.keeper")
        and record.levelno == logging.DEBUG
    }


def test_worker__logs_claims_renewals_wake_ups_and_ends_at_debug(caplog, gates):
    caplog.set_level(logging.DEBUG, logger="django_durably")
    gate, _ = gates("gate")
    run = jobs.gated.trigger()
    worker = Worker(concurrency=1, until_idle=True, poll_interval=0.05, renew_interval=0.05)
    thread = start_worker(worker)
    wait_until(lambda: "renewed" in debug_actions(caplog), timeout=20, what="a renewal logged")

    gate.set()
    thread.join(20)

    assert not thread.is_alive()
    assert {"claimed", "renewed", "woke_up", "recorded"} <= debug_actions(caplog)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert f"run={run.pk} job={jobs.gated.name} attempt=1 claimed (generation 1, " in "\n".join(
        messages
    )
    assert any(m.startswith("Renewed 1 of 1 lease(s) in ") for m in messages)
    assert any(
        m.startswith("Woke up (a run ended) after waiting with 0 of 1 slot(s) free")
        for m in messages
    )
    assert any(
        m.startswith("Recorded the ends of 1 run(s) in ") and m.endswith(f"{run.pk}:completed")
        for m in messages
    )


def test_worker__debug_lines_cost_nothing_when_debug_is_off(caplog, monkeypatch):
    """The hot loop's debug lines are guarded: at INFO their helpers are never called."""
    caplog.set_level(logging.INFO, logger="django_durably")

    def refuse(*args, **kwargs):
        raise AssertionError("a debug helper was called with DEBUG off")

    monkeypatch.setattr(Worker, "_log_claims", refuse)
    monkeypatch.setattr(Worker, "_log_wake_up", refuse)
    jobs.noop.trigger_many([1, 2, 3])

    stats = Worker(concurrency=2, until_idle=True, poll_interval=0.05, renew_interval=0.05).run()

    assert stats.outcomes == {"completed": 3}
    assert not any(r.levelno == logging.DEBUG for r in caplog.records)
