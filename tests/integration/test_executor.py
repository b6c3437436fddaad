"""The in-process entry points (process_one, process_next, process_until_idle), claim order,
signals, waiting for a run, and the lease keeper that runs beside a job."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from django_durably import (
    DurablyError,
    JobCancelled,
    LeaseLost,
    RunCancelled,
    RunFailed,
    RunNotFound,
    WaitTimeout,
    cancel_run,
    leases,
    process_next,
    process_one,
    process_until_idle,
    wait_for_run,
)
from django_durably.keeper import LeaseKeeper
from django_durably.models import Run, RunLog, RunStatus, Step, StepStatus
from tests import jobs
from tests.concurrency import start, wait_event, wait_until
from tests.factories import make_run

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


# -- process_one / process_until_idle ----------------------------------------------------------


def test_process_one__returns_false_when_idle():
    assert process_one() is False
    assert process_next() is None


def test_process_one__returns_true_when_it_processed_a_run():
    run = jobs.noop.trigger({"x": 1})

    assert process_one(worker_id="w-1") is True

    run.refresh_from_db()
    assert run.status == "completed"
    assert run.output == {"x": 1}
    assert run.lease_owner == "w-1"
    assert process_one() is False


def test_process_next__returns_the_outcome():
    run = jobs.noop.trigger(5)

    outcome = process_next()

    assert outcome is not None
    assert (outcome.run_id, outcome.job_name, outcome.attempt) == (run.pk, "tests.jobs.noop", 1)
    assert outcome.status == "completed"
    assert outcome.error is None
    assert outcome.duration >= 0


def test_process_until_idle__max_runs_and_count():
    for i in range(3):
        jobs.noop.trigger(i)

    assert process_until_idle(max_runs=2) == 2
    assert Run.objects.filter(status="pending").count() == 1
    assert process_until_idle() == 1
    assert process_until_idle() == 0
    assert Run.objects.filter(status="completed").count() == 3


def test_process_until_idle__counts_failed_runs_too():
    jobs.FLAGS["fail"] = "b"
    jobs.three_steps.trigger({})
    jobs.noop.trigger(1)

    assert process_until_idle() == 2

    assert sorted(Run.objects.values_list("status", flat=True)) == ["completed", "failed"]


def test_process_until_idle__does_not_wait_for_runs_scheduled_later():
    later = jobs.noop.trigger(1, run_after=timezone.now() + timedelta(hours=1))

    assert process_until_idle() == 0

    later.refresh_from_db()
    assert later.status == "pending"


def test_process_until_idle__takes_over_runs_whose_lease_expired():
    """The housekeeping a dead worker's runs need: none. An expired lease is claimable again."""
    abandoned = make_run(
        job_name=jobs.noop.name,
        status="leased",
        input={"left": "behind"},
        attempt=1,
        lease_generation=1,
        lease_owner="dead-worker",
        lease_expires_at=timezone.now() - timedelta(minutes=1),
    )
    held = make_run(
        status="leased",
        attempt=1,
        lease_generation=1,
        lease_owner="live-worker",
        lease_expires_at=timezone.now() + timedelta(minutes=5),
    )

    assert process_until_idle(worker_id="me") == 1

    abandoned.refresh_from_db()
    assert (abandoned.status, abandoned.attempt, abandoned.lease_owner) == ("completed", 2, "me")
    assert abandoned.output == {"left": "behind"}
    held.refresh_from_db()
    assert (held.status, held.lease_owner) == ("leased", "live-worker")


def test_process_until_idle__queues_filter():
    email = jobs.noop.trigger(1, queue="emails")
    report = jobs.noop.trigger(2, queue="reports")
    default = jobs.noop.trigger(3)

    assert process_until_idle(queues=["reports"]) == 1
    assert process_one(queues=["nothing-here"]) is False

    statuses = dict(Run.objects.values_list("pk", "status"))
    assert statuses == {email.pk: "pending", report.pk: "completed", default.pk: "pending"}
    assert process_until_idle(queues=["emails", "default"]) == 2


# -- claim order -------------------------------------------------------------------------------


def processing_order() -> list[uuid.UUID]:
    order = []
    while (outcome := process_next()) is not None:
        order.append(outcome.run_id)
    return order


def test_order__higher_priority_first_then_run_after():
    now = timezone.now()
    low = jobs.noop.trigger("low", priority=-5, run_after=now - timedelta(minutes=9))
    mid_late = jobs.noop.trigger("mid-late", run_after=now - timedelta(minutes=1))
    mid_early = jobs.noop.trigger("mid-early", run_after=now - timedelta(minutes=2))
    high = jobs.noop.trigger("high", priority=5, run_after=now - timedelta(seconds=1))

    assert processing_order() == [high.pk, mid_early.pk, mid_late.pk, low.pk]


def test_order__same_priority_runs_in_trigger_order():
    triggered = []
    for i in range(4):
        run = jobs.noop.trigger(i)
        triggered.append(run)
        # Wait (on the database clock) until the next trigger gets a later timestamp.
        wait_until(
            lambda run=run: Run.objects.filter(pk=run.pk, created_at__lt=Now()).exists(),
            what="the database clock to move on",
        )

    assert processing_order() == [run.pk for run in triggered]


# -- signals -----------------------------------------------------------------------------------

SIGNALS = (
    "run_triggered",
    "run_leased",
    "step_started",
    "step_completed",
    "step_failed",
    "run_progress",
    "run_log",
    "run_completed",
    "run_failed",
    "run_cancelled",
)


def observe(name: str, kwargs: dict[str, Any]) -> Any:
    """What another connection sees of the write the signal describes."""
    run_id = kwargs["run"].pk if name == "run_triggered" else kwargs["run_id"]
    runs = Run.objects.filter(pk=run_id)
    if name == "step_completed":
        return list(
            Step.objects.filter(
                run_id=run_id, name=kwargs["step_name"], status="completed"
            ).values_list("index", "output")
        )
    if name == "step_failed":
        return list(
            Step.objects.filter(
                run_id=run_id, name=kwargs["step_name"], status="failed"
            ).values_list("index", "error")
        )
    if name == "run_log":
        return list(
            RunLog.objects.filter(run_id=run_id, message=kwargs["message"]).values_list(
                "level", "data"
            )
        )
    if name == "run_progress":
        return runs.values_list("progress", flat=True).first()
    if name == "run_leased":
        return runs.values_list("status", "lease_owner", "attempt").first()
    if name in ("run_completed", "run_failed"):
        return runs.values_list("status", "output", "error").first()
    return runs.values_list("status", flat=True).first()


@pytest.fixture
def received(record_signals: Any) -> list[Any]:
    """Every signal sent, with its kwargs and what a *separate* connection saw at that moment."""
    return record_signals(*SIGNALS, observe=observe)


def test_signals__a_completed_run_sends_each_event_after_its_write(received):
    run = jobs.three_steps.trigger({})

    assert process_one(worker_id="w-sig") is True

    rid = run.pk
    assert received == [
        ("run_triggered", {"run": run}, "pending"),
        (
            "run_leased",
            {"run_id": rid, "job_name": "tests.three_steps", "attempt": 1, "lease_owner": "w-sig"},
            ("leased", "w-sig", 1),
        ),
        ("step_started", {"run_id": rid, "step_name": "a", "index": 0, "attempt": 1}, "leased"),
        ("step_completed", {"run_id": rid, "step_name": "a", "index": 0, "output": 1}, [(0, 1)]),
        ("step_started", {"run_id": rid, "step_name": "b", "index": 1, "attempt": 1}, "leased"),
        (
            "step_completed",
            {"run_id": rid, "step_name": "b", "index": 1, "output": "b"},
            [(1, "b")],
        ),
        ("step_started", {"run_id": rid, "step_name": "c", "index": 2, "attempt": 1}, "leased"),
        (
            "step_completed",
            {"run_id": rid, "step_name": "c", "index": 2, "output": [1, "b"]},
            [(2, [1, "b"])],
        ),
        (
            "run_progress",
            {"run_id": rid, "progress": {"current": 3, "total": 3, "message": "done"}},
            {"current": 3, "total": 3, "message": "done"},
        ),
        (
            "run_log",
            {
                "run_id": rid,
                "step_name": None,
                "level": "info",
                "message": "finished",
                "data": {"a": 1, "b": "b"},
            },
            [("info", {"a": 1, "b": "b"})],
        ),
        (
            "run_completed",
            {
                "run_id": rid,
                "job_name": "tests.three_steps",
                "output": {"a": 1, "b": "b", "c": [1, "b"]},
            },
            ("completed", {"a": 1, "b": "b", "c": [1, "b"]}, None),
        ),
    ]


def test_signals__a_failed_step_and_run(received):
    jobs.FLAGS["fail"] = "b"
    run = jobs.three_steps.trigger({})

    process_one()

    run.refresh_from_db()
    events = {name: (kwargs, observed) for name, kwargs, observed in received}
    assert [name for name, _, _ in received][-2:] == ["step_failed", "run_failed"]
    kwargs, observed = events["step_failed"]
    assert (kwargs["run_id"], kwargs["step_name"], kwargs["index"]) == (run.pk, "b", 1)
    assert kwargs["error"]["type"] == "builtins.RuntimeError"
    assert observed == [(1, kwargs["error"])]
    kwargs, observed = events["run_failed"]
    assert kwargs == {"run_id": run.pk, "job_name": "tests.three_steps", "error": run.error}
    assert observed == ("failed", None, run.error)


def test_signals__run_cancelled_after_commit(received, db_alias):
    run = jobs.noop.trigger()
    received.clear()

    with transaction.atomic(using=db_alias):
        cancel_run(run.pk)
        assert received == []  # not sent while the cancel is uncommitted

    assert received == [
        (
            "run_cancelled",
            {
                "run_id": run.pk,
                "job_name": "tests.jobs.noop",
                "actor": "",
                "source": "python",
                "from_status": "pending",
            },
            "cancelled",
        )
    ]


def test_signals__cancelled_run_sends_no_completion(received, on_signal):
    run = jobs.swallows_interrupts.trigger()

    def cancel_after_first_step(sender: Any, *, step_name: str, **kwargs: Any) -> None:
        if step_name == "s0":
            cancel_run(run.pk)

    on_signal("step_completed", cancel_after_first_step)
    outcome = process_next()

    assert outcome is not None
    assert outcome.status == "cancelled"
    names = [name for name, _, _ in received]
    assert "run_cancelled" in names
    assert "run_completed" not in names
    assert "run_failed" not in names
    assert [kwargs["step_name"] for name, kwargs, _ in received if name == "step_completed"] == [
        "s0"
    ]


# -- wait_for_run ------------------------------------------------------------------------------


def test_wait_for_run__returns_the_completed_run():
    run = jobs.noop.trigger({"v": 1})
    process_one()

    waited = wait_for_run(run.pk, timeout=1)

    assert waited.pk == run.pk
    assert waited.status == "completed"
    assert waited.output == {"v": 1}
    assert wait_for_run(str(run.pk), timeout=1).pk == run.pk


def test_wait_for_run__raises_run_failed_with_the_run():
    run = jobs.bad_output.trigger()
    process_one()

    with pytest.raises(RunFailed) as raised:
        wait_for_run(run.pk, timeout=1)

    assert raised.value.run.pk == run.pk
    assert raised.value.run.status == "failed"
    assert raised.value.run_id == run.pk
    assert "OutputInvalid" in str(raised.value)


def test_wait_for_run__raises_run_cancelled_with_the_run():
    run = jobs.noop.trigger()
    cancel_run(run.pk)

    with pytest.raises(RunCancelled) as raised:
        wait_for_run(run.pk, timeout=1)

    assert raised.value.run.pk == run.pk
    assert raised.value.run.status == "cancelled"


@pytest.mark.parametrize("claimed", [False, True], ids=["pending", "leased"])
def test_wait_for_run__times_out_without_cancelling(claimed):
    run = jobs.noop.trigger()
    if claimed:
        leases.claim(worker_id="w", limit=1)
    expected = "leased" if claimed else "pending"
    started = time.monotonic()

    with pytest.raises(WaitTimeout) as raised:
        wait_for_run(run.pk, timeout=0.1)

    assert time.monotonic() - started >= 0.1
    assert raised.value.run_id == run.pk
    assert raised.value.status == expected
    assert raised.value.timeout == 0.1
    run.refresh_from_db()
    assert run.status == expected


def test_wait_for_run__passes_new_progress_and_log_lines_while_it_polls(gates):
    gate, _ = gates("report")
    run = jobs.reports_at_a_gate.trigger()
    worker = start(process_one)
    progress: list[dict[str, Any]] = []
    lines: list[RunLog] = []

    def on_progress(value: dict[str, Any]) -> None:
        progress.append(value)
        if value["current"] == 1:
            gate.set()  # the job goes on only once the wait has seen it halfway

    waited = wait_for_run(
        run.pk, timeout=20, poll_interval=0.01, on_progress=on_progress, on_log=lines.append
    )

    assert worker.outcome() is True
    assert waited.status == "completed"
    assert progress == [
        {"current": 1, "total": 2, "message": "waiting"},
        {"current": 2, "total": 2, "message": "done"},
    ]
    assert [(line.message, line.run_id) for line in lines] == [
        ("before the gate", run.pk),
        ("after the gate", run.pk),
    ]


def test_wait_for_run__passes_what_was_reported_before_it_was_called():
    run = jobs.logs_and_progress.trigger()
    process_one()
    progress: list[dict[str, Any]] = []
    lines: list[RunLog] = []

    wait_for_run(run.pk, timeout=1, on_progress=progress.append, on_log=lines.append)

    assert progress == [{"current": 2, "total": 2, "message": "all done"}]
    assert [(line.level, line.message, line.step_name) for line in lines] == [
        ("warning", "careful", ""),
        ("error", "inside", "inner"),
    ]


def test_wait_for_run__calls_back_before_raising_run_failed():
    run = jobs.unstorable_text.trigger({"raise": True})
    process_one()
    progress: list[dict[str, Any]] = []
    lines: list[RunLog] = []

    with pytest.raises(RunFailed):
        wait_for_run(run.pk, timeout=1, on_progress=progress.append, on_log=lines.append)

    assert [value["current"] for value in progress] == [1]
    assert [line.level for line in lines] == ["warning"]


def test_wait_for_run__an_error_in_a_callback_ends_the_wait():
    run = jobs.logs_and_progress.trigger()
    process_one()

    def on_log(line: RunLog) -> None:
        raise LookupError(line.message)

    with pytest.raises(LookupError, match="careful"):
        wait_for_run(run.pk, timeout=1, on_log=on_log)


@pytest.mark.parametrize("run_id", [uuid.uuid4(), str(uuid.uuid4()), "not-a-uuid", ""])
def test_wait_for_run__unknown_or_malformed_id(run_id):
    with pytest.raises(RunNotFound) as raised:
        wait_for_run(run_id, timeout=1)

    assert str(raised.value.run_id) == str(run_id)


# -- trigger_and_wait --------------------------------------------------------------------------


def serve(stop: threading.Event) -> int:
    """A worker thread: process until told to stop, polling while idle."""
    processed = 0
    while not stop.is_set():
        done = process_until_idle()
        processed += done
        if not done:
            stop.wait(0.01)
    return processed


@pytest.fixture
def worker_thread() -> Iterator[Any]:
    stop = threading.Event()
    worker = start(serve, stop)
    yield worker
    stop.set()
    worker.outcome()


def test_trigger_and_wait__returns_the_completed_run(worker_thread):
    run = jobs.three_steps.trigger_and_wait({}, timeout=20)

    assert run.status == "completed"
    assert run.output == {"a": 1, "b": "b", "c": [1, "b"]}
    assert jobs.CALLS == {"a": 1, "b": 1, "c": 1}


def test_trigger_and_wait__raises_run_failed(worker_thread):
    jobs.FLAGS["fail"] = "b"

    with pytest.raises(RunFailed) as raised:
        jobs.three_steps.trigger_and_wait({}, timeout=20)

    assert raised.value.run.error["message"] == "step b failed on purpose"


def test_trigger_and_wait__times_out_without_a_worker():
    with pytest.raises(WaitTimeout) as raised:
        jobs.noop.trigger_and_wait(1, timeout=0.05)

    assert Run.objects.get(pk=raised.value.run_id).status == "pending"


def test_trigger_and_wait__inside_a_transaction_raises(db_alias):
    with pytest.raises(DurablyError, match="inside a transaction"):  # noqa: PT012
        with transaction.atomic(using=db_alias):
            jobs.noop.trigger_and_wait(1, timeout=5)

    assert not Run.objects.exists()


# -- the lease keeper --------------------------------------------------------------------------


@pytest.fixture
def keeper_refusals() -> Iterator[dict[str, threading.Event]]:
    """``{run_id: Event}`` set when the keeper logs that it found a run's lease refused."""
    events: dict[str, threading.Event] = {}

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "action", None) == "lease_refused":
                events.setdefault(record.run_id, threading.Event()).set()  # type: ignore[attr-defined]

    handler = Handler()
    keeper_logger = logging.getLogger("django_durably.keeper")
    keeper_logger.addHandler(handler)
    yield events
    keeper_logger.removeHandler(handler)


@pytest.fixture
def fast_renewals(settings: Any) -> None:
    """Renew often, so a lease of a few seconds has a wide margin on a busy machine."""
    settings.DURABLY_RENEW_INTERVAL = 0.25


def test_keeper__renewal_keeps_a_step_longer_than_the_lease_alive(fast_renewals, gates):
    gate, entered = gates("gate")
    run = jobs.gated.trigger()
    worker = start(process_next, lease_seconds=2)
    try:
        wait_event(entered, what="the job to enter its long step")
        first_expiry = Run.objects.get(pk=run.pk).lease_expires_at
        # Wait until the first lease would have run out by the database clock, and the run is
        # still validly leased because the keeper moved the expiry forward.
        wait_until(
            lambda: (
                Run.objects.filter(pk=run.pk, lease_expires_at__gt=first_expiry)
                .annotate(now=Now())
                .filter(now__gt=first_expiry)
                .validly_leased()
                .exists()
            ),
            timeout=15,
            what="a renewed lease past the first expiry",
        )
        assert leases.claim(worker_id="thief", limit=1) == []
    finally:
        gate.set()
    outcome = worker.outcome()

    assert outcome.status == "completed"
    run.refresh_from_db()
    assert run.status == "completed"
    assert (run.attempt, run.lease_generation) == (1, 1)
    assert jobs.CALLS["gated:last"] == 1


def cancelled_at(gate: Any, job: Any, refusals: dict[str, threading.Event]) -> tuple[Run, Any]:
    """Process a run of ``job`` (3 s leases) until it arrives at ``gate``, cancel it there, and
    open the gate once the lease keeper has noticed: the run, and how processing it ended."""
    opened, entered = gate
    run = job.trigger()
    refused = refusals.setdefault(str(run.pk), threading.Event())
    worker = start(process_next, lease_seconds=3)
    try:
        wait_event(entered, what=f"the job to arrive at its gate ({job.name})")
        assert cancel_run(run.pk).cancelled is True
        wait_event(refused, what="the keeper to notice the cancel")
    finally:
        opened.set()
    return run, worker.outcome()


def test_keeper__cancel_stops_the_job_at_its_next_step_boundary(
    keeper_refusals, fast_renewals, gates
):
    run, outcome = cancelled_at(gates("pause"), jobs.pauses_between_steps, keeper_refusals)

    assert outcome.status == "cancelled"
    # The check before "next" stopped the job: its function never ran.
    assert jobs.CALLS["pause:first"] == 1
    assert jobs.CALLS["pause:next"] == 0
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert list(Step.objects.filter(run_id=run.pk).values_list("name", "status")) == [
        ("first", "completed")
    ]


def test_keeper__cancel_during_a_long_step_is_not_persisted(keeper_refusals, fast_renewals, gates):
    run, outcome = cancelled_at(gates("gate"), jobs.gated, keeper_refusals)

    assert outcome.status == "cancelled"
    assert jobs.CALLS["entered:gate"] == 1
    assert jobs.CALLS["gated:last"] == 0
    # The step's work is not checkpointed; its history says it was cancelled while it ran.
    assert list(
        Step.objects.filter(run_id=run.pk, name__in=["gate", "last"]).values_list(
            "name", "status", "attempt"
        )
    ) == [("gate", "cancelled", 1)]


def test_keeper__renew_now_updates_each_handle():
    for i in range(3):
        jobs.noop.trigger(i)
    held, cancelled, stolen = leases.claim(worker_id="w", limit=3, lease_seconds=5)
    keeper = LeaseKeeper(lease_seconds=30, interval=10)
    claimed_at = time.monotonic()
    handles = {
        run.pk: keeper.track(run, claimed_at=claimed_at) for run in (held, cancelled, stolen)
    }
    cancel_run(cancelled.pk)
    Run.objects.filter(pk=stolen.pk).update(lease_generation=99)

    keeper.renew_now()

    assert {pk: handle.state for pk, handle in handles.items()} == {
        held.pk: "held",
        cancelled.pk: "cancelled",
        stolen.pk: "lost",
    }
    assert handles[held.pk].deadline > claimed_at + 30
    handles[held.pk].check()
    with pytest.raises(JobCancelled):
        handles[cancelled.pk].check()
    with pytest.raises(LeaseLost):
        handles[stolen.pk].check()
    expires_at, db_now = (
        Run.objects.filter(pk=held.pk)
        .annotate(now=Now())
        .values_list("lease_expires_at", "now")
        .get()
    )
    assert expires_at - db_now > timedelta(seconds=20)


def test_keeper__untracked_runs_are_not_renewed():
    jobs.noop.trigger()
    [run] = leases.claim(worker_id="w", limit=1, lease_seconds=5)
    keeper = LeaseKeeper(lease_seconds=60, interval=10)
    handle = keeper.track(run, claimed_at=time.monotonic())
    before = Run.objects.get(pk=run.pk).lease_expires_at
    keeper.untrack(handle)

    keeper.renew_now()

    assert Run.objects.get(pk=run.pk).lease_expires_at == before


# -- issue 13, item 5: output limits -----------------------------------------------------------


def test_execute__a_step_output_over_the_limit_fails_the_step_and_the_run(settings):
    settings.DURABLY_MAX_OUTPUT_BYTES = 100
    run = jobs.echo.trigger({"step": "x" * 200, "result": "small"})

    assert process_next().status == RunStatus.FAILED

    run.refresh_from_db()
    step = Step.objects.get(run=run)
    assert step.status == StepStatus.FAILED
    assert step.error["type"] == "django_durably.exceptions.OutputTooLarge"
    assert run.error["type"] == "django_durably.exceptions.OutputTooLarge"
    assert run.error["message"].startswith(
        "Output of step 'echo' is 202 bytes of JSON; the limit is 100 (DURABLY_MAX_OUTPUT_BYTES)."
    )
    assert run.output is None


def test_execute__a_job_output_over_the_limit_fails_the_run(settings):
    settings.DURABLY_MAX_OUTPUT_BYTES = 100
    run = jobs.echo.trigger({"step": "small", "result": ["y" * 50, "z" * 50]})

    assert process_next().status == RunStatus.FAILED

    run.refresh_from_db()
    assert Step.objects.get(run=run).status == StepStatus.COMPLETED
    assert run.error["type"] == "django_durably.exceptions.OutputTooLarge"
    assert run.error["message"].startswith(
        "Output of job 'tests.jobs.echo' is 107 bytes of JSON; the limit is 100"
    )
    assert run.output is None


def test_execute__outputs_at_the_limit_are_stored(settings):
    settings.DURABLY_MAX_OUTPUT_BYTES = 12
    run = jobs.echo.trigger({"step": "x" * 10, "result": "y" * 10})

    assert process_next().status == RunStatus.COMPLETED

    run.refresh_from_db()
    assert run.output == "y" * 10
