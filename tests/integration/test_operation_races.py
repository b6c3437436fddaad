"""Operator actions racing workers and each other, with real threads on each database.

Each race lines its two threads up on a barrier and is repeated ``ITERATIONS`` times. Every
iteration must end in one of the legal outcomes listed in the test, with an audit trail that tells
the same story; the outcome counts are kept so a failure shows what the other iterations did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.db.models import Q
from django.db.models.functions import Now

from django_durably import leases, process_next
from django_durably.exceptions import (
    PendingRunExists,
    RunNotCancellable,
    RunNotDeletable,
    RunNotFound,
    RunNotResumable,
)
from django_durably.models import AuditRecord, Run, RunLog, Step
from django_durably.operations import (
    CancelResult,
    DeleteResult,
    ResumeResult,
    cancel_run,
    delete_run,
    resume_run,
    retrigger_run,
)
from tests import jobs
from tests.concurrency import at_once, wait_until
from tests.factories import make_step, move_to

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ITERATIONS = 24
# What a loser of a race raises.
LOST = (RunNotCancellable, RunNotResumable, RunNotDeletable, RunNotFound, PendingRunExists)
ERROR = {"type": "builtins.RuntimeError", "message": "boom", "traceback": ""}


def race(first: Callable[[], Any], second: Callable[[], Any]) -> list[Any]:
    """Run both at once; return what each returned, or the typed error it raised."""
    return at_once(first, second, catch=LOST)


def trail(run_id: Any) -> list[tuple[str, str, str]]:
    """The run's audit records, oldest first: (action, from_status, to_status)."""
    records = AuditRecord.objects.filter(run_uuid=run_id).order_by("id")
    return list(records.values_list("action", "from_status", "to_status"))


def written(run_id: Any) -> tuple[set[int], set[int], Any]:
    """Everything a lease holder writes for a run under its lease: step rows, log rows, progress.
    (The ``cancelled`` row of the step a cancel interrupted is written after the cancel, by
    design, and checked apart.)"""
    return (
        set(
            Step.objects.filter(run_id=run_id)
            .exclude(status="cancelled")
            .values_list("pk", flat=True)
        ),
        set(RunLog.objects.filter(run_id=run_id).values_list("pk", flat=True)),
        Run.objects.filter(pk=run_id).values_list("progress", flat=True).first(),
    )


# -- cancel against the worker -------------------------------------------------------------------


def test_race__cancel_against_the_worker_completing_the_run():
    """Exactly one of them wins. A cancel that wins leaves a cancelled run with no output and no
    step, log or progress written after the cancel committed; the worker then ends the execution
    as cancelled (or never claimed the run). A completion that wins makes the cancel raise
    RunNotCancellable carrying ``completed``."""
    winners: Counter[str] = Counter()
    moments = ("at once", "running", "after step a", "after step c", "logged")
    for i in range(ITERATIONS):
        run = jobs.three_steps.trigger({})
        moment = moments[i % len(moments)]
        runs = Run.objects.filter(pk=run.pk)
        over = ~Q(status__in=["pending", "leased"])
        seen = {
            "running": runs.exclude(status="pending"),
            "after step a": runs.filter(Q(completed_step_count__gte=1) | over),
            "after step c": runs.filter(Q(completed_step_count=3) | over),
            "logged": runs.filter(Q(logs__isnull=False) | over),
        }.get(moment)

        def cancel(seen=seen, moment=moment, run_id=run.pk):
            if seen is not None:
                wait_until(seen.exists, interval=0.0005, what=f"the run to reach {moment!r}")
            result = cancel_run(run_id)
            # Read at once, from this thread's connection: what was stored when the cancel landed.
            return result, written(run_id)

        outcome, cancelled = race(process_next, cancel)

        final = Run.objects.get(pk=run.pk)
        if final.status == "completed":
            winners["completed"] += 1
            assert isinstance(cancelled, RunNotCancellable), cancelled
            assert (cancelled.run_id, cancelled.status) == (run.pk, "completed")
            assert outcome is not None
            assert (outcome.run_id, outcome.status) == (run.pk, "completed")
            assert final.output == {"a": 1, "b": "b", "c": [1, "b"]}
            assert trail(run.pk) == []
            continue
        result, at_cancel = cancelled
        winners[f"cancelled from {result.from_status}"] += 1
        assert final.status == "cancelled"
        assert result == CancelResult(run_id=run.pk, cancelled=True, from_status=result.from_status)
        assert (final.output, final.error) == (None, None)
        assert final.completed_at is not None
        if result.from_status == "pending":
            # Cancelled before any claim: the worker found nothing to do, and nothing ran.
            assert outcome is None
            assert (final.attempt, final.lease_generation) == (0, 0)
        else:
            assert result.from_status == "leased"
            assert outcome is not None
            assert (outcome.run_id, outcome.status) == (run.pk, "cancelled")
            assert (final.attempt, final.lease_generation) == (1, 1)
        # Nothing was written after the cancel committed; what was written is a prefix of the job.
        assert written(run.pk) == at_cancel
        names = list(
            Step.objects.filter(run_id=run.pk, status="completed")
            .order_by("index")
            .values_list("name", flat=True)
        )
        assert names == ["a", "b", "c"][: len(names)]
        assert final.completed_step_count == len(names)
        # At most the step the cancel interrupted is recorded as cancelled: the next one.
        interrupted = list(
            Step.objects.filter(run_id=run.pk, status="cancelled").values_list("name", flat=True)
        )
        assert interrupted in ([], ["a", "b", "c"][len(names) : len(names) + 1]), interrupted
        assert trail(run.pk) == [("cancel", result.from_status, "cancelled")]

    assert sum(winners.values()) == ITERATIONS
    assert winners["cancelled from pending"] + winners["cancelled from leased"] > 0, winners
    assert not Run.objects.filter(status__in=["pending", "leased"]).exists()


def test_race__cancel_against_claim():
    """The claim either leases the run before the cancel (which then cancels it from ``leased``,
    and every write under the claimed generation is refused) or finds nothing (the cancel came
    first, from ``pending``, or, for an expired lease, from ``leased``). A claim never leases a
    cancelled run, and the run always ends cancelled."""
    winners: Counter[str] = Counter()
    for i in range(ITERATIONS):
        expired = i % 2 == 1
        run = jobs.noop.trigger(i)
        generation = 0
        if expired:
            # A worker that died holding the lease: the run is claimable again.
            generation = 1
            move_to(run, "leased", lease_owner="dead", lease_expires_at=Now())

        claimed, result = race(
            lambda: leases.claim(worker_id="claimer", limit=1),
            lambda run_id=run.pk: cancel_run(run_id),
        )

        final = Run.objects.get(pk=run.pk)
        assert final.status == "cancelled"
        assert isinstance(result, CancelResult)
        assert result.cancelled is True
        if claimed:
            [leased] = claimed
            winners["claimed, then cancelled"] += 1
            assert leased.pk == run.pk
            assert result.from_status == "leased"
            assert (leased.lease_generation, leased.lease_owner) == (generation + 1, "claimer")
            assert (final.lease_generation, final.attempt) == (generation + 1, generation + 1)
            # The claimed generation is fenced out.
            token = leased.lease_generation
            assert leases.renew([(run.pk, token)], 30) == {(run.pk, token): "cancelled"}
            assert leases.complete(run.pk, token, "late") is False
            assert leases.fail(run.pk, token, ERROR) is False
        else:
            winners["cancelled first"] += 1
            assert claimed == []
            assert result.from_status == ("leased" if expired else "pending")
            assert (final.lease_generation, final.attempt) == (generation, generation)
        assert Run.objects.get(pk=run.pk).status == "cancelled"
        assert trail(run.pk) == [("cancel", result.from_status, "cancelled")]
        assert leases.claim(worker_id="after", limit=1) == []

    assert sum(winners.values()) == ITERATIONS


# -- resume against resume, cancel and delete ----------------------------------------------------


def test_race__resume_against_resume():
    """Exactly one resume wins; the other raises RunNotResumable carrying ``pending``."""
    for i in range(ITERATIONS):
        origin = ("failed", "cancelled")[i % 2]
        run = move_to(jobs.noop.trigger(), origin)

        results = race(lambda r=run.pk: resume_run(r), lambda r=run.pk: resume_run(r))

        won = [r for r in results if isinstance(r, ResumeResult)]
        lost = [r for r in results if not isinstance(r, ResumeResult)]
        assert won == [ResumeResult(run_id=run.pk, from_status=origin)], results
        [error] = lost
        assert isinstance(error, RunNotResumable), error
        assert (error.run_id, error.status) == (run.pk, "pending")
        final = Run.objects.get(pk=run.pk)
        assert (final.status, final.error, final.lease_expires_at) == ("pending", None, None)
        assert trail(run.pk) == [("resume", origin, "pending")]


def test_race__resumes_of_two_runs_sharing_a_concurrency_key():
    """Two stopped runs of one job hold the same concurrency key: only one of them can be pending,
    so exactly one resume wins and the other raises PendingRunExists naming the winner."""
    for i in range(ITERATIONS):
        first, second = (
            move_to(jobs.per_user.trigger({"user": i}), ("failed", "cancelled")[(i + n) % 2])
            for n in range(2)
        )

        results = race(lambda r=first.pk: resume_run(r), lambda r=second.pk: resume_run(r))

        won = [r for r in results if isinstance(r, ResumeResult)]
        assert len(won) == 1, results
        [winner] = won
        [error] = [r for r in results if not isinstance(r, ResumeResult)]
        assert isinstance(error, PendingRunExists), error
        assert (error.job_name, error.concurrency_key, error.run_id) == (
            "tests.jobs.per_user",
            f"user:{i}",
            winner.run_id,
        )
        loser = first if winner.run_id == second.pk else second
        assert Run.objects.get(pk=winner.run_id).status == "pending"
        assert Run.objects.get(pk=loser.pk).status == loser.status
        assert trail(winner.run_id) == [("resume", winner.from_status, "pending")]
        assert trail(loser.pk) == []


def test_race__resume_against_cancel():
    """Legal outcomes, from a failed or cancelled run:

    * resume first: the cancel then cancels the pending run (from ``pending``); ends cancelled;
    * cancel first: it raises RunNotCancellable carrying ``failed`` (or, for a cancelled run, is a
      no-op reporting ``cancelled=False``); the resume wins; ends pending.

    The cancel never reports a status it could have cancelled from (it used to, on PostgreSQL, when
    the resume committed between its ``pending`` and ``leased`` updates), so this race runs twice
    as often as the others.
    """
    seen: Counter[str] = Counter()
    for i in range(2 * ITERATIONS):
        origin = ("failed", "cancelled")[i % 2]
        run = move_to(jobs.noop.trigger(), origin)

        resumed, cancelled = race(lambda r=run.pk: resume_run(r), lambda r=run.pk: cancel_run(r))

        assert resumed == ResumeResult(run_id=run.pk, from_status=origin), resumed
        final = Run.objects.get(pk=run.pk)
        if isinstance(cancelled, CancelResult) and cancelled.cancelled:
            seen["resume, then cancel"] += 1
            assert cancelled.from_status == "pending"
            assert final.status == "cancelled"
            assert trail(run.pk) == [
                ("resume", origin, "pending"),
                ("cancel", "pending", "cancelled"),
            ]
        else:
            seen["cancel refused, then resume"] += 1
            if origin == "failed":
                assert isinstance(cancelled, RunNotCancellable), cancelled
                assert (cancelled.run_id, cancelled.status) == (run.pk, "failed")
            else:
                assert cancelled == CancelResult(
                    run_id=run.pk, cancelled=False, from_status="cancelled"
                )
            assert final.status == "pending"
            assert trail(run.pk) == [("resume", origin, "pending")]

    assert sum(seen.values()) == 2 * ITERATIONS


def test_race__delete_against_resume():
    """Exactly one wins: the delete (the resume then finds no run) or the resume (the delete then
    raises RunNotDeletable carrying ``pending``)."""
    winners: Counter[str] = Counter()
    for i in range(ITERATIONS):
        origin = ("failed", "cancelled", "completed")[i % 3]
        run = move_to(jobs.noop.trigger(), origin)
        make_step(run, name="s", started_at=run.started_at)

        deleted, resumed = race(lambda r=run.pk: delete_run(r), lambda r=run.pk: resume_run(r))

        if isinstance(deleted, DeleteResult):
            winners["delete"] += 1
            assert deleted == DeleteResult(run_id=run.pk, from_status=origin)
            # The resume found the run gone, or (a completed run) came first and was refused.
            if isinstance(resumed, RunNotResumable):
                assert origin == "completed"
                assert (resumed.run_id, resumed.status) == (run.pk, "completed")
            else:
                assert isinstance(resumed, RunNotFound), resumed
                assert resumed.run_id == run.pk
            assert not Run.objects.filter(pk=run.pk).exists()
            assert not Step.objects.filter(run_id=run.pk).exists()
            assert trail(run.pk) == [("delete", origin, "")]
            assert AuditRecord.objects.get(run_uuid=run.pk).run_id is None
        else:
            winners["resume"] += 1
            assert origin != "completed"
            assert resumed == ResumeResult(run_id=run.pk, from_status=origin), resumed
            assert isinstance(deleted, RunNotDeletable), deleted
            assert (deleted.run_id, deleted.status) == (run.pk, "pending")
            assert Run.objects.get(pk=run.pk).status == "pending"
            assert Step.objects.filter(run_id=run.pk).count() == 1
            assert trail(run.pk) == [("resume", origin, "pending")]
            cancel_run(run.pk)

    assert sum(winners.values()) == ITERATIONS


# -- retrigger -----------------------------------------------------------------------------------


def test_race__retrigger_against_retrigger():
    """Without a concurrency key both win, each with its own new run; with one, exactly one new
    run is created and the other retrigger raises PendingRunExists naming it. New runs never carry
    the original's idempotency key."""
    for i in range(ITERATIONS):
        keyed = i % 2 == 0
        original = move_to(
            jobs.noop.trigger(
                {"i": i},
                idempotency_key=f"once-{i}",
                concurrency_key=f"key-{i}" if keyed else None,
                labels={"i": str(i)},
            ),
            ("completed", "failed", "cancelled")[i % 3],
        )

        results = race(
            lambda r=original.pk: retrigger_run(r), lambda r=original.pk: retrigger_run(r)
        )

        created = [r for r in results if isinstance(r, Run)]
        refused = [r for r in results if not isinstance(r, Run)]
        new_runs = Run.objects.exclude(pk=original.pk).filter(labels__i=str(i))
        if keyed:
            assert len(created) == 1, results
            [error] = refused
            assert isinstance(error, PendingRunExists), error
            assert (error.concurrency_key, error.run_id) == (f"key-{i}", created[0].pk)
        else:
            assert len(created) == 2, results
            assert created[0].pk != created[1].pk
        assert set(new_runs.values_list("pk", flat=True)) == {run.pk for run in created}
        for new in new_runs:
            assert (new.status, new.input, new.idempotency_key) == ("pending", {"i": i}, None)
            assert new.concurrency_key == original.concurrency_key
        assert Run.objects.filter(idempotency_key=f"once-{i}").count() == 1
        records = AuditRecord.objects.filter(run_uuid=original.pk)
        assert sorted(records.values_list("detail__new_run_id", flat=True)) == sorted(
            str(run.pk) for run in created
        )
        new_runs.update(status="cancelled", completed_at=Now())


def test_race__retrigger_against_retrigger_with_the_same_idempotency_key():
    """A double click: both requests return the one run that was created, and one audit record
    names it."""
    for i in range(ITERATIONS):
        original = move_to(jobs.noop.trigger({"i": i}, labels={"i": str(i)}), "failed")

        results = race(
            lambda r=original.pk: retrigger_run(r, idempotency_key="click"),
            lambda r=original.pk: retrigger_run(r, idempotency_key="click"),
        )

        assert all(isinstance(r, Run) for r in results), results
        assert results[0].pk == results[1].pk
        assert sorted(r.disposition for r in results) == ["created", "idempotent"]
        new_runs = Run.objects.exclude(pk=original.pk).filter(labels__i=str(i))
        assert list(new_runs.values_list("pk", flat=True)) == [results[0].pk]
        records = AuditRecord.objects.filter(run_uuid=original.pk)
        assert list(records.values_list("detail__new_run_id", flat=True)) == [str(results[0].pk)]
        new_runs.update(status="cancelled", completed_at=Now())
