"""What a chaos run leaves behind for the checker: plain, frozen records, no Django, no database.

Times are seconds since the epoch, all on one clock: the database server's (``clock_timestamp()``,
``Step.completed_at`` from the worker's clock) and the harness's wall clock are the same clock
because the suite runs on the database's machine (see docs/chaos.md).

The checker (``chaos.checker``) works on an :class:`Evidence` alone, so it can be tested on a tiny
synthetic one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

JournalKind = Literal["enter", "start", "end"]
WorkerEnd = Literal["running", "killed", "terminated", "crashed", "stopped"]

STEP_NAMES = ("one", "two", "three", "four", "five")
"""The five steps of ``chaos.five_steps``, in order."""

WORKER_LOST = "django_durably.exceptions.WorkerLost"
"""The error type of a run failed for losing ``DURABLY_MAX_RECLAIMS`` workers (the poison rule)."""

JOURNAL_UNAVAILABLE = "chaos.journal.JournalUnavailable"
"""The error type of a run failed on purpose: its journal row could not be written in time."""


@dataclass(frozen=True)
class JournalEvent:
    """A row the job wrote on its own connection: ``enter`` (job function entered, after a claim),
    ``start`` and ``end`` of a step function."""

    event: JournalKind
    run_id: str
    step: str  # "" for ``enter``
    attempt: int
    pid: int
    thread: int  # the OS thread id
    at: float  # the database clock when the row was inserted
    created_at: float  # the worker's clock when the event happened (before any retry)


@dataclass(frozen=True)
class RunRow:
    run_id: str
    status: str
    attempt: int
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    error_type: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class AttemptRow:
    """A ``RunAttempt`` row: one attempt of a run and how it ended."""

    run_id: str
    number: int
    outcome: str
    error_type: str = ""


@dataclass(frozen=True)
class StepRow:
    run_id: str
    name: str
    status: str
    attempt: int
    completed_at: float | None


@dataclass(frozen=True)
class CancelRecord:
    """An acknowledged cancel: ``cancel_run`` returned ``cancelled=True`` (or its commit was
    confirmed by reading the run back); ``ack_at`` is the database clock read after that."""

    seq: int
    run_id: str
    ack_at: float
    attempt: int  # the run's attempt when it was cancelled
    from_status: str


@dataclass(frozen=True)
class ResumeRecord:
    seq: int
    run_id: str
    at: float


@dataclass(frozen=True)
class IdempotentTrigger:
    """One of several concurrent triggers with the same idempotency key, and the run it returned."""

    key: str
    run_id: str
    disposition: str


@dataclass(frozen=True)
class Restart:
    """A PostgreSQL restart: the command ran from ``started_at`` to ``done_at``; ``up_at`` is when
    the server first accepted a connection afterwards (``None``: it never did)."""

    mode: str
    started_at: float
    done_at: float
    up_at: float | None


@dataclass(frozen=True)
class Termination:
    """A ``pg_terminate_backend`` of worker connections."""

    at: float
    target: str  # "all" or a worker pid
    terminated: int


@dataclass
class WorkerLife:
    """One worker process, from start to end; ``stops`` are its SIGSTOP..SIGCONT intervals."""

    slot: int
    pid: int
    started_at: float
    ended_at: float | None = None
    end: WorkerEnd = "running"
    exit_code: int | None = None
    term_at: float | None = None
    stops: list[tuple[float, float]] = field(default_factory=list)
    ready_at: float | None = None  # when it was seen to have started its loop

    def alive_at(self, moment: float) -> bool:
        return self.started_at <= moment and (self.ended_at is None or self.ended_at > moment)

    def stopped_between(self, start: float, end: float) -> float:
        """Seconds it spent stopped within ``[start, end]``."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.stops)


@dataclass
class Evidence:
    """Everything the checker reads. ``backlog_until``: until when runs were always waiting to be
    claimed (after it, an idle worker cannot show that it recovered). ``max_reclaims``: the workers'
    ``DURABLY_MAX_RECLAIMS`` (a run that lost this many workers is failed on purpose)."""

    runs: list[RunRow]
    steps: list[StepRow]
    journal: list[JournalEvent]
    cancels: list[CancelRecord] = field(default_factory=list)
    resumes: list[ResumeRecord] = field(default_factory=list)
    idempotent: list[IdempotentTrigger] = field(default_factory=list)
    restarts: list[Restart] = field(default_factory=list)
    terminations: list[Termination] = field(default_factory=list)
    workers: list[WorkerLife] = field(default_factory=list)
    lease_seconds: float = 2.0
    grace_period: float = 30.0
    recovery_deadline: float = 30.0
    backlog_until: float = float("inf")
    attempts: list[AttemptRow] = field(default_factory=list)
    max_reclaims: int = 5
