"""Model-bakery factories: the one place tests build rows directly, bypassing ``trigger()`` and the
worker (say, a run in a status no trigger creates, or history rows to list).

Each factory fills what a realistic row needs and takes any field as a keyword argument. A run is
saved on the database the ``durably`` app is routed to (the ``db_alias`` fixture picks it).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from model_bakery import baker

from django_durably.database import db_alias
from django_durably.models import (
    TERMINAL_STATUSES,
    AttemptOutcome,
    AuditRecord,
    Run,
    RunAttempt,
    RunLog,
    RunStatus,
    Signal,
    Step,
    StepStatus,
)
from tests.jobs import noop

DEFAULT_JOB = "tests.jobs.noop"  # registered, so its runs can be executed and retriggered


def make_run(**fields: Any) -> Run:
    """A run of ``DEFAULT_JOB`` (pending unless ``status=`` says otherwise), with no keys."""
    fields.setdefault("job_name", DEFAULT_JOB)
    fields.setdefault("input", {})
    # Everything else as the model's defaults leave it (model-bakery fills no optional field).
    run: Run = baker.make(Run, _using=db_alias(), **fields)
    return run


def make_step(run: Run, **fields: Any) -> Step:
    """A completed step of ``run`` named ``s<index>`` (index 0 unless given), started now."""
    fields.setdefault("index", 0)
    fields.setdefault("name", f"s{fields['index']}")
    fields.setdefault("status", StepStatus.COMPLETED)
    fields.setdefault("started_at", timezone.now())
    fields.setdefault("output", None)
    fields.setdefault("error", None)
    step: Step = baker.make(Step, _using=db_alias(), run=run, **fields)
    return step


def make_log(run: Run, **fields: Any) -> RunLog:
    """An info line logged by ``run``."""
    fields.setdefault("level", "info")
    fields.setdefault("message", "a line")
    fields.setdefault("data", {})
    line: RunLog = baker.make(RunLog, _using=db_alias(), run=run, **fields)
    return line


def make_attempt(run: Run, **fields: Any) -> RunAttempt:
    """A failed attempt of ``run`` (number 1 unless given) by ``worker-1``, started 10 s before it
    ended now, with no error and no retry."""
    now = timezone.now()
    fields.setdefault("number", 1)
    fields.setdefault("worker", "worker-1")
    fields.setdefault("outcome", AttemptOutcome.FAILED)
    fields.setdefault("ended_at", now)
    fields.setdefault("started_at", now - timedelta(seconds=10))
    fields.setdefault("error", None)
    fields.setdefault("retry_at", None)
    attempt: RunAttempt = baker.make(RunAttempt, _using=db_alias(), run=run, **fields)
    return attempt


def make_signal(run: Run, **fields: Any) -> Signal:
    """An unconsumed signal ``approval`` sent to ``run`` from Python by ``ops``, with no payload
    and no key."""
    fields.setdefault("name", "approval")
    fields.setdefault("payload", None)
    fields.setdefault("idempotency_key", None)
    fields.setdefault("sent_by", "ops")
    fields.setdefault("source", "python")
    signal: Signal = baker.make(Signal, _using=db_alias(), run=run, **fields)
    return signal


def make_audit_record(run: Run, **fields: Any) -> AuditRecord:
    """A cancel of ``run`` by ``ops``."""
    fields.setdefault("action", "cancel")
    fields.setdefault("actor", "ops")
    fields.setdefault("from_status", "pending")
    fields.setdefault("to_status", "cancelled")
    fields.setdefault("detail", {})
    record: AuditRecord = baker.make(
        AuditRecord,
        _using=db_alias(),
        run=run,
        run_uuid=run.pk,
        job_name=run.job_name,
        **fields,
    )
    return record


ERROR = {"type": "builtins.RuntimeError", "message": "boom", "traceback": "Tb"}  # of a failed run
WAITING_FOR_SIGNAL = {"kind": "signal", "step": "approval", "signal": "approval", "until": None}
"""The ``waiting_for`` of a run left ``waiting`` (a ``step.wait_for_signal("approval")``)."""


def _left_in(status: str) -> dict[str, Any]:
    """The fields of a run left in ``status`` as a worker or an operator would leave it."""
    now = timezone.now()
    values: dict[str, Any] = {"status": status}
    if status != RunStatus.PENDING:
        values |= {"attempt": 1, "lease_generation": 1, "lease_owner": "worker-1"}
    if status == RunStatus.LEASED:
        values |= {
            "lease_expires_at": now + timedelta(minutes=5),
            "started_at": now - timedelta(seconds=3),
        }
    if status == RunStatus.WAITING:  # its attempt released the lease at the wait
        values |= {
            "lease_owner": "",
            "started_at": now - timedelta(seconds=3),
            "waiting_for": WAITING_FOR_SIGNAL,
            "wake_at": None,
        }
    if status in TERMINAL_STATUSES:
        values |= {"started_at": now - timedelta(seconds=90), "completed_at": now}
    if status == RunStatus.FAILED:
        values["error"] = ERROR
    return values


def make_run_in(status: str = "pending", **fields: Any) -> Run:
    """A run of the registered job ``tests.jobs.noop`` (so it can be retriggered) left in
    ``status`` as a worker or an operator would leave it: ``leased`` holds a live lease (attempt 1,
    generation 1, started 3 s ago); ``waiting`` was leased once too, started 3 s ago, and waits
    with no deadline for the signal ``approval`` (:data:`WAITING_FOR_SIGNAL`); a finished run was
    leased once, started 90 s ago and ended now, and a ``failed`` one carries an error. Any field
    can be given."""
    return make_run(**({"job_name": noop.name} | _left_in(status) | fields))


def move_to(run: Run, status: str, **fields: Any) -> Run:
    """``run``, made by ``trigger()`` (its job's input, keys and options as the library stores
    them), moved to ``status`` and left there as ``make_run_in`` leaves a new run, with ``fields``
    on top. Returns the run as stored. A fixture, not a transition: nothing checks the move."""
    assert Run.objects.filter(pk=run.pk).update(**(_left_in(status) | fields)) == 1
    return Run.objects.get(pk=run.pk)
