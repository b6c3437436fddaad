"""Holding a lease: what a running attempt knows of it, renewing it, handing it back, and asking the
database what became of it.

Leases are told apart by ``(run_id, generation)``, never by run id alone: one process may hold an
old attempt of a run that has not noticed its loss yet beside a new claim of the same run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from uuid import UUID

from django.db import connections, transaction
from django.db.models import BooleanField, ExpressionWrapper, Q

from django_durably.database import db_alias
from django_durably.exceptions import AttemptEnded, DurablyInterrupt, JobCancelled, LeaseLost
from django_durably.leases.statements import PROBE_SQL, cursor_for, lease_expiry
from django_durably.leases.writes import record_attempt
from django_durably.models import AttemptOutcome, DatabaseNow, Run, RunStatus
from django_durably.notifications import notify_ready

LeaseState = Literal["held", "cancelled", "lost", "finished", "timed_out"]
"""What became of a lease: still ``held``; the run was ``cancelled`` under it; it ``finished`` the
run (completed or failed); it was ``lost`` (expired, reclaimed, resumed, deleted); or the worker
ended the attempt because it ran past its timeout (``timed_out``, known only to that process)."""


class CancelFeed(Protocol):
    """Cancels delivered to this process as they happen (PostgreSQL notifications).

    ``live_since`` is the ``time.monotonic()`` since which the feed has been listening without a
    break (``None`` while it is not): a cancel committed after that is delivered.
    """

    @property
    def live_since(self) -> float | None: ...


@dataclass
class LeaseHandle:
    """What a running job knows about its lease: the fencing token, a local deadline, and whether a
    cancel could have slipped past it.

    The deadline is measured on this machine's monotonic clock from *before* the claim or renewal
    was sent, so it always passes no later than the lease does in the database. ``confirmed_at``
    is the monotonic time before the last statement that found the lease held (the claim, a
    renewal, a fenced write, a probe). A cancel committed after that is known at once when a live
    :class:`CancelFeed` has been listening since before it; otherwise the step boundary asks the
    database (:meth:`needs_probe`).
    """

    run_id: UUID
    generation: int
    deadline: float
    _state: LeaseState = field(default="held", repr=False)
    confirmed_at: float = field(default_factory=time.monotonic)
    feed: CancelFeed | None = None
    limits: Any = None
    """The attempt's timeouts and retry policies (``limits.AttemptLimits``), set by the executor."""
    wake_keeper: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    """Tells the lease keeper that a timeout was set, so it wakes up in time for it."""
    _stopped: threading.Event | None = field(default=None, repr=False, compare=False)
    """Set when the state leaves ``held``: wakes a job waiting in place (made by :meth:`sleep`)."""

    @property
    def state(self) -> LeaseState:
        return self._state

    @state.setter
    def state(self, value: LeaseState) -> None:
        self._state = value
        if value != "held" and self._stopped is not None:
            self._stopped.set()

    @property
    def key(self) -> tuple[UUID, int]:
        """``(run_id, generation)``: one attempt of a run. A process may hold two of one run."""
        return (self.run_id, self.generation)

    def check(self) -> None:
        """Raise :class:`JobCancelled` or :class:`LeaseLost` if the run must stop, as far as this
        process knows (no database access)."""
        if self.state == "cancelled":
            raise JobCancelled(self.run_id)
        if self.state == "timed_out":
            raise AttemptEnded(self.run_id)
        if self.state == "lost" or time.monotonic() >= self.deadline:
            self.state = "lost"
            raise LeaseLost(self.run_id)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` in place while the lease is kept; raise at once (as :meth:`check`) when
        the run is cancelled, the lease lost or the attempt ended on time meanwhile."""
        until = time.monotonic() + seconds
        if self._stopped is None:
            self._stopped = threading.Event()  # before the state is read: no change is missed
        while True:
            self.check()
            remaining = min(until, self.deadline) - time.monotonic()
            if remaining <= 0 and time.monotonic() >= until:
                return
            self._stopped.wait(max(remaining, 0.0))

    def confirm(self, sent_at: float) -> None:
        """A statement sent at ``sent_at`` found the lease held."""
        self.confirmed_at = max(self.confirmed_at, sent_at)

    def needs_probe(self) -> bool:
        """Whether the database must be asked if the run was cancelled: no live feed has been
        listening since before the last confirmation (a cancel committed since then would be
        delivered to this process)."""
        since = None if self.feed is None else self.feed.live_since
        return since is None or since > self.confirmed_at


def renew(
    leases: Collection[tuple[UUID, int]], lease_seconds: float
) -> dict[tuple[UUID, int], LeaseState]:
    """Extend every lease in ``leases`` (``(run_id, generation)`` pairs) in one UPDATE; report each
    one's state, keyed by its pair.

    A lease is renewed only while the run is leased under that generation and the lease has not
    expired. ``cancelled`` means an operator cancelled the run under this lease; ``finished`` that
    this lease completed or failed it meanwhile (a renewal racing the run's own end); ``lost`` that
    the lease expired or the run moved on to another lease.
    """
    pairs = set(leases)
    if not pairs:
        return {}
    alias = db_alias()
    held = Q()
    for run_id, generation in pairs:
        held |= Q(pk=run_id, lease_generation=generation)
    renewed = (
        Run.objects.using(alias)
        .filter(held)
        .validly_leased()
        .update(lease_expires_at=lease_expiry(lease_seconds), updated_at=DatabaseNow())
    )
    if renewed == len(pairs):
        return dict.fromkeys(pairs, "held")
    states: dict[tuple[UUID, int], LeaseState] = dict.fromkeys(pairs, "lost")
    rows = (
        Run.objects.using(alias)
        .filter(pk__in={run_id for run_id, _generation in pairs})
        .annotate(
            valid=ExpressionWrapper(
                Q(lease_expires_at__gt=DatabaseNow()), output_field=BooleanField()
            )
        )
        .values_list("pk", "status", "lease_generation", "valid")
    )
    for run_id, status, generation, valid in rows:
        pair = (run_id, generation)
        if pair not in pairs:
            continue  # the run moved on to another lease: every one of ours is lost
        if status == RunStatus.CANCELLED:
            states[pair] = "cancelled"
        elif status in (RunStatus.COMPLETED, RunStatus.FAILED):
            states[pair] = "finished"
        elif status == RunStatus.LEASED and valid:
            states[pair] = "held"
    return states


def release(run_id: UUID, generation: int) -> bool:
    """Hand a run back at once (its lease expires now) so any worker can claim it immediately, and
    record the attempt as handed back (not counted against its retry policy).

    Completed checkpoints are kept. Guarded by generation: a no-op if the lease was lost already.
    """
    alias = db_alias()
    with transaction.atomic(using=alias):
        released = bool(
            Run.objects.using(alias)
            .held_by(run_id, generation)
            .exclude(lease_owner="")  # handed back already: its attempt was recorded then
            .update(lease_expires_at=DatabaseNow(), updated_at=DatabaseNow())
        )
        if released:
            record_attempt(alias, run_id, AttemptOutcome.RELEASED)
            # No owner: the claim that takes it next knows it was handed back, not lost.
            Run.objects.using(alias).filter(pk=run_id).update(lease_owner="")
            queue = Run.objects.using(alias).filter(pk=run_id).values_list("queue", flat=True)
            notify_ready(alias, queue)
    return released


def probe(run_id: UUID, generation: int) -> LeaseState:
    """The state of lease ``generation`` of a run, read from the database (one indexed read).

    ``held`` means the run is leased under that generation (its expiry is the holder's local
    deadline's business); ``cancelled`` that it was cancelled under it; ``finished`` that it ended
    under it; ``lost`` anything else (another claim, a resume, a deleted run).
    """
    alias = db_alias()
    row: Sequence[Any] | None
    if connections[alias].vendor == "postgresql":
        with cursor_for(alias) as cursor:  # prepared: a step boundary may ask every time
            cursor.execute(PROBE_SQL, [run_id])
            row = cursor.fetchone()
    else:
        row = (
            Run.objects.using(alias)
            .filter(pk=run_id)
            .values_list("status", "lease_generation")
            .first()
        )
    if row is None or row[1] != generation:
        return "lost"
    status = row[0]
    if status == RunStatus.LEASED:
        return "held"
    if status == RunStatus.CANCELLED:
        return "cancelled"
    if status in (RunStatus.COMPLETED, RunStatus.FAILED):
        return "finished"
    return "lost"


def refusal(run_id: UUID, generation: int) -> DurablyInterrupt:
    """Why a fenced write of lease ``generation`` was refused: the run was cancelled under that
    lease (``JobCancelled``), or the lease was lost (``LeaseLost``)."""
    return JobCancelled(run_id) if probe(run_id, generation) == "cancelled" else LeaseLost(run_id)
