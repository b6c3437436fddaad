"""Durable waits, tested against their contract (DESIGN.md sections 3 and 7) on each database.

``step.sleep`` / ``step.sleep_until``, ``step.wait_for_signal`` and ``step.trigger`` +
``step.wait_for_runs`` checkpoint what they wait for, release the lease and unwind the job: the run is
``waiting`` (no lease, no worker) until its timer is due, its signal arrives or its last child ends;
then it is ``pending`` again and replays up to the wait, which returns. Signals are stored (so one sent
before the wait is not lost), consumed oldest first, idempotent per key. Cancel applies to waiting
runs, resume does not, and waits are not failed attempts.

Time is real: sleeps and timeouts are a second or two, and every wait for a condition polls with a
deadline. The jobs are in ``tests/wait_jobs.py``; ``tests.jobs.CALLS`` counts what they ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from django.db.models.functions import Now
from django.utils import timezone

from django_durably import (
    RunNotFound,
    RunNotResumable,
    cancel_run,
    process_next,
    process_one,
    process_until_idle,
    resume_run,
)
from django_durably.exceptions import (
    ChildRunFailed,
    ChildRunsTimeout,
    DurableWaitTimeout,
    InvalidValue,
    InvalidWait,
    RunNotWaiting,
    RunWaiting,
    SignalTimeout,
)
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
from django_durably.waits import send_signal
from tests import jobs, wait_jobs
from tests.acceptance.processes import Workers, completed_by, wait_for
from tests.concurrency import at_once, start, wait_event, wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

TERMINAL = {"completed", "failed", "cancelled"}
FAST_WORKER = ("--lease-seconds", "2", "--poll-interval", "0.1")


@pytest.fixture(autouse=True)
def _on_each_database(db_alias: str) -> str:
    return db_alias


# -- helpers ---------------------------------------------------------------------------------------


def stored(run: Run | UUID | str) -> Run:
    return Run.objects.get(pk=getattr(run, "pk", run))


def db_now() -> datetime:
    """The database clock (what wake times are compared with)."""
    now = Run.objects.annotate(now=Now()).values_list("now", flat=True).first()
    assert now is not None, "db_now() needs a run to read the clock through"
    return now


def process_until(
    run: Run, reached: Callable[[Run], bool], *, what: str, timeout: float = 15
) -> Run:
    """Call ``process_until_idle()`` until ``reached(stored run)`` (deadline ``timeout``); fail at
    once if the run ended in a status ``reached`` does not accept."""

    def check() -> Run | None:
        process_until_idle()
        current = stored(run)
        if reached(current):
            return current
        if current.status in TERMINAL:
            raise AssertionError(
                f"run {run.pk} ended {current.status} (error {current.error}) "
                f"while waiting for it to be {what}"
            )
        return None

    result: Run = wait_until(check, timeout=timeout, interval=0.05, what=f"run {run.pk} {what}")
    return result


def process_until_status(run: Run, status: str, *, timeout: float = 15) -> Run:
    return process_until(run, lambda r: r.status == status, what=status, timeout=timeout)


def waits(run: Run, outcome_status: str = "waiting") -> Run:
    """Process ``run`` once (it must be the ready one) and check the attempt ended as a wait."""
    outcome = process_next()
    assert outcome is not None
    assert (outcome.run_id, outcome.status) == (run.pk, outcome_status), outcome
    return stored(run)


def assert_waiting_without_lease(run: Run) -> None:
    assert run.status == RunStatus.WAITING
    assert run.lease_owner == ""
    assert run.lease_expires_at is None
    assert run.waiting_for is not None


def subset(mapping: dict[str, Any] | None, expected: dict[str, Any]) -> dict[str, Any]:
    assert mapping is not None
    return {key: mapping.get(key) for key in expected}


def waiting_attempts(run: Run) -> int:
    return RunAttempt.objects.filter(run=run.pk, outcome=AttemptOutcome.WAITING).count()


def children_of(parent: Run) -> list[Run]:
    return list(Run.objects.filter(parent=parent.pk).order_by("created_at", "id"))


def n_of(child: Run) -> int:
    """The index ``n`` a ``tests.wait_jobs.child`` run was triggered with."""
    assert isinstance(child.input, dict)
    return int(child.input["n"])


def child_by_n(parent: Run, n: int) -> Run:
    (found,) = [c for c in children_of(parent) if n_of(c) == n]
    return found


# -- public names ----------------------------------------------------------------------------------


def test_public_names__waits_api_is_exported():
    import django_durably

    assert django_durably.send_signal is send_signal
    for name, cls in [
        ("RunNotWaiting", RunNotWaiting),
        ("SignalTimeout", SignalTimeout),
        ("ChildRunsTimeout", ChildRunsTimeout),
        ("ChildRunFailed", ChildRunFailed),
        ("InvalidWait", InvalidWait),
    ]:
        assert getattr(django_durably, name) is cls, name
    assert issubclass(SignalTimeout, DurableWaitTimeout)
    assert issubclass(ChildRunsTimeout, DurableWaitTimeout)
    # The wait unwinds the job as a BaseException: a job's `except Exception` cannot swallow it.
    assert issubclass(RunWaiting, BaseException)
    assert not issubclass(RunWaiting, Exception)


# -- sleep -----------------------------------------------------------------------------------------


def test_sleep__run_waits_with_wake_at_and_no_lease_holding_no_worker():
    run = wait_jobs.sleeper.trigger({"seconds": 60})
    before = timezone.now()

    sleeping = waits(run)

    assert_waiting_without_lease(sleeping)
    assert sleeping.wake_at is not None
    assert (
        before + timedelta(seconds=55) < sleeping.wake_at < timezone.now() + timedelta(seconds=65)
    )
    assert subset(sleeping.waiting_for, {"kind": "sleep", "step": "nap"}) == {
        "kind": "sleep",
        "step": "nap",
    }
    assert sleeping.waiting_for is not None
    assert datetime.fromisoformat(sleeping.waiting_for["until"]) == sleeping.wake_at
    record = Step.objects.get(run=run.pk, name="nap", status=StepStatus.WAITING)
    assert record.output == sleeping.waiting_for
    assert list(Run.objects.waiting()) == [sleeping]
    assert waiting_attempts(run) == 1

    # Holds no worker: other work goes through and the sleeper is not claimable.
    other = jobs.noop.trigger("other work")
    started = time.monotonic()
    assert process_until_idle() == 1
    assert time.monotonic() - started < 10
    assert stored(other).status == "completed"
    assert process_one() is False
    assert stored(run).status == RunStatus.WAITING
    assert jobs.CALLS["sleeper:after"] == 0


def test_sleep__completes_after_its_time_and_is_not_repeated_on_replay():
    run = wait_jobs.sleeper.trigger({"seconds": 1.5})
    sleeping = waits(run)
    wake_at = sleeping.wake_at
    assert wake_at is not None

    done = process_until_status(run, "completed")

    assert done.output == "rested"
    assert done.completed_at is not None and done.completed_at >= wake_at
    assert jobs.CALLS["sleeper:before"] == 1  # replayed, never re-run
    assert jobs.CALLS["sleeper:after"] == 1
    assert jobs.CALLS["sleeper:continued"] == 1  # the sleep returned once
    assert jobs.CALLS["sleeper:body"] == 2  # the job was entered again (a replay) after the sleep
    assert waiting_attempts(run) == 1  # slept once, not again on replay
    assert (done.wake_at, done.waiting_for) == (None, None)
    assert (done.failed_attempts, done.error) == (0, None)


def test_sleep_until__wakes_at_the_given_time():
    until = timezone.now() + timedelta(seconds=1.5)
    run = wait_jobs.sleeps_until.trigger({"until": until.isoformat()})

    sleeping = waits(run)

    assert_waiting_without_lease(sleeping)
    assert sleeping.wake_at == until
    assert subset(sleeping.waiting_for, {"kind": "sleep", "step": "alarm"}) == {
        "kind": "sleep",
        "step": "alarm",
    }
    done = process_until_status(run, "completed")
    assert done.output == "awake"
    assert done.completed_at is not None and done.completed_at >= until
    assert jobs.CALLS["sleeps_until:continued"] == 1


def test_sleep_until__a_naive_datetime_is_an_invalid_wait():
    naive = (timezone.now() + timedelta(seconds=60)).replace(tzinfo=None)
    run = wait_jobs.sleeps_until.trigger({"until": naive.isoformat()})

    process_until_idle()

    failed = stored(run)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error["type"] == "django_durably.exceptions.InvalidWait"


def test_sleep__wake_time_is_kept_across_cancel_and_resume():
    run = wait_jobs.sleeper.trigger({"seconds": 30})
    wake_at = waits(run).wake_at

    cancelled = cancel_run(run.pk)
    assert (cancelled.cancelled, cancelled.from_status) == (True, "waiting")
    resume_run(run.pk)
    again = waits(run)

    assert_waiting_without_lease(again)
    assert again.wake_at == wake_at  # computed once: the resumed run does not sleep 30 s more
    assert jobs.CALLS["sleeper:before"] == 1
    assert jobs.CALLS["sleeper:after"] == 0


def test_sleep__resumed_after_its_wake_time_completes_without_sleeping_again():
    run = wait_jobs.sleeper.trigger({"seconds": 1})
    wake_at = waits(run).wake_at
    assert wake_at is not None
    cancel_run(run.pk)
    wait_until(lambda: db_now() > wake_at, timeout=10, what="the original wake time to pass")

    resume_run(run.pk)
    outcome = process_next()

    assert outcome is not None and outcome.status == "completed"  # no second sleep
    done = stored(run)
    assert (done.status, done.output) == ("completed", "rested")
    assert jobs.CALLS["sleeper:before"] == 1
    assert jobs.CALLS["sleeper:after"] == 1
    assert waiting_attempts(run) == 1


# -- signals ---------------------------------------------------------------------------------------


def test_signal__wait_makes_the_run_waiting_and_send_signal_wakes_it_with_the_payload():
    run = wait_jobs.awaits_signal.trigger(None)
    payload = {"user": "ada", "items": [1, 2, {"deep": None}]}

    waiting = waits(run)

    assert_waiting_without_lease(waiting)
    assert waiting.wake_at is None  # no deadline
    expected = {"kind": "signal", "step": "approval", "signal": "approval", "until": None}
    assert subset(waiting.waiting_for, expected) == expected
    assert process_one() is False

    result = send_signal(run.pk, "approval", payload)

    assert (result.run_id, result.name, result.created, result.woke) == (
        run.pk,
        "approval",
        True,
        True,
    )
    assert result.run_status == "pending"
    assert isinstance(result.signal_id, int)
    woken = stored(run)
    assert woken.status == RunStatus.PENDING
    assert subset(woken.waiting_for, {"kind": "signal"}) == {"kind": "signal"}  # until it returns
    assert process_until_idle() == 1
    done = stored(run)
    assert (done.status, done.output) == ("completed", payload)
    assert done.waiting_for is None
    assert jobs.CALLS["awaits_signal:before"] == 1
    assert jobs.CALLS["awaits_signal:after"] == 1
    assert jobs.CALLS["awaits_signal:continued"] == 1
    signal = Signal.objects.get(run=run.pk)
    assert (signal.pk, signal.name, signal.payload) == (result.signal_id, "approval", payload)
    assert signal.is_consumed and signal.consumed_at is not None
    assert (signal.consumed_by_step, signal.source) == ("approval", "python")
    assert AuditRecord.objects.filter(run_uuid=run.pk, action="signal").count() == 1


def test_signal__sent_before_the_wait_is_consumed_without_waiting():
    run = wait_jobs.awaits_signal.trigger(None)

    result = send_signal(run.pk, "approval", {"early": True})

    assert (result.created, result.woke, result.run_status) == (True, False, "pending")
    outcome = process_next()
    assert outcome is not None and outcome.status == "completed"
    done = stored(run)
    assert (done.status, done.output) == ("completed", {"early": True})
    assert waiting_attempts(run) == 0
    assert Signal.objects.get(run=run.pk).is_consumed


def test_signal__sent_while_the_run_is_running_is_consumed_without_waiting(gates):
    gate, entered = gates("signal-gate")
    run = wait_jobs.gate_then_signal.trigger(None)
    worker = start(process_next)
    wait_event(entered, what="the job to hold at its gate")

    result = send_signal(run.pk, "approval", "while running")

    assert (result.created, result.woke, result.run_status) == (True, False, "leased")
    gate.set()
    outcome = worker.outcome()
    assert outcome is not None and outcome.status == "completed"
    assert stored(run).output == "while running"
    assert waiting_attempts(run) == 0


def test_signal__two_of_one_name_are_consumed_oldest_first_by_two_waits():
    run = wait_jobs.awaits_two_items.trigger(None)
    send_signal(run.pk, "item", {"n": 1})

    waiting = waits(run)  # the first wait consumed the early signal; the second waits

    expected = {"kind": "signal", "step": "second", "signal": "item"}
    assert subset(waiting.waiting_for, expected) == expected
    send_signal(run.pk, "item", {"n": 2})
    send_signal(run.pk, "item", {"n": 3})
    done = process_until_status(run, "completed")
    assert done.output == [{"n": 1}, {"n": 2}]
    consumed = [
        (s.payload["n"], s.consumed_by_step)
        for s in Signal.objects.filter(run=run.pk).order_by("id")
    ]
    assert consumed == [(1, "first"), (2, "second"), (3, "")]
    assert not Signal.objects.get(run=run.pk, payload__n=3).is_consumed


def test_signal__several_sent_before_any_wait_are_consumed_oldest_first():
    run = wait_jobs.awaits_two_items.trigger(None)
    for n in (1, 2, 3):
        send_signal(run.pk, "item", {"n": n})

    outcome = process_next()

    assert outcome is not None and outcome.status == "completed"
    assert stored(run).output == [{"n": 1}, {"n": 2}]
    assert [s.is_consumed for s in Signal.objects.filter(run=run.pk).order_by("id")] == [
        True,
        True,
        False,
    ]


def test_signal__a_duplicate_idempotency_key_is_stored_once():
    run = wait_jobs.awaits_signal.trigger(None)
    waits(run)

    first = send_signal(run.pk, "approval", {"v": 1}, idempotency_key="approve-42")
    second = send_signal(run.pk, "approval", {"v": 2}, idempotency_key="approve-42")

    assert (first.created, first.woke) == (True, True)
    assert second.created is False
    assert second.signal_id == first.signal_id
    assert Signal.objects.filter(run=run.pk).count() == 1
    assert Signal.objects.get(run=run.pk).payload == {"v": 1}
    done = process_until_status(run, "completed")
    assert done.output == {"v": 1}


@pytest.mark.parametrize("finished", ["completed", "failed", "cancelled"])
def test_signal__to_a_finished_run_raises_run_not_waiting(finished):
    if finished == "completed":
        run = jobs.noop.trigger(None)
        process_until_idle()
    elif finished == "failed":
        jobs.FLAGS["fail"] = "b"
        run = jobs.three_steps.trigger({})
        process_until_idle()
    else:
        run = jobs.noop.trigger(None)
        cancel_run(run.pk)
    assert stored(run).status == finished

    with pytest.raises(RunNotWaiting) as raised:
        send_signal(run.pk, "approval", {"late": True})

    assert (raised.value.run_id, raised.value.status) == (run.pk, finished)
    assert not Signal.objects.filter(run=run.pk).exists()


def test_signal__to_an_unknown_run_raises_run_not_found():
    with pytest.raises(RunNotFound):
        send_signal(UUID(int=42), "approval")


@pytest.mark.parametrize(
    ("name", "payload", "key"),
    [
        ("", None, None),
        ("x" * 256, None, None),
        (42, None, None),
        ("approval", {1, 2}, None),
        ("approval", None, ""),
        ("approval", None, "k" * 256),
    ],
    ids=["empty-name", "long-name", "name-not-str", "payload-not-json", "empty-key", "long-key"],
)
def test_signal__bad_values_are_refused_and_nothing_is_stored(name, payload, key):
    run = wait_jobs.awaits_signal.trigger(None)

    with pytest.raises(InvalidValue):
        send_signal(run.pk, name, payload, idempotency_key=key)

    assert not Signal.objects.filter(run=run.pk).exists()


def test_signal__signal_sent_is_sent_after_the_signal_is_committed(on_signal):
    run = wait_jobs.awaits_signal.trigger(None)
    waits(run)
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        kwargs.pop("signal")
        # What another connection sees at that moment: the stored signal and the woken run.
        kwargs["seen"] = start(
            lambda: (
                Signal.objects.filter(pk=kwargs["signal_id"]).exists(),
                stored(run).status,
            )
        ).outcome()
        received.append(kwargs)

    on_signal("signal_sent", receiver)

    result = send_signal(run.pk, "approval", "go", actor="ops@example.com")

    (event,) = received
    assert subset(
        event, {"run_id": run.pk, "job_name": "tests.wait_jobs.awaits_signal", "name": "approval"}
    ) == {"run_id": run.pk, "job_name": "tests.wait_jobs.awaits_signal", "name": "approval"}
    assert (event["signal_id"], event["woke"], event["source"]) == (
        result.signal_id,
        True,
        "python",
    )
    assert event["seen"] == (True, "pending")


def test_signal__timeout_is_raised_at_the_deadline_and_can_be_caught():
    run = wait_jobs.signal_or_fallback.trigger({"timeout": 1.5})
    before = timezone.now()

    waiting = waits(run)

    assert_waiting_without_lease(waiting)
    assert waiting.wake_at is not None
    assert waiting.wake_at > before + timedelta(seconds=1)
    assert waiting.waiting_for is not None
    assert waiting.waiting_for["until"] is not None
    assert datetime.fromisoformat(waiting.waiting_for["until"]) == waiting.wake_at
    done = process_until_status(run, "completed")
    assert done.output == "fallback"
    assert done.completed_at is not None and done.completed_at >= waiting.wake_at
    assert jobs.CALLS["signal_or_fallback:timed_out"] == 1


def test_signal__an_uncaught_timeout_fails_the_run():
    run = wait_jobs.signal_or_fallback.trigger({"timeout": 1, "catch": False})
    waits(run)

    failed = process_until_status(run, "failed")

    assert failed.error is not None
    assert failed.error["type"] == "django_durably.exceptions.SignalTimeout"


def test_signal__arriving_before_the_timeout_wins():
    run = wait_jobs.signal_or_fallback.trigger({"timeout": 60})
    waits(run)

    assert send_signal(run.pk, "approval", "in time").woke
    outcome = process_next()

    assert outcome is not None and outcome.status == "completed"
    assert stored(run).output == "in time"
    assert jobs.CALLS["signal_or_fallback:timed_out"] == 0


def test_signal__a_job_catching_exception_around_a_wait_still_waits():
    run = wait_jobs.swallows_waits.trigger(None)

    waiting = waits(run)

    assert_waiting_without_lease(waiting)
    assert jobs.CALLS["swallows_waits:swallowed"] == 0
    send_signal(run.pk, "approval", "ok")
    assert process_until_status(run, "completed").output == "ok"


# -- child runs ------------------------------------------------------------------------------------


def test_children__created_once_with_parent_and_labels_outputs_in_order():
    parent = wait_jobs.fans_out.trigger({"count": 3, "reverse": True}, labels={"tenant": "acme"})

    waiting = waits(parent)

    assert_waiting_without_lease(waiting)
    assert waiting.wake_at is None
    assert subset(waiting.waiting_for, {"kind": "runs", "step": "fan-in", "until": None}) == {
        "kind": "runs",
        "step": "fan-in",
        "until": None,
    }
    children = children_of(parent)
    assert len(children) == 3
    assert all(c.parent_id == parent.pk for c in children)
    assert all(c.labels == {"tenant": "acme"} for c in children)  # inherited
    assert {c.job_name for c in children} == {"tests.wait_jobs.child"}
    assert waiting.waiting_for is not None
    awaited = waiting.waiting_for["runs"]
    assert sorted(awaited) == sorted(str(c.pk) for c in children)

    done = process_until_status(parent, "completed")

    assert Run.objects.filter(parent=parent.pk).count() == 3  # the replay created none
    assert jobs.CALLS["fans_out:body"] >= 2  # it did replay
    assert done.output["children"] == list(reversed(awaited))  # the same ids on replay
    by_id = {str(c.pk): n_of(c) for c in children}
    assert done.output["outputs"] == [by_id[i] * 10 for i in awaited]  # in the order awaited
    assert done.output["outputs"] == [20, 10, 0]
    assert jobs.CALLS["fans_out:continued"] == 1
    assert all(stored(c).status == "completed" for c in children)


def test_children__given_labels_replace_the_inherited_ones():
    parent = wait_jobs.fans_out.trigger(
        {"count": 2, "options": {"labels": {"tenant": "other"}}}, labels={"tenant": "acme"}
    )

    waits(parent)

    assert [c.labels for c in children_of(parent)] == [{"tenant": "other"}] * 2
    assert process_until_status(parent, "completed").output["outputs"] == [0, 10]


def test_children__a_single_input_gives_one_id():
    parent = wait_jobs.triggers_one.trigger(None)

    done = process_until_status(parent, "completed")

    (only,) = children_of(parent)
    assert done.output == {"child": str(only.pk), "outputs": [70]}


def test_children__a_failed_child_fails_the_parent_naming_it():
    parent = wait_jobs.fans_out.trigger({"count": 2, "fail": [1]})

    failed = process_until_status(parent, "failed")

    bad, good = child_by_n(parent, 1), child_by_n(parent, 0)
    assert (stored(bad).status, stored(good).status) == ("failed", "completed")
    assert failed.error is not None
    assert failed.error["type"] == "django_durably.exceptions.ChildRunFailed"
    assert str(bad.pk) in failed.error["message"]
    assert str(good.pk) not in failed.error["message"]


def test_children__the_parent_can_catch_child_run_failed():
    parent = wait_jobs.fans_out.trigger({"count": 3, "fail": [0, 2], "catch": True})

    done = process_until_status(parent, "completed")

    assert done.output["failed"] == {
        str(child_by_n(parent, 0).pk): "failed",
        str(child_by_n(parent, 2).pk): "failed",
    }


def test_children__a_cancelled_child_is_reported_as_cancelled():
    parent = wait_jobs.fans_out.trigger({"count": 2, "children_wait": True, "catch": True})
    waits(parent)
    process_until(
        parent,
        lambda _: all(c.status == "waiting" for c in children_of(parent)),
        what="with both children waiting",
    )

    cancel_run(child_by_n(parent, 0).pk)
    send_signal(child_by_n(parent, 1).pk, "go", "went")
    done = process_until_status(parent, "completed")

    assert done.output["failed"] == {str(child_by_n(parent, 0).pk): "cancelled"}


def test_children__cancelling_the_parent_cancels_its_unfinished_children():
    parent = wait_jobs.fans_out.trigger({"count": 3})
    waits(parent)
    assert process_one()  # one child runs to completion, two stay pending
    (finished,) = [c for c in children_of(parent) if c.status == "completed"]

    result = cancel_run(parent.pk)

    assert (result.cancelled, result.from_status) == (True, "waiting")
    assert stored(parent).status == "cancelled"
    wait_until(
        lambda: (
            sorted(c.status for c in children_of(parent)) == ["cancelled", "cancelled", "completed"]
        ),
        timeout=5,
        what="the unfinished children to be cancelled",
    )
    assert stored(finished).status == "completed"
    assert process_one() is False


def test_children__cancelling_the_parent_cancels_its_waiting_children():
    parent = wait_jobs.fans_out.trigger({"count": 3, "children_wait": True})
    waits(parent)
    process_until(
        parent,
        lambda _: all(c.status == "waiting" for c in children_of(parent)),
        what="with its children waiting",
    )
    send_signal(child_by_n(parent, 0).pk, "go", "went")
    assert process_one()
    assert stored(child_by_n(parent, 0)).status == "completed"

    cancel_run(parent.pk)

    wait_until(
        lambda: (
            [c.status for c in sorted(children_of(parent), key=n_of)]
            == ["completed", "cancelled", "cancelled"]
        ),
        timeout=5,
        what="the waiting children to be cancelled",
    )


def test_children__the_last_child_ending_makes_the_parent_pending_at_once():
    parent = wait_jobs.fans_out.trigger({"count": 2})
    waits(parent)

    assert process_one()  # the first child
    assert stored(parent).status == "waiting"
    assert process_one()  # the last child

    woken = stored(parent)
    assert woken.status == "pending"
    assert woken.wake_at is None or woken.wake_at <= db_now()
    outcome = process_next()
    assert outcome is not None and (outcome.run_id, outcome.status) == (parent.pk, "completed")
    assert stored(parent).output["outputs"] == [0, 10]


def test_children__wait_for_runs_times_out_at_its_deadline():
    parent = wait_jobs.fans_out.trigger({"count": 2, "children_wait": True, "timeout": 1.5})

    waiting = waits(parent)

    assert waiting.wake_at is not None
    assert waiting.waiting_for is not None and waiting.waiting_for["until"] is not None
    assert datetime.fromisoformat(waiting.waiting_for["until"]) == waiting.wake_at
    done = process_until_status(parent, "completed")
    assert done.output["timed_out"] is True
    assert done.completed_at is not None and done.completed_at >= waiting.wake_at
    assert jobs.CALLS["fans_out:continued"] == 0


def test_children__waiting_for_a_run_that_is_not_a_child_is_invalid():
    stranger = jobs.noop.trigger("not your child")
    run = wait_jobs.waits_for_a_stranger.trigger({"run_id": str(stranger.pk)})

    process_until_idle()

    failed = stored(run)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error["type"] == "django_durably.exceptions.InvalidWait"


# -- cancel, resume, attempts ----------------------------------------------------------------------


def test_cancel__applies_to_a_waiting_run():
    run = wait_jobs.awaits_signal.trigger(None)
    waits(run)

    result = cancel_run(run.pk)

    assert (result.cancelled, result.from_status) == (True, "waiting")
    cancelled = stored(run)
    assert cancelled.status == "cancelled"
    assert (cancelled.lease_owner, cancelled.lease_expires_at) == ("", None)
    assert process_one() is False
    with pytest.raises(RunNotWaiting):
        send_signal(run.pk, "approval")


def test_resume__does_not_apply_to_a_waiting_run():
    run = wait_jobs.awaits_signal.trigger(None)
    waits(run)

    with pytest.raises(RunNotResumable) as raised:
        resume_run(run.pk)

    assert raised.value.status == "waiting"
    assert stored(run).status == "waiting"


def test_waits_do_not_count_as_failed_attempts():
    run = wait_jobs.waits_everywhere.trigger(None)  # Retry(max_attempts=1)
    waits(run)  # the sleep
    process_until(
        run,
        lambda r: r.status == "waiting" and (r.waiting_for or {}).get("kind") == "signal",
        what="waiting for its signal",
    )
    assert stored(run).failed_attempts == 0
    send_signal(run.pk, "approval", "yes")

    done = process_until_status(run, "completed")

    assert done.output == {"payload": "yes", "outputs": [10, 20]}
    assert (done.failed_attempts, done.error) == (0, None)
    outcomes = [a.outcome for a in done.attempt_history()]
    assert outcomes[-1] == AttemptOutcome.COMPLETED
    assert set(outcomes[:-1]) == {AttemptOutcome.WAITING}
    assert len(outcomes) >= 4  # sleep, signal, children, then the completing attempt


# -- real worker processes -------------------------------------------------------------------------


@pytest.mark.slow
def test_worker__a_run_waiting_for_a_signal_is_woken_by_send_signal_and_completed(
    workers: Workers,
):
    worker = workers.start(*FAST_WORKER, "--worker-id", "signalled")
    run = wait_jobs.awaits_signal.trigger(None)
    wait_for(
        lambda: stored(run).status == "waiting",
        timeout=30,
        what="the worker to run the job up to its wait",
        workers=[worker],
    )
    assert_waiting_without_lease(stored(run))

    result = send_signal(run.pk, "approval", {"from": "the test process"})

    assert result.woke
    done = completed_by(worker, run, timeout=30, what="the worker to finish the signalled run")
    assert done.output == {"from": "the test process"}
    assert Step.objects.filter(run=run.pk, name="before", status="completed").count() == 1
    assert worker.alive()


@pytest.mark.slow
def test_worker__a_sleeping_run_is_completed_after_its_timer(workers: Workers):
    worker = workers.start(*FAST_WORKER, "--worker-id", "sleepy")
    run = wait_jobs.sleeper.trigger({"seconds": 1.5})
    sleeping = wait_for(
        lambda: (r := stored(run)).status == "waiting" and r,
        timeout=30,
        what="the worker to run the job up to its sleep",
        workers=[worker],
    )
    assert_waiting_without_lease(sleeping)
    assert sleeping.wake_at is not None

    done = completed_by(worker, run, timeout=30, what="the worker to finish the sleeping run")

    assert done.output == "rested"
    assert done.completed_at is not None and done.completed_at >= sleeping.wake_at
    assert waiting_attempts(run) == 1
    for name in ("before", "after"):
        assert Step.objects.filter(run=run.pk, name=name, status="completed").count() == 1


# -- races (real threads) --------------------------------------------------------------------------

RACE_TRIALS = 24


def _signal_race_trial(n: int, delay: float) -> tuple[bool, Any]:
    """One trial: a worker thread runs a fresh ``awaits_signal`` run up to its wait while another
    thread sends its signal ``delay`` seconds after both were released. Then the run must complete
    with that signal's payload: a signal that lands while the job unwinds into waiting is not
    lost. Returns whether the worker thread claimed the run, and the ``SignalResult``."""
    run = wait_jobs.awaits_signal.trigger(None)

    def send_after() -> Any:
        time.sleep(delay)  # an offset into the race window, not a wait for a condition
        return send_signal(run.pk, "approval", {"trial": n})

    processed, sent = at_once(process_one, send_after)
    assert sent.created

    done = process_until(
        run, lambda r: r.status == "completed", what=f"completed (trial {n})", timeout=10
    )
    assert done.output == {"trial": n}, n
    assert Signal.objects.get(run=run.pk).is_consumed
    return bool(processed), sent


@pytest.mark.slow
def test_race__a_signal_sent_while_the_job_unwinds_into_waiting_is_never_lost():
    # How long one execution takes from claim to waiting: the sends are spread across that window.
    calibration = wait_jobs.awaits_signal.trigger(None)
    started = time.monotonic()
    waits(calibration)
    window = (time.monotonic() - started) * 1.5
    cancel_run(calibration.pk)

    raced = 0
    before_the_wait, after_the_wait = 0.0, window
    for n in range(RACE_TRIALS):
        delay = window * n / RACE_TRIALS
        # The claim may skip the run while the send holds its row (PostgreSQL's SKIP LOCKED):
        # then the signal is simply there first. Most trials must really race, though.
        processed, sent = _signal_race_trial(n, delay)
        raced += processed
        if sent.woke:
            after_the_wait = min(after_the_wait, delay)
        elif sent.run_status == "leased":
            before_the_wait = max(before_the_wait, delay)
    assert raced >= RACE_TRIALS // 2, f"only {raced} of {RACE_TRIALS} trials claimed the run"

    # Again, densely around the moment the job unwinds into waiting: between the last send that
    # found the run leased and the first that found it waiting (and woke it).
    low, high = min(before_the_wait, after_the_wait), max(before_the_wait, after_the_wait)
    low, high = max(0.0, low - window / RACE_TRIALS), high + window / RACE_TRIALS
    for n in range(RACE_TRIALS):
        _signal_race_trial(RACE_TRIALS + n, low + (high - low) * n / RACE_TRIALS)


@pytest.mark.slow
@pytest.mark.parametrize("woken_by", ["signal", "timer"])
def test_race__two_workers_on_one_woken_run_continue_it_once(woken_by):
    for n in range(8):
        if woken_by == "signal":
            run = wait_jobs.awaits_signal.trigger(None)
            waits(run)
            send_signal(run.pk, "approval", n)
            assert stored(run).status == "pending"
        else:
            run = wait_jobs.sleeper.trigger({"seconds": 0.2})
            wake_at = waits(run).wake_at
            assert wake_at is not None
            wait_until(lambda wake_at=wake_at: db_now() > wake_at, timeout=10, what="wake time")

        claimed = at_once(process_one, process_one)

        assert sorted(claimed) == [False, True], (n, claimed)
        assert stored(run).status == "completed"
        continued = jobs.CALLS[
            f"{'awaits_signal' if woken_by == 'signal' else 'sleeper'}:continued"
        ]
        assert continued == n + 1, n
