"""Steps executed by a real worker path (process_one) on each database: checkpoints, replay,
failures, logs, progress and output validation."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db.models.functions import Now

from django_durably import cancel_run, leases, process_next, process_one, resume_run
from django_durably.models import Run, RunLog, Step
from tests import jobs
from tests.factories import make_run, move_to

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def processed(run: Run) -> Run:
    """``run`` (the only ready run) processed once in this thread, as stored then."""
    assert process_one() is True
    run.refresh_from_db()
    return run


def ended(run: Run, status: str) -> Any:
    """Process the next ready run, ``run``: it ends ``status``, as its outcome says and as stored
    (``run`` is read back). Returns the outcome."""
    outcome = process_next()
    assert outcome is not None
    assert outcome.status == status
    run.refresh_from_db()
    assert run.status == status
    return outcome


def steps_of(run: Run) -> list[tuple[int, str, str, int]]:
    return list(
        Step.objects.filter(run_id=run.pk)
        .order_by("index", "id")
        .values_list("index", "name", "status", "attempt")
    )


# -- replay ------------------------------------------------------------------------------------


def test_replay__failed_run_resumed_never_reruns_completed_steps():
    jobs.FLAGS["fail"] = "b"
    run = jobs.three_steps.trigger({})

    assert process_one() is True

    run.refresh_from_db()
    assert run.status == "failed"
    assert run.error["type"] == "builtins.RuntimeError"
    assert run.error["message"] == "step b failed on purpose"
    assert "fail_if_flagged" in run.error["traceback"]
    assert run.completed_step_count == 1
    assert run.current_step_index == 1
    assert steps_of(run) == [(0, "a", "completed", 1), (1, "b", "failed", 1)]
    failed = Step.objects.get(run_id=run.pk, name="b")
    assert failed.error["type"] == "builtins.RuntimeError"
    assert failed.error["message"] == "step b failed on purpose"
    assert "Traceback" in failed.error["traceback"]
    assert failed.output is None
    assert Step.objects.get(run_id=run.pk, name="a").output == 1
    assert jobs.CALLS == {"a": 1, "b": 1}

    resume_run(run.pk)
    del jobs.FLAGS["fail"]
    assert process_one() is True

    run.refresh_from_db()
    assert run.status == "completed", run.error
    assert run.attempt == 2
    assert run.output == {"a": 1, "b": "b", "c": [1, "b"]}
    assert jobs.CALLS == {"a": 1, "b": 2, "c": 1}  # "a" was replayed, not re-run
    assert steps_of(run) == [
        (0, "a", "completed", 1),
        (1, "b", "failed", 1),
        (1, "b", "completed", 2),
        (2, "c", "completed", 2),
    ]
    for name in ("a", "b", "c"):
        assert Step.objects.filter(run_id=run.pk, name=name, status="completed").count() == 1
    assert run.completed_step_count == 3
    assert run.current_step_index == 3


def test_replay__completed_run_resumed_again_runs_no_step():
    run = jobs.three_steps.trigger({})
    process_one()
    # A completed run cannot be resumed; force it back to check that even then replay holds.
    move_to(run, "pending")

    assert process_one() is True

    run.refresh_from_db()
    assert run.status == "completed"
    assert run.attempt == 2
    assert jobs.CALLS == {"a": 1, "b": 1, "c": 1}
    assert Step.objects.filter(run_id=run.pk).count() == 3


def test_step_index__counts_every_step_reached():
    run = processed(jobs.three_steps.trigger({}))

    assert steps_of(run) == [
        (0, "a", "completed", 1),
        (1, "b", "completed", 1),
        (2, "c", "completed", 1),
    ]
    assert run.current_step_index == 3
    assert run.completed_step_count == 3


def test_step_times__a_step_never_finishes_before_it_started():
    jobs.FLAGS["fail"] = "b"
    run = jobs.three_steps.trigger({})

    process_one()

    steps = list(Step.objects.filter(run_id=run.pk))
    assert [step.status for step in steps] == ["completed", "failed"]
    for step in steps:
        assert step.started_at <= step.completed_at, step
        assert step.duration_seconds >= 0


# -- logs and progress -------------------------------------------------------------------------


def test_logs_and_progress__are_stored_with_the_run():
    run = processed(jobs.logs_and_progress.trigger())

    assert run.status == "completed", run.error
    assert run.progress == {"current": 2, "total": 2, "message": "all done"}
    lines = list(RunLog.objects.filter(run_id=run.pk).order_by("id"))
    assert [(line.level, line.message, line.step_name, line.data) for line in lines] == [
        ("warning", "careful", "", {"weird": "{1, 2}"}),
        ("error", "inside", "inner", {"n": 1}),
    ]
    assert all(line.attempt == 1 for line in lines)


def test_logs_and_progress__three_steps_logs_outside_steps():
    run = processed(jobs.three_steps.trigger({}))

    assert run.progress == {"current": 3, "total": 3, "message": "done"}
    [line] = RunLog.objects.filter(run_id=run.pk)
    assert (line.level, line.message, line.data) == ("info", "finished", {"a": 1, "b": "b"})


# -- output and input --------------------------------------------------------------------------


def test_output__failing_the_output_schema_fails_the_run():
    run = jobs.bad_output.trigger()

    outcome = ended(run, "failed")

    assert run.output is None
    assert run.error["type"] == "django_durably.exceptions.OutputInvalid"
    assert "does not match GreetingOut" in run.error["message"]
    assert "text" in run.error["message"]
    assert outcome.error == run.error


def test_output__non_json_output_fails_the_run():
    run = processed(jobs.non_json_output.trigger())

    assert run.status == "failed"
    assert run.error["type"] == "django_durably.exceptions.OutputInvalid"
    assert "JSON-serializable" in run.error["message"]


def test_output__non_json_step_output_fails_the_step_and_the_run():
    run = processed(jobs.non_json_step.trigger())

    assert run.status == "failed"
    assert run.error["type"] == "django_durably.exceptions.NotJSONSerializable"
    assert "Output of step 'bad'" in run.error["message"]
    [step] = Step.objects.filter(run_id=run.pk)
    assert (step.name, step.status) == ("bad", "failed")
    assert step.error["type"] == "django_durably.exceptions.NotJSONSerializable"
    assert run.completed_step_count == 0


def test_output__pydantic_input_and_output():
    run = processed(jobs.greet.trigger({"name": "ada", "times": 2}))

    assert run.status == "completed", run.error
    assert run.input == {"name": "ada", "times": 2}
    assert run.output == {"text": "hello ada hello ada"}
    assert Step.objects.get(run_id=run.pk, name="compose").output == "hello ada hello ada"


# -- the job itself ----------------------------------------------------------------------------


def test_unknown_job__run_fails_with_job_not_found():
    run = make_run(job_name="gone.job")

    ended(run, "failed")

    assert run.error["type"] == "django_durably.exceptions.JobNotFound"
    assert "'gone.job'" in run.error["message"]
    assert not Step.objects.filter(run_id=run.pk).exists()


def test_interrupts__except_exception_cannot_swallow_a_cancel(on_signal):
    run = jobs.swallows_interrupts.trigger()

    def cancel_after_first_step(sender, *, run_id, step_name, **kwargs):
        if run_id == run.pk and step_name == "s0":
            cancel_run(run_id)

    on_signal("step_completed", cancel_after_first_step)
    ended(run, "cancelled")

    assert run.output is None
    assert jobs.CALLS["swallowed"] == 0  # the job's `except Exception` never saw JobCancelled
    assert jobs.CALLS["swallow:2"] == 0
    assert list(Step.objects.filter(run_id=run.pk).values_list("name", "status")) == [
        ("s0", "completed")
    ]


def test_interrupts__except_exception_cannot_swallow_a_lost_lease(on_signal):
    run = jobs.swallows_interrupts.trigger()

    def steal_after_first_step(sender, *, run_id, step_name, **kwargs):
        if run_id == run.pk and step_name == "s0":
            Run.objects.filter(pk=run_id).update(lease_expires_at=Now())
            assert [r.pk for r in leases.claim(worker_id="thief")] == [run_id]

    on_signal("step_completed", steal_after_first_step)
    outcome = process_next()

    assert outcome is not None
    assert outcome.status == "lost"
    run.refresh_from_db()
    assert run.status == "leased"
    assert run.lease_owner == "thief"
    assert run.lease_generation == 2
    assert jobs.CALLS["swallowed"] == 0
    assert jobs.CALLS["swallow:2"] == 0


def test_keyboard_interrupt__propagates_and_hands_the_run_back():
    run = jobs.raises_keyboard_interrupt.trigger()

    with pytest.raises(KeyboardInterrupt):
        process_one(worker_id="first")

    run.refresh_from_db()
    assert run.status == "leased"  # still leased, but the lease has ended
    assert Run.objects.filter(pk=run.pk).expired().exists()
    assert run.error is None
    assert jobs.CALLS["before-interrupt"] == 1
    [again] = leases.claim(worker_id="second")
    assert again.pk == run.pk
    assert again.lease_generation == run.lease_generation + 1
    assert again.attempt == 2
    assert again.lease_owner == "second"


def test_keyboard_interrupt__other_runs_are_untouched():
    other = jobs.noop.trigger(1, priority=-1)
    jobs.raises_keyboard_interrupt.trigger()

    with pytest.raises(KeyboardInterrupt):
        process_one()

    other.refresh_from_db()
    assert other.status == "pending"
    assert Run.objects.filter(pk=uuid.uuid4()).count() == 0
