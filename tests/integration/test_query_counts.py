"""What a run and a step cost the database, pinned: statements per run do not grow with its steps
(no N+1 queries), a step is one transaction (one statement on PostgreSQL), and a worker records
the ends of several runs in one statement."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connections

from django_durably import cancel_run, leases, process_one, resume_run
from django_durably.executor import AttemptEnd, record
from django_durably.leases import LeaseHandle
from django_durably.models import Run
from django_durably.worker import Worker
from tests import jobs
from tests.concurrency import start, wait_until
from tests.leasing import handle_of
from tests.sql import (
    call_and_capture,
    is_postgres,
    keyword,
    recording,
    statements,
    transactions,
    writes,
)

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def test_a_trigger_without_keys__one_statement_on_postgresql(db_alias):
    sql = statements(db_alias, lambda: jobs.noop.trigger(None))

    assert transactions(sql) == 1, sql
    if is_postgres(db_alias):
        # The insert and the workers' wake-up, in autocommit: one round trip.
        assert len(sql) == 1, sql
    else:
        assert [keyword(s) for s in sql] == ["BEGIN", "INSERT", "COMMIT"], sql


@pytest.mark.parametrize("batch", [1, 10, 1000])
def test_a_batch__one_statement_on_postgresql_whatever_its_size(db_alias, batch):
    sql = statements(db_alias, lambda: jobs.noop.trigger_many(list(range(batch))))

    assert Run.objects.count() == batch
    assert transactions(sql) == 1, sql
    if is_postgres(db_alias):
        assert len(sql) == 1, sql  # one row per element of each array parameter
    else:
        # Django's bulk_create splits the INSERT to stay within SQLite's parameters per statement.
        assert [keyword(s) for s in sql if not s.startswith("INSERT")] == [
            "BEGIN",
            "COMMIT",
        ], sql


def test_a_trigger_with_keys__looks_them_up_and_inserts_in_one_transaction(db_alias):
    sql = statements(
        db_alias, lambda: jobs.noop.trigger(None, idempotency_key="i", concurrency_key="c")
    )

    assert transactions(sql) == 1, sql
    # BEGIN, the run of the idempotency key, the pending run of the concurrency key, the insert
    # (with the wake-up on PostgreSQL), COMMIT.
    assert [keyword(s) for s in sql] == [
        "BEGIN",
        "SELECT",
        "SELECT",
        "WITH" if is_postgres(db_alias) else "INSERT",
        "COMMIT",
    ], sql


def test_a_run_on_its_first_attempt__claim_and_finish_only(db_alias):
    run = jobs.noop.trigger(None)

    sql = statements(db_alias, process_one)

    assert Run.objects.get(pk=run.pk).status == "completed"
    assert transactions(sql) == 2, sql  # the claim and the finish
    # First, the look for waiting runs whose timer is due: one indexed read, no write when none
    # is (a worker looks once per poll interval, not once per claim).
    assert keyword(sql[0]) == "SELECT" and "'waiting'" in sql[0], sql
    if is_postgres(db_alias):
        assert len(sql) == 3, sql  # then the claim (one statement, rows returned) and the finish
    else:
        # SQLite: the two candidate lists, the conditional claim and the claimed row read back
        # under the same write lock (BEGIN, UPDATE, SELECT, COMMIT), and the finish (BEGIN,
        # UPDATE, COMMIT): a completed run is its attempt's record, no history row is written.
        assert len(sql) == 10, sql


def test_an_empty_claim__one_statement_unless_a_keyed_run_is_first(db_alias):
    """An idle worker's claim finds nothing in one round trip on PostgreSQL; only a ready run with
    a concurrency key first in line sends it on to the keyed path (a transaction of its own)."""
    if not is_postgres(db_alias):
        pytest.skip("SQLite claims one candidate at a time")
    claim = lambda: leases.claim(worker_id="w", limit=4)  # noqa: E731

    nothing = statements(db_alias, claim)

    assert len(nothing) == 1, nothing
    jobs.singleton.trigger(None)  # a keyed run, first in line
    keyed = statements(db_alias, claim)
    assert keyword(keyed[1]) == "BEGIN", keyed  # then the keyed path
    assert Run.objects.get().status == "leased"


@pytest.mark.parametrize("steps", [1, 5])
def test_each_step_in_process__a_cancel_check_and_one_write_transaction(db_alias, steps):
    jobs.n_steps.trigger({"steps": 0})
    jobs.n_steps.trigger({"steps": steps})

    without = statements(db_alias, process_one)
    with_steps = statements(db_alias, process_one)

    per_step = (len(with_steps) - len(without)) / steps
    # Before each step, a read of the run's status: no listener delivers cancels in process_one.
    # Then PostgreSQL: the step's insert and the run's counters in one statement. SQLite: the same
    # two writes as two statements in one transaction (BEGIN, UPDATE, INSERT, COMMIT).
    assert per_step == (2 if is_postgres(db_alias) else 5), with_steps
    reads = [len([s for s in sql if keyword(s) == "SELECT"]) for sql in (without, with_steps)]
    assert reads[1] - reads[0] == steps, with_steps
    assert (transactions(with_steps) - transactions(without)) / steps == 1, with_steps
    assert Run.objects.filter(status="completed").count() == 2


@pytest.mark.parametrize("steps", [1, 5])
def test_each_step_in_a_postgresql_worker__one_statement(db_alias, steps):
    """A worker's listener delivers cancels, so a step boundary asks the database nothing."""
    if not is_postgres(db_alias):
        pytest.skip("SQLite has no notifications: its step boundary reads the run")
    slot_statements: list[str] = []
    capture = recording(
        slot_statements, when=lambda: threading.current_thread().name.startswith("durably-slot")
    )

    worker = Worker(concurrency=1, poll_interval=0.05)
    wrapped = worker._run_job

    def run_job_captured(run: Run, lease: LeaseHandle) -> Any:
        with connections[db_alias].execute_wrapper(capture):
            return wrapped(run, lease)

    worker._run_job = run_job_captured  # type: ignore[method-assign]
    thread = start(worker.run)
    try:
        wait_until(
            lambda: worker.keeper.feed is not None and worker.keeper.feed.live_since is not None,
            what="the worker's listener to listen",
        )
        run = jobs.n_steps.trigger({"steps": steps})
        wait_until(
            lambda: Run.objects.filter(pk=run.pk, status="completed").exists(),
            what="the worker to complete the run",
        )
    finally:
        worker.stop()
        thread.outcome()

    # The claim and the end are the claim loop's; the slot sends one statement per step.
    assert len(slot_statements) == steps, slot_statements
    assert all(s.lstrip().upper().startswith("WITH HELD") for s in slot_statements), slot_statements


def test_a_resumed_run__replays_its_steps_with_one_query(db_alias):
    jobs.FLAGS["fail"] = "b"
    run = jobs.three_steps.trigger({})
    process_one()
    assert Run.objects.get(pk=run.pk).status == "failed"
    del jobs.FLAGS["fail"]
    resume_run(run.pk)

    sql = statements(db_alias, process_one)

    reads = [s for s in sql if "durably_step" in s and keyword(s) == "SELECT"]
    assert len(reads) == 1, sql
    assert Run.objects.get(pk=run.pk).status == "completed"


# -- recording several ends at once --------------------------------------------------------------


def test_record__several_ends_in_one_statement_with_each_outcome(db_alias):
    jobs.noop.trigger_many([1, 2, 3, 4])
    done, failed, cancelled, stolen = leases.claim(worker_id="w", limit=4)
    cancel_run(cancelled.pk)
    Run.objects.filter(pk=stolen.pk).update(lease_generation=stolen.lease_generation + 1)
    started = time.monotonic()
    ends = [
        AttemptEnd(done, handle_of(done), "completed", started, output={"n": 1}),
        AttemptEnd(
            failed, handle_of(failed), "failed", started, error={"type": "E", "message": "m"}
        ),
        AttemptEnd(cancelled, handle_of(cancelled), "completed", started, output=3),
        AttemptEnd(stolen, handle_of(stolen), "completed", started, output=4),
    ]

    outcomes, sql = call_and_capture(db_alias, lambda: record(ends))

    assert [o.status for o in outcomes] == ["completed", "failed", "cancelled", "lost"]
    assert [o.run_id for o in outcomes] == [done.pk, failed.pk, cancelled.pk, stolen.pk]
    assert outcomes[1].error == {"type": "E", "message": "m"}
    # One write for all four (PostgreSQL); one transaction of guarded UPDATEs on SQLite, the failed
    # one followed by its attempt's history row.
    assert len(writes(sql)) == (1 if is_postgres(db_alias) else 5), sql
    assert transactions(sql) == 1, sql
    rows = {r.pk: r for r in Run.objects.all()}
    assert (rows[done.pk].status, rows[done.pk].output) == ("completed", {"n": 1})
    assert (rows[failed.pk].status, rows[failed.pk].error) == (
        "failed",
        {"type": "E", "message": "m"},
    )
    assert rows[cancelled.pk].status == "cancelled"
    assert rows[cancelled.pk].output is None
    assert rows[stolen.pk].status == "leased"
    assert rows[stolen.pk].output is None


def test_record__a_completion_keeps_an_earlier_error_and_a_failure_an_earlier_output(db_alias):
    jobs.noop.trigger_many([1, 2])
    completes, fails = leases.claim(worker_id="w", limit=2)
    Run.objects.update(output={"old": True}, error={"type": "Old"})

    outcomes = record(
        [
            AttemptEnd(completes, handle_of(completes), "completed", 0.0, output={"new": True}),
            AttemptEnd(fails, handle_of(fails), "failed", 0.0, error={"type": "New"}),
        ]
    )

    assert [o.status for o in outcomes] == ["completed", "failed"]
    completed, failed = Run.objects.get(pk=completes.pk), Run.objects.get(pk=fails.pk)
    assert (completed.output, completed.error) == ({"new": True}, {"type": "Old"})
    assert (failed.output, failed.error) == ({"old": True}, {"type": "New"})


def test_record__stopped_runs_write_nothing(db_alias):
    run = jobs.noop.trigger(None)
    [claimed] = leases.claim(worker_id="w", limit=1)

    stopped = [
        AttemptEnd(claimed, handle_of(claimed), "lost", 0.0),
        AttemptEnd(claimed, handle_of(claimed), "cancelled", 0.0),
    ]

    outcomes, sql = call_and_capture(db_alias, lambda: record(stopped))

    assert [o.status for o in outcomes] == ["lost", "cancelled"]
    assert writes(sql) == []
    assert Run.objects.get(pk=run.pk).status == "leased"


def test_a_retry__costs_no_more_statements_than_a_failure(db_alias, settings):
    """Ending an attempt with a retry (pending again, due later) is the same statements as ending
    it failed: one on PostgreSQL, the guarded update and the history row on SQLite."""
    jobs.FLAGS["retried_later"] = RuntimeError("down")
    settings.DURABLY_DEFAULT_RETRY = None
    failing = jobs.retried_later.trigger(None)
    retried = statements(db_alias, process_one)
    assert Run.objects.get(pk=failing.pk).status == "pending"

    jobs.FLAGS["retried_later"] = KeyError("gone")  # give_up_on: fails at once
    failed = jobs.retried_later.trigger(None)
    not_retried = statements(db_alias, process_one)
    assert Run.objects.get(pk=failed.pk).status == "failed"

    assert len(retried) == len(not_retried), (retried, not_retried)
    assert transactions(retried) == transactions(not_retried) == 2
    # The claim and the end (PostgreSQL); the claim, the end and its history row (SQLite).
    assert len(writes(retried)) == (2 if is_postgres(db_alias) else 3), retried
