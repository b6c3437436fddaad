"""Operator actions (cancel, resume, retrigger, delete, purge): each success path, each typed error
with the status it carries, the audit trail written with the change, and the signals sent after
commit. Races between them are in test_operation_races.py."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

import django_durably
from django_durably import leases, operations, process_next, signals
from django_durably.exceptions import (
    InvalidInput,
    InvalidTrigger,
    JobNotFound,
    PendingRunExists,
    RunNotCancellable,
    RunNotDeletable,
    RunNotFound,
    RunNotResumable,
    RunNotRetriggerable,
    RunStateError,
)
from django_durably.models import AuditRecord, Run, RunLog, Step
from django_durably.operations import (
    CancelResult,
    DeleteResult,
    ResumeResult,
    cancel_run,
    delete_run,
    purge_runs,
    purgeable_runs,
    resume_run,
    retrigger_run,
)
from tests import jobs
from tests.factories import make_log, make_step, move_to

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ERROR = {"type": "builtins.RuntimeError", "message": "boom", "traceback": "Traceback ..."}
FINISHED = ("completed", "failed", "cancelled")
OPERATIONS = {
    "cancel": cancel_run,
    "resume": resume_run,
    "retrigger": retrigger_run,
    "delete": delete_run,
}


# -- building runs in a given status -------------------------------------------------------------


def failed_three_steps() -> Run:
    """A three_steps run that failed in step "b" after completing step "a"."""
    jobs.FLAGS["fail"] = "b"
    run = jobs.three_steps.trigger({})
    outcome = process_next()
    assert outcome is not None
    assert outcome.status == "failed"
    del jobs.FLAGS["fail"]
    return Run.objects.get(pk=run.pk)


def row(run: Run) -> dict[str, Any]:
    return dict(Run.objects.filter(pk=run.pk).values().get())


def completed_steps(run: Run) -> list[str]:
    rows = Step.objects.filter(run_id=run.pk, status="completed").order_by("index")
    return list(rows.values_list("name", flat=True))


def refused(
    operation: Any, run: Run, error: type[RunStateError], status: str, verb: str
) -> RunStateError:
    """``operation(run)`` raises ``error``, saying the run cannot be <verb> because it is
    ``status``, and changes nothing: the row is as it was and no audit record is written."""
    before = row(run)
    with pytest.raises(error) as raised:
        operation(run.pk)
    assert (raised.value.run_id, raised.value.status) == (run.pk, status)
    assert str(raised.value) == f"Run {run.pk} cannot be {verb}: it is {status}."
    assert row(run) == before
    assert audit_trail(run.pk) == []
    return raised.value


def audit_trail(run_id: Any) -> list[tuple[str, str, str, str, str]]:
    records = AuditRecord.objects.filter(run_uuid=run_id).order_by("id")
    return list(records.values_list("action", "from_status", "to_status", "actor", "source"))


# -- the package re-exports ----------------------------------------------------------------------


def test_package__reexports_the_operations():
    from django_durably import (
        AuditRecord as ExportedAuditRecord,
    )
    from django_durably import (
        CancelResult as ExportedCancelResult,
    )
    from django_durably import (
        DeleteResult as ExportedDeleteResult,
    )
    from django_durably import (
        ResumeResult as ExportedResumeResult,
    )
    from django_durably import (
        cancel_run as exported_cancel,
    )
    from django_durably import (
        delete_run as exported_delete,
    )
    from django_durably import (
        purge_runs as exported_purge,
    )
    from django_durably import (
        purgeable_runs as exported_purgeable,
    )
    from django_durably import (
        resume_run as exported_resume,
    )
    from django_durably import (
        retrigger_run as exported_retrigger,
    )

    assert (
        exported_cancel,
        exported_resume,
        exported_retrigger,
        exported_delete,
        exported_purge,
        exported_purgeable,
    ) == (cancel_run, resume_run, retrigger_run, delete_run, purge_runs, purgeable_runs)
    assert (ExportedCancelResult, ExportedResumeResult, ExportedDeleteResult) == (
        CancelResult,
        ResumeResult,
        DeleteResult,
    )
    assert ExportedAuditRecord is AuditRecord
    for name in (
        "cancel_run",
        "resume_run",
        "retrigger_run",
        "delete_run",
        "purge_runs",
        "purgeable_runs",
        "RunNotResumable",
        "RunNotRetriggerable",
        "RunNotDeletable",
    ):
        assert name in django_durably.__all__


# -- unknown and malformed ids -------------------------------------------------------------------


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_operations__unknown_id_raises_run_not_found(operation):
    missing = uuid.uuid4()
    with pytest.raises(RunNotFound) as raised:
        OPERATIONS[operation](missing)
    assert raised.value.run_id == missing
    with pytest.raises(RunNotFound) as raised:
        OPERATIONS[operation](str(missing))
    assert raised.value.run_id == missing
    assert not AuditRecord.objects.exists()


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("bad", ["not-a-uuid", "", "1234"])
def test_operations__malformed_id_raises_run_not_found(operation, bad):
    with pytest.raises(RunNotFound) as raised:
        OPERATIONS[operation](bad)
    assert raised.value.run_id == bad
    assert not AuditRecord.objects.exists()


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_operations__accept_the_id_as_a_string(operation):
    run = move_to(jobs.noop.trigger(), "pending" if operation == "cancel" else "failed")
    result = OPERATIONS[operation](str(run.pk))
    if operation == "retrigger":
        assert result.pk != run.pk
    else:
        assert result.run_id == run.pk


# -- cancel --------------------------------------------------------------------------------------


def test_cancel__pending_run(db_alias):
    run = jobs.noop.trigger()

    result = cancel_run(run.pk)

    assert result == CancelResult(run_id=run.pk, cancelled=True, from_status="pending")
    after = row(run)
    assert after["status"] == "cancelled"
    assert after["completed_at"] is not None
    assert (after["lease_expires_at"], after["lease_generation"], after["attempt"]) == (None, 0, 0)
    # A cancelled run is never claimed.
    assert leases.claim(worker_id="w", limit=5) == []


def test_cancel__leased_run_fences_the_lease_holder_out():
    leased = move_to(jobs.noop.trigger(), "leased")

    result = cancel_run(leased.pk)

    assert result == CancelResult(run_id=leased.pk, cancelled=True, from_status="leased")
    after = row(leased)
    assert after["status"] == "cancelled"
    assert after["lease_expires_at"] is None
    assert after["lease_generation"] == leased.lease_generation  # not bumped
    assert after["completed_at"] is not None
    # Every write of the former lease holder is refused, and none overwrites "cancelled".
    generation = leased.lease_generation
    assert leases.renew([(leased.pk, generation)], 60) == {(leased.pk, generation): "cancelled"}
    assert leases.complete(leased.pk, generation, "out") is False
    assert leases.fail(leased.pk, generation, ERROR) is False
    assert leases.release(leased.pk, generation) is False
    assert row(leased) == after


def test_cancel__leased_run_with_an_expired_lease():
    leased = move_to(jobs.noop.trigger(), "leased")
    Run.objects.filter(pk=leased.pk).update(lease_expires_at=Now() - timedelta(seconds=5))

    assert cancel_run(leased.pk).from_status == "leased"
    assert row(leased)["status"] == "cancelled"
    assert leases.claim(worker_id="w", limit=1) == []


def test_cancel__already_cancelled_is_a_no_op():
    run = jobs.noop.trigger()
    cancel_run(run.pk)
    before = row(run)

    result = cancel_run(run.pk, actor="bob", source="api")

    assert result == CancelResult(run_id=run.pk, cancelled=False, from_status="cancelled")
    assert row(run) == before
    assert audit_trail(run.pk) == [("cancel", "pending", "cancelled", "", "python")]


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_cancel__finished_run_raises_run_not_cancellable(status):
    run = move_to(jobs.noop.trigger(), status)

    error = refused(cancel_run, run, RunNotCancellable, status, "cancelled")

    assert isinstance(error, RunStateError)


# -- resume --------------------------------------------------------------------------------------


def test_resume__failed_run_goes_back_to_pending_on_the_same_id():
    failed = failed_three_steps()
    assert failed.error is not None
    assert (failed.lease_generation, failed.attempt) == (1, 1)

    result = resume_run(failed.pk)

    assert result == ResumeResult(run_id=failed.pk, from_status="failed")
    after = row(failed)
    assert after["status"] == "pending"
    assert (after["error"], after["output"], after["completed_at"]) == (None, None, None)
    assert (after["lease_owner"], after["lease_expires_at"]) == ("", None)
    # Counters keep counting: the next claim is attempt 2 under generation 2.
    assert (after["lease_generation"], after["attempt"]) == (1, 1)
    assert after["started_at"] == failed.started_at
    assert after["job_name"] == failed.job_name and after["input"] == failed.input
    # The completed step is kept (and so is the record of the failed attempt at "b").
    assert completed_steps(failed) == ["a"]
    assert list(
        Step.objects.filter(run_id=failed.pk, status="failed").values_list("name", "attempt")
    ) == [("b", 1)]
    assert Run.objects.count() == 1


def test_resume__then_processing_completes_without_rerunning_completed_steps():
    failed = failed_three_steps()
    assert dict(jobs.CALLS) == {"a": 1, "b": 1}

    resume_run(failed.pk)
    outcome = process_next(worker_id="after-resume")

    assert outcome is not None
    assert (outcome.run_id, outcome.status, outcome.attempt) == (failed.pk, "completed", 2)
    done = Run.objects.get(pk=failed.pk)
    assert done.status == "completed"
    assert done.output == {"a": 1, "b": "b", "c": [1, "b"]}
    assert (done.attempt, done.lease_generation, done.lease_owner) == (2, 2, "after-resume")
    assert done.error is None
    # "a" was replayed from its checkpoint; "b" (failed before) and "c" ran once each.
    assert dict(jobs.CALLS) == {"a": 1, "b": 2, "c": 1}
    assert list(
        Step.objects.filter(run_id=failed.pk, status="completed")
        .order_by("index")
        .values_list("name", "attempt")
    ) == [("a", 1), ("b", 2), ("c", 2)]
    assert done.completed_step_count == 3


def test_resume__lease_generation_keeps_counting_over_several_resumes():
    failed = failed_three_steps()
    for expected_generation in (2, 3):
        resume_run(failed.pk)
        jobs.FLAGS["fail"] = "b"
        outcome = process_next()
        assert outcome is not None
        assert outcome.status == "failed"
        assert row(failed)["lease_generation"] == expected_generation
    del jobs.FLAGS["fail"]

    resume_run(failed.pk)
    assert process_next().status == "completed"

    done = row(failed)
    assert (done["status"], done["lease_generation"], done["attempt"]) == ("completed", 4, 4)
    assert dict(jobs.CALLS) == {"a": 1, "b": 4, "c": 1}
    assert [action for action, *_ in audit_trail(failed.pk)] == ["resume"] * 3


def test_resume__cancelled_run_replays_the_steps_done_before_the_cancel():
    failed = failed_three_steps()
    resume_run(failed.pk)
    assert cancel_run(failed.pk).from_status == "pending"

    result = resume_run(failed.pk)

    assert result == ResumeResult(run_id=failed.pk, from_status="cancelled")
    assert row(failed)["status"] == "pending"
    assert process_next().status == "completed"
    assert dict(jobs.CALLS) == {"a": 1, "b": 2, "c": 1}
    assert [(action, source) for action, _, _, _, source in audit_trail(failed.pk)] == [
        ("resume", "python"),
        ("cancel", "python"),
        ("resume", "python"),
    ]


def test_resume__a_stale_lease_holder_stays_fenced_out():
    """Cancelled while leased, then resumed: the worker that held the lease can write nothing."""
    leased = move_to(jobs.noop.trigger(), "leased")
    generation = leased.lease_generation
    cancel_run(leased.pk)
    resume_run(leased.pk)

    assert leases.complete(leased.pk, generation, "stale") is False
    assert leases.renew([(leased.pk, generation)], 60) == {(leased.pk, generation): "lost"}
    [reclaimed] = leases.claim(worker_id="next", limit=1)
    assert reclaimed.lease_generation == generation + 1
    assert leases.complete(leased.pk, generation, "stale") is False
    assert leases.complete(leased.pk, generation + 1, "fresh") is True
    assert row(leased)["output"] == "fresh"


@pytest.mark.parametrize("status", ["pending", "leased", "completed"])
def test_resume__other_statuses_raise_run_not_resumable(status):
    run = move_to(jobs.noop.trigger(), status)

    refused(resume_run, run, RunNotResumable, status, "resumed")


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_resume__pending_run_holding_the_concurrency_key_raises_pending_run_exists(status):
    stopped = move_to(jobs.per_user.trigger({"user": 1}), status)
    waiting = jobs.per_user.trigger({"user": 1})
    before = row(stopped)

    with pytest.raises(PendingRunExists) as raised:
        resume_run(stopped.pk)

    error = raised.value
    assert (error.job_name, error.concurrency_key, error.run_id) == (
        "tests.jobs.per_user",
        "user:1",
        waiting.pk,
    )
    assert row(stopped) == before
    assert audit_trail(stopped.pk) == []
    # Another key, or the same key on another job, does not conflict.
    jobs.per_user.trigger({"user": 2})
    jobs.noop.trigger(None, concurrency_key="user:1")
    cancel_run(waiting.pk)
    assert resume_run(stopped.pk).from_status == status


# -- retrigger -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", FINISHED)
def test_retrigger__creates_a_new_pending_run_with_the_same_options(status):
    original = move_to(
        jobs.noop.trigger(
            {"x": [1, 2]},
            idempotency_key="nightly-2026-01-01",
            concurrency_key="tenant:acme",
            labels={"tenant": "acme", "kind": "report"},
            queue="reports",
            priority=7,
        ),
        status,
    )
    before = row(original)

    new = retrigger_run(original.pk)

    assert isinstance(new, Run)
    assert new.pk != original.pk
    assert new.disposition == "created"
    stored = row(new)
    assert stored["status"] == "pending"
    assert (stored["job_name"], stored["input"], stored["labels"]) == (
        "tests.jobs.noop",
        {"x": [1, 2]},
        {"tenant": "acme", "kind": "report"},
    )
    assert (stored["concurrency_key"], stored["queue"], stored["priority"]) == (
        "tenant:acme",
        "reports",
        7,
    )
    assert stored["idempotency_key"] is None  # never copied
    assert (stored["attempt"], stored["lease_generation"], stored["lease_owner"]) == (0, 0, "")
    assert (stored["output"], stored["error"], stored["completed_at"]) == (None, None, None)
    original_after = row(original)
    assert original_after.pop("updated_at") >= before.pop("updated_at")
    assert original_after == before
    # The new run is an ordinary run: a worker completes it.
    assert process_next().run_id == new.pk
    assert row(new)["output"] == {"x": [1, 2]}


def test_retrigger__twice_creates_two_runs_without_a_concurrency_key():
    original = move_to(jobs.noop.trigger(1, idempotency_key="once"), "completed")

    first, second = retrigger_run(original.pk), retrigger_run(original.pk)

    assert len({original.pk, first.pk, second.pk}) == 3
    assert list(Run.objects.filter(idempotency_key__isnull=False).values_list("pk", flat=True)) == [
        original.pk
    ]


def test_retrigger__validates_against_the_current_input_schema():
    original = move_to(jobs.greet.trigger({"name": "ada"}), "completed")
    assert original.input == {"name": "ada", "times": 1}
    # The schema changed since (simulated by a stored input the current schema rejects).
    Run.objects.filter(pk=original.pk).update(input={"nom": "ada"})

    with pytest.raises(InvalidInput) as raised:
        retrigger_run(original.pk)

    assert raised.value.field == "input"
    assert "Greeting" in str(raised.value)
    assert Run.objects.count() == 1
    assert audit_trail(original.pk) == []


def test_retrigger__input_is_normalised_by_the_current_schema():
    original = move_to(jobs.greet.trigger({"name": "ada"}), "failed")
    Run.objects.filter(pk=original.pk).update(
        input={"name": "ada"}
    )  # stored before `times` existed

    new = retrigger_run(original.pk)

    assert row(new)["input"] == {"name": "ada", "times": 1}


def test_retrigger__unregistered_job_raises_job_not_found():
    original = move_to(jobs.noop.trigger(), "completed")
    Run.objects.filter(pk=original.pk).update(job_name="tests.jobs.removed")

    with pytest.raises(JobNotFound) as raised:
        retrigger_run(original.pk)

    assert raised.value.job_name == "tests.jobs.removed"
    assert Run.objects.count() == 1
    assert audit_trail(original.pk) == []


@pytest.mark.parametrize("status", ["pending", "leased"])
def test_retrigger__unfinished_run_raises_run_not_retriggerable(status):
    run = move_to(jobs.noop.trigger(), status)

    refused(retrigger_run, run, RunNotRetriggerable, status, "retriggered")

    assert Run.objects.count() == 1


def test_retrigger__pending_run_holding_the_concurrency_key_raises_pending_run_exists():
    original = move_to(jobs.per_user.trigger({"user": 3}), "failed")
    waiting = jobs.per_user.trigger({"user": 3})

    with pytest.raises(PendingRunExists) as raised:
        retrigger_run(original.pk)

    assert (raised.value.concurrency_key, raised.value.run_id) == ("user:3", waiting.pk)
    assert Run.objects.count() == 2
    assert audit_trail(original.pk) == []


def test_retrigger__with_an_idempotency_key_twice_creates_one_run(record_signals):
    original = move_to(jobs.noop.trigger(), "failed")
    retriggered = record_signals("run_retriggered")

    first = retrigger_run(original.pk, idempotency_key="click-1")
    second = retrigger_run(original.pk, idempotency_key="click-1")

    assert (first.disposition, second.disposition) == ("created", "idempotent")
    assert second.pk == first.pk
    assert Run.objects.count() == 2
    assert row(first)["idempotency_key"] == f"retrigger:{original.pk}:click-1"
    assert audit_trail(original.pk) == [("retrigger", "failed", "failed", "", "python")]
    assert [kwargs["new_run_id"] for _, kwargs, _ in retriggered] == [first.pk]


def test_retrigger__a_used_key_returns_its_run_whatever_the_original_became():
    original = move_to(jobs.noop.trigger(), "failed")
    first = retrigger_run(original.pk, idempotency_key="k")
    resume_run(original.pk)  # pending again: a fresh retrigger would be refused

    again = retrigger_run(original.pk, idempotency_key="k")

    assert (again.pk, again.disposition) == (first.pk, "idempotent")
    with pytest.raises(RunNotRetriggerable):
        retrigger_run(original.pk, idempotency_key="another")


def test_retrigger__the_same_key_on_two_runs_makes_two_runs():
    one, two = move_to(jobs.noop.trigger(), "completed"), move_to(jobs.noop.trigger(), "completed")

    from_one = retrigger_run(one.pk, idempotency_key="k")
    from_two = retrigger_run(two.pk, idempotency_key="k")

    assert from_one.pk != from_two.pk
    assert (from_one.disposition, from_two.disposition) == ("created", "created")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "idempotency_key must be a non-empty string"),
        ("x" * (operations.MAX_RETRIGGER_KEY_LENGTH + 1), "must be at most 208 characters"),
        ("nul\x00", "idempotency_key contains a NUL character"),
        (7, "idempotency_key must be a non-empty string"),
    ],
)
def test_retrigger__a_bad_idempotency_key_is_an_invalid_trigger(key, message):
    original = move_to(jobs.noop.trigger(), "completed")

    with pytest.raises(InvalidTrigger, match=message) as raised:
        retrigger_run(original.pk, idempotency_key=key)

    assert raised.value.field == "idempotency_key"
    assert Run.objects.count() == 1
    assert audit_trail(original.pk) == []


# -- delete --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", FINISHED)
def test_delete__finished_run_with_its_steps_and_logs(status):
    if status == "completed":
        run = jobs.three_steps.trigger({})
        assert process_next().status == "completed"
    else:
        run = failed_three_steps()
        if status == "cancelled":
            resume_run(run.pk)
            cancel_run(run.pk)
    assert row(run)["status"] == status
    make_log(run, message="one more line")
    assert Step.objects.filter(run_id=run.pk).exists()
    kept = jobs.three_steps.trigger({})
    process_next()
    earlier_records = AuditRecord.objects.filter(run_uuid=run.pk).count()

    result = delete_run(run.pk, actor="ops", source="admin")

    assert result == DeleteResult(run_id=run.pk, from_status=status)
    assert not Run.objects.filter(pk=run.pk).exists()
    assert not Step.objects.filter(run_id=run.pk).exists()
    assert not RunLog.objects.filter(run_id=run.pk).exists()
    # Other runs keep theirs.
    assert Step.objects.filter(run_id=kept.pk).count() == 3
    assert RunLog.objects.filter(run_id=kept.pk).count() == 1
    # The audit trail outlives the run: run is NULL, run_uuid keeps the id.
    records = AuditRecord.objects.filter(run_uuid=run.pk).order_by("id")
    assert records.count() == earlier_records + 1
    assert all(record.run_id is None for record in records)
    last = records.last()
    assert (last.action, last.from_status, last.to_status, last.actor, last.source) == (
        "delete",
        status,
        "",
        "ops",
        "admin",
    )
    assert last.job_name == "tests.three_steps"
    assert str(last) == f"delete {run.pk} by ops ({status} -> -)"


@pytest.mark.parametrize("status", ["pending", "leased"])
def test_delete__unfinished_run_raises_run_not_deletable(status):
    run = move_to(jobs.noop.trigger(), status)

    refused(delete_run, run, RunNotDeletable, status, "deleted")


# -- purge ---------------------------------------------------------------------------------------


def test_purge__deletes_only_finished_runs_older_than_the_cutoff():
    old = {
        status: move_to(
            jobs.three_steps.trigger({}), status, completed_at=timezone.now() - timedelta(days=40)
        )
        for status in FINISHED
    }
    recent = move_to(
        jobs.noop.trigger(), "completed", completed_at=timezone.now() - timedelta(days=10)
    )
    old_pending = jobs.noop.trigger(1)
    old_leased = move_to(jobs.noop.trigger(2), "leased")
    Run.objects.filter(pk__in=[old_pending.pk, old_leased.pk]).update(
        created_at=timezone.now() - timedelta(days=400)
    )
    old_ids = [run.pk for run in old.values()]
    make_step(old["completed"], name="s")
    make_log(old["failed"], message="m")

    assert purgeable_runs(timedelta(days=30)).count() == 3
    assert purge_runs(timedelta(days=30)) == 3

    assert set(Run.objects.values_list("pk", flat=True)) == {
        recent.pk,
        old_pending.pk,
        old_leased.pk,
    }
    assert not Step.objects.filter(run_id__in=old_ids).exists()
    assert not RunLog.objects.filter(run_id__in=old_ids).exists()
    # Housekeeping, not an operator action: no audit records.
    assert not AuditRecord.objects.exists()
    assert purge_runs(timedelta(days=30)) == 0


def test_purge__respects_the_limit_oldest_first():
    runs = [
        move_to(
            jobs.noop.trigger(), "completed", completed_at=timezone.now() - timedelta(days=40 + i)
        )
        for i in range(5)
    ]

    assert purge_runs(timedelta(days=30), limit=2) == 2
    assert set(Run.objects.values_list("pk", flat=True)) == {r.pk for r in runs[:3]}
    assert purge_runs(timedelta(days=30), limit=2) == 2
    assert purge_runs(timedelta(days=30), limit=2) == 1
    assert purge_runs(timedelta(days=30), limit=2) == 0
    assert not Run.objects.exists()


def test_purge__only_the_given_statuses():
    runs = {
        status: move_to(
            jobs.noop.trigger(), status, completed_at=timezone.now() - timedelta(days=40)
        )
        for status in FINISHED
    }

    assert purgeable_runs(timedelta(days=30), ["failed", "cancelled"]).count() == 2
    assert purge_runs(timedelta(days=30), statuses=["failed"]) == 1

    assert set(Run.objects.values_list("status", flat=True)) == {"completed", "cancelled"}
    assert not Run.objects.filter(pk=runs["failed"].pk).exists()


def test_purge__accepts_an_aware_cutoff_datetime():
    old = move_to(
        jobs.noop.trigger(), "completed", completed_at=timezone.now() - timedelta(hours=3)
    )
    newer = move_to(
        jobs.noop.trigger(), "completed", completed_at=timezone.now() - timedelta(hours=1)
    )

    assert purge_runs(timezone.now() - timedelta(hours=2)) == 1

    assert list(Run.objects.values_list("pk", flat=True)) == [newer.pk]
    assert old.pk != newer.pk


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "10", None])
def test_purge__bad_limit_raises_value_error(limit):
    move_to(jobs.noop.trigger(), "completed", completed_at=timezone.now() - timedelta(days=40))
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        purge_runs(timedelta(days=30), limit)
    assert Run.objects.count() == 1


@pytest.mark.parametrize(
    ("older_than", "message"),
    [
        (timezone.now().replace(tzinfo=None), "timezone-aware"),
        (30, "timedelta or a timezone-aware datetime"),
        ("30d", "timedelta or a timezone-aware datetime"),
        (None, "timedelta or a timezone-aware datetime"),
        (timedelta(days=-1), "must not be negative"),
    ],
)
def test_purge__bad_older_than_raises_value_error(older_than, message):
    move_to(jobs.noop.trigger(), "completed", completed_at=timezone.now() - timedelta(days=40))
    with pytest.raises(ValueError, match=message):
        purge_runs(older_than)
    with pytest.raises(ValueError, match=message):
        purgeable_runs(older_than)
    assert Run.objects.count() == 1


@pytest.mark.parametrize("statuses", [["pending"], ["leased", "failed"], ["nope"]])
def test_purge__unfinished_statuses_raise_value_error(statuses):
    move_to(jobs.noop.trigger(), "failed", completed_at=timezone.now() - timedelta(days=40))
    with pytest.raises(ValueError, match="only finished runs can be purged"):
        purge_runs(timedelta(days=30), statuses=statuses)
    assert Run.objects.count() == 1


# -- the audit trail -----------------------------------------------------------------------------


def test_audit__one_record_per_action_with_who_what_when_and_from_which_status(db_alias):
    user = get_user_model().objects.create_user(username="operator-ann")
    failed = failed_three_steps()

    resume_run(failed.pk, actor=user, source="admin")
    cancel_run(failed.pk, actor="cron-cleaner", source="api")
    cancel_run(failed.pk, actor="cron-cleaner", source="api")  # no-op: no record
    new = retrigger_run(failed.pk)
    delete_run(failed.pk, actor=None, source="cli")

    records = list(AuditRecord.objects.filter(run_uuid=failed.pk).order_by("id"))
    assert [
        (r.action, r.actor, r.source, r.from_status, r.to_status, r.detail) for r in records
    ] == [
        ("resume", "operator-ann", "admin", "failed", "pending", {}),
        ("cancel", "cron-cleaner", "api", "pending", "cancelled", {}),
        ("retrigger", "", "python", "cancelled", "cancelled", {"new_run_id": str(new.pk)}),
        ("delete", "", "cli", "cancelled", "", {}),
    ]
    assert {r.job_name for r in records} == {"tests.three_steps"}
    times = [r.created_at for r in records]
    assert times == sorted(times)
    assert all(t is not None for t in times)
    # Newest first by default.
    assert list(AuditRecord.objects.values_list("action", flat=True)) == [
        "delete",
        "retrigger",
        "cancel",
        "resume",
    ]


def test_audit__actor_names():
    user_model = get_user_model()
    user = user_model.objects.create_user(username="u-" + "x" * 100)
    anonymous = AnonymousUser()
    for actor, expected in [
        (user, user.get_username()),
        ("alice", "alice"),
        (None, ""),
        (anonymous, ""),
        (42, "42"),
        ("z" * 300, "z" * 255),
    ]:
        run = jobs.noop.trigger()
        cancel_run(run.pk, actor=actor)
        assert AuditRecord.objects.get(run_uuid=run.pk).actor == expected


def test_audit__records_link_to_the_run():
    run = jobs.noop.trigger()
    cancel_run(run.pk)
    record = AuditRecord.objects.get(run_uuid=run.pk)
    assert record.run_id == run.pk
    assert list(Run.objects.get(pk=run.pk).audit_records.all()) == [record]
    assert str(record) == f"cancel {run.pk} by python (pending -> cancelled)"


def test_audit__written_in_the_same_transaction_as_the_change(db_alias):
    run = jobs.noop.trigger()

    with pytest.raises(RuntimeError), transaction.atomic(using=db_alias):
        cancel_run(run.pk)
        assert audit_trail(run.pk) == [("cancel", "pending", "cancelled", "", "python")]
        raise RuntimeError("roll back the caller's transaction")

    assert row(run)["status"] == "pending"
    assert audit_trail(run.pk) == []


@pytest.mark.parametrize(
    ("operation", "status", "error"),
    [
        ("cancel", "completed", RunNotCancellable),
        ("resume", "pending", RunNotResumable),
        ("retrigger", "leased", RunNotRetriggerable),
        ("delete", "pending", RunNotDeletable),
    ],
)
def test_audit__no_record_when_the_operation_raises(operation, status, error):
    run = move_to(jobs.noop.trigger(), status)

    with pytest.raises(error):
        OPERATIONS[operation](run.pk, actor="someone")

    assert not AuditRecord.objects.exists()


# -- signals -------------------------------------------------------------------------------------

OPERATOR_SIGNALS = ("run_cancelled", "run_resumed", "run_retriggered", "run_deleted")
SIGNAL_OF = dict(zip(OPERATIONS, OPERATOR_SIGNALS, strict=True))


def status_of(name: str, kwargs: dict[str, Any]) -> Any:
    return Run.objects.filter(pk=kwargs["run_id"]).values_list("status", flat=True).first()


@pytest.fixture
def sent(record_signals: Any) -> list[Any]:
    """Operator signals sent: name, kwargs, and the run's status as another connection saw it."""
    return record_signals(*OPERATOR_SIGNALS, observe=status_of)


def test_signals__each_operation_sends_once_after_commit(sent):
    failed = failed_three_steps()
    job_name = "tests.three_steps"

    resume_run(failed.pk, actor="ann", source="admin")
    cancel_run(failed.pk, actor="bob")
    cancel_run(failed.pk)  # no-op: no signal
    new = retrigger_run(failed.pk, source="api")
    delete_run(failed.pk, actor="cy", source="cli")

    rid = failed.pk
    assert sent == [
        (
            "run_resumed",
            {
                "run_id": rid,
                "job_name": job_name,
                "from_status": "failed",
                "actor": "ann",
                "source": "admin",
            },
            "pending",
        ),
        (
            "run_cancelled",
            {
                "run_id": rid,
                "job_name": job_name,
                "from_status": "pending",
                "actor": "bob",
                "source": "python",
            },
            "cancelled",
        ),
        (
            "run_retriggered",
            {
                "run_id": rid,
                "job_name": job_name,
                "new_run_id": new.pk,
                "from_status": "cancelled",
                "actor": "",
                "source": "api",
            },
            "cancelled",
        ),
        (
            "run_deleted",
            {
                "run_id": rid,
                "job_name": job_name,
                "from_status": "cancelled",
                "actor": "cy",
                "source": "cli",
            },
            None,  # gone, as seen from another connection
        ),
    ]


def test_signals__retrigger_also_announces_the_new_run(record_signals):
    original = move_to(jobs.noop.trigger(), "completed")
    triggered = record_signals("run_triggered")

    new = retrigger_run(original.pk)

    assert [kwargs["run"].pk for _, kwargs, _ in triggered] == [new.pk]


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_signals__not_sent_inside_an_uncommitted_transaction(sent, db_alias, operation):
    run = move_to(jobs.noop.trigger(), "pending" if operation == "cancel" else "failed")

    with transaction.atomic(using=db_alias):
        OPERATIONS[operation](run.pk)
        assert sent == []

    assert [name for name, _, _ in sent] == [SIGNAL_OF[operation]]
    assert "in transaction!" not in [observed for _, _, observed in sent]


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_signals__not_sent_when_the_transaction_rolls_back(sent, db_alias, operation):
    run = move_to(jobs.noop.trigger(), "pending" if operation == "cancel" else "failed")

    with pytest.raises(RuntimeError), transaction.atomic(using=db_alias):
        OPERATIONS[operation](run.pk)
        raise RuntimeError("roll back")

    assert sent == []
    assert row(run)["status"] == ("pending" if operation == "cancel" else "failed")
    assert Run.objects.count() == 1


@pytest.mark.parametrize(
    ("operation", "status"),
    [("cancel", "completed"), ("resume", "leased"), ("retrigger", "pending"), ("delete", "leased")],
)
def test_signals__not_sent_when_the_operation_raises(sent, operation, status):
    run = move_to(jobs.noop.trigger(), status)

    with pytest.raises(RunStateError):
        OPERATIONS[operation](run.pk)

    assert sent == []


def test_signals__a_raising_receiver_does_not_undo_the_operation():
    run = jobs.noop.trigger()

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.run_cancelled.connect(broken, weak=False, dispatch_uid="ops:broken")
    try:
        result = cancel_run(run.pk)
    finally:
        signals.run_cancelled.disconnect(dispatch_uid="ops:broken")

    assert result.cancelled is True
    assert row(run)["status"] == "cancelled"


def test_operations__module_lists_its_public_names():
    for name in ("CancelResult", "ResumeResult", "DeleteResult", "purgeable_runs"):
        assert name in operations.__all__


def test_retrigger__a_planted_retrigger_key_cannot_be_triggered():
    original = move_to(jobs.noop.trigger(), "completed")
    planted = f"retrigger:{original.pk}:k"

    with pytest.raises(InvalidTrigger, match="reserves the prefixes"):
        jobs.noop.trigger("planted", idempotency_key=planted)
    retriggered = retrigger_run(original.pk, idempotency_key="k")

    assert retriggered.disposition == "created"
    assert row(retriggered)["idempotency_key"] == planted
