"""Leases: the only code that locks rows or writes hand-written SQL (DESIGN.md sections 3 and 4).

Every function is one guarded statement (or one short transaction) whose row count says whether it
won; lease times come from the database clock. By what each module owns:

* ``claims``: who gets a lease, in which order, with which fencing token (``claim``), and the row
  locks of a purge;
* ``holding``: what a running attempt knows of its lease (``LeaseHandle``), renewing and handing it
  back, and asking the database what became of it (``probe``, ``refusal``);
* ``writes``: the writes a lease holder makes (steps, progress, log lines, the attempt's end with
  its history row);
* ``waiting``: durable waits: a holder settling one (over, or the run goes ``waiting``), and the
  wake-ups (a due timer, a signal, the end of child runs);
* ``inserts``: the trigger's insert on PostgreSQL;
* ``statements``: the hand-written statements, each beside the ORM expression it restates.
"""

from django_durably.leases.claims import claim, lock_oldest_finished
from django_durably.leases.holding import (
    CancelFeed,
    LeaseHandle,
    LeaseState,
    probe,
    refusal,
    release,
    renew,
)
from django_durably.leases.inserts import NewRun, insert_runs
from django_durably.leases.statements import lease_expiry
from django_durably.leases.waiting import (
    Delivery,
    Waiting,
    deliver_signal,
    settle,
    unfinished_children,
    wake_due,
    wake_parents,
)
from django_durably.leases.writes import (
    FinishRow,
    complete,
    fail,
    finish,
    persist_completed_step,
    persist_failed_step,
    persist_log,
    persist_progress,
    record_attempt,
    record_cancelled_step,
    step_row,
)

__all__ = [
    "CancelFeed",
    "Delivery",
    "Waiting",
    "deliver_signal",
    "settle",
    "unfinished_children",
    "wake_due",
    "wake_parents",
    "FinishRow",
    "LeaseHandle",
    "LeaseState",
    "NewRun",
    "claim",
    "complete",
    "fail",
    "finish",
    "insert_runs",
    "lease_expiry",
    "lock_oldest_finished",
    "persist_completed_step",
    "persist_failed_step",
    "persist_log",
    "persist_progress",
    "probe",
    "record_attempt",
    "record_cancelled_step",
    "refusal",
    "release",
    "renew",
    "step_row",
]
