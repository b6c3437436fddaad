"""The run state machine of DESIGN.md section 3, against a model, with Hypothesis.

A :class:`RunMachine` calls the real library (trigger, claim, renew, persist step, finish,
complete, fail, release, cancel, resume, retrigger, delete, lease expiry) in random orders, and after
every rule the database must say what a pure-Python model of section 3 says: which runs exist, each
one's status, lease generation, attempt, step counters, step rows, output and error, lease owner and
whether its lease is valid; a claim must lease exactly the runs the model picks, in its order, and
return the generation it wrote. Every ``(run, generation)`` a claim ever returned stays usable, so
stale holders keep acting: renewing, writing a step, finishing and releasing with old generations
and on cancelled or deleted runs. Such a write must be refused and change nothing in the database
(not even ``updated_at``), and ``probe`` and ``refusal`` must say why. The one write a lease may
make after a cancel, ``record_cancelled_step``, is allowed only to the lease the run was cancelled
under.

Invariants checked after every rule: at most one completed step per name, a leased run has an
expiry, a generation only grows, one valid lease per concurrency key, one pending run per (job,
concurrency key); typed errors carry the status the model says the run has. The ``waiting`` status is
modelled through signal waits (a holder settles a wait: the signal is consumed, or the run waits;
a signal wakes it; cancel applies, resume does not). Not modelled: retries, timers and child runs
(their own tests cover them: tests/integration/test_retries.py, test_waits.py and
tests/acceptance/test_waits_contract.py).

Lease expiry is arranged, not waited for: a rule moves ``lease_expires_at`` one second behind the
database clock with an UPDATE (as ``tests.leasing.expire`` does), and every claim and renewal asks
for a long lease so nothing lapses on its own. A real short lease would expire between whichever
two rules a slow machine happened to be running, so the model could not know which leases are
valid, and waiting for it would cost a lease length per expiry (hundreds per run). The guards under
test are the same either way: claim, renew and ``leased()`` compare the stored expiry with the
database clock.

The machine runs once per database (``db_alias``). Examples and steps per example:
``DURABLY_STATE_MACHINE_EXAMPLES`` and ``DURABLY_STATE_MACHINE_STEPS``; the run is derandomized so a
failure reproduces, and ``DURABLY_STATE_MACHINE_RANDOM=1`` explores new sequences instead. A
derandomized run of the default size must also reach every outcome in :data:`MUST_REACH`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from django.db import IntegrityError
from django.utils import timezone
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from django_durably import leases, operations, waits
from django_durably.awaiting import WaitRequest, WaitResult
from django_durably.exceptions import (
    JobCancelled,
    LeaseLost,
    PendingRunExists,
    RunNotCancellable,
    RunNotDeletable,
    RunNotFound,
    RunNotResumable,
    RunNotRetriggerable,
    RunNotWaiting,
    RunStateError,
)
from django_durably.leases import FinishRow
from django_durably.models import AuditRecord, DatabaseNow, Run, RunStatus, Signal, Step
from django_durably.types import JSON, Coalesce
from tests import jobs

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

DEFAULT_EXAMPLES = 60
EXAMPLES = int(os.environ.get("DURABLY_STATE_MACHINE_EXAMPLES", DEFAULT_EXAMPLES))
STEPS = int(os.environ.get("DURABLY_STATE_MACHINE_STEPS", "40"))
MACHINE_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,  # no example database written into the repository
    derandomize=os.environ.get("DURABLY_STATE_MACHINE_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow],
)

LEASE_SECONDS = 300  # long enough that no lease lapses on its own during an example
WORKERS = ("w1", "w2")
STEP_NAMES = ("a", "b", "c")
JOBS = {job.name: job for job in (jobs.noop, jobs.three_steps, jobs.per_user)}
LEASED = RunStatus.LEASED
PENDING = RunStatus.PENDING
CANCELLED = RunStatus.CANCELLED
COMPLETED = RunStatus.COMPLETED
FAILED = RunStatus.FAILED
WAITING = RunStatus.WAITING
SIGNALS = ("s1", "s2")  # a wait's step name is the signal's name
TERMINAL = (COMPLETED, FAILED, CANCELLED)

Lease = tuple[UUID, int]

REACHED: Counter[str] = Counter()
"""How often each rule had each outcome in this test run (``rule: outcome``)."""

# Outcomes the default run must reach at least once, so that a change to the machine (or to
# Hypothesis's generation) cannot quietly leave the cases that matter untested.
MUST_REACH = (
    "trigger: created",
    "trigger: idempotent",
    "trigger: coalesced",
    "trigger: PendingRunExists",
    "claim: 2 run(s)",
    "claim: a ready run's key is busy",
    "renew: held",
    "renew: lost",
    "renew: finished",
    "renew: cancelled",
    "persist step: written",
    "persist step: IntegrityError",
    "persist step: refused (lost)",
    "persist step: refused (cancelled)",
    "persist step: refused (finished)",
    "finish: all",
    "finish: some",
    "finish: none",
    "complete or fail: won",
    "complete or fail: refused (lost)",
    "complete or fail: refused (cancelled)",
    "record cancelled step: recorded",
    "record cancelled step: refused",
    "release: released",
    "release: refused",
    "expire lease: expired",
    "cancel: pending",
    "cancel: leased",
    "cancel: cancelled",
    "cancel: completed",
    "resume: cancelled",
    "resume: failed",
    "resume: leased",
    "resume: PendingRunExists",
    "retrigger: completed",
    "retrigger: leased",
    "retrigger: PendingRunExists",
    "delete: completed",
    "delete: pending",
    "delete: deleted",
    "wait for signal: waiting",
    "wait for signal: consumed",
    "wait for signal: refused (lost)",
    "send signal: woke",
    "send signal: stored",
    "send signal: RunNotWaiting",
    "cancel: waiting",
    "resume: waiting",
)


def reached(rule: str, outcome: str) -> None:
    """Note what a rule did, for Hypothesis's statistics and for :data:`MUST_REACH`."""
    event(rule, outcome)
    REACHED[f"{rule}: {outcome}"] += 1


# The arguments of a trigger. ``per_user`` derives its concurrency key from the input; the other jobs
# are given the same keys explicitly, so a key names a resource across jobs.
TRIGGER: dict[str, st.SearchStrategy[Any]] = {
    "job_name": st.sampled_from(list(JOBS)),
    "user": st.sampled_from([1, 2]),
    "idempotency_key": st.sampled_from([None, None, "i1", "i2"]),
    "concurrency_key": st.sampled_from([None, "user:1", "user:2"]),
    "priority": st.sampled_from([0, 0, 5]),
    "later": st.sampled_from([False, False, False, True]),
    "coalesce": st.sampled_from(["error", "skip"]),
}


# -- the model ---------------------------------------------------------------------------------


@dataclass
class ModelRun:
    """What DESIGN.md section 3 says a run looks like, without a database."""

    job_name: str
    idempotency_key: str | None
    concurrency_key: str | None
    priority: int
    later: bool
    """``run_after`` is in the future (an hour away): not claimable until a resume."""
    status: str = PENDING
    generation: int = 0
    attempt: int = 0
    owner: str = ""
    lease_valid: bool = False
    steps: dict[str, int] = field(default_factory=dict)
    """Completed step names and their index."""
    cancelled_steps: list[tuple[str, int]] = field(default_factory=list)
    """Steps recorded as running when the run was cancelled: (name, index)."""
    current_step_index: int = 0
    output: Any = None
    error: Any = None
    waiting_for: str | None = None
    """The signal (and step) the run waits for, or was woken from and has not consumed yet."""
    wait_records: dict[str, int] = field(default_factory=dict)
    """The ``waiting`` step rows: the waits the run reached, and their index."""
    signals: list[str] = field(default_factory=list)
    """Signals sent and not consumed, oldest first."""


@dataclass
class Model:
    runs: dict[UUID, ModelRun] = field(default_factory=dict)

    def with_idempotency_key(self, job_name: str, key: str | None) -> UUID | None:
        if key is None:
            return None
        return next(
            (
                run_id
                for run_id, run in self.runs.items()
                if run.job_name == job_name and run.idempotency_key == key
            ),
            None,
        )

    def pending_with_key(self, job_name: str, key: str | None) -> UUID | None:
        if key is None:
            return None
        return next(
            (
                run_id
                for run_id, run in self.runs.items()
                if run.job_name == job_name
                and run.concurrency_key == key
                and run.status == PENDING
                and run.waiting_for is None  # a woken run continues; it is not coalesced into
            ),
            None,
        )

    def in_status(self, *statuses: str) -> list[UUID]:
        """The runs in one of ``statuses``, in a stable order (to draw from)."""
        return sorted(
            (run_id for run_id, run in self.runs.items() if run.status in statuses), key=str
        )

    def holds(self, lease: Lease) -> bool:
        """The guard of every lease-holder write: leased under this generation (expired or not)."""
        run = self.runs.get(lease[0])
        return run is not None and run.status == LEASED and run.generation == lease[1]

    def busy_keys(self) -> set[str]:
        """Concurrency keys with a valid lease."""
        return {
            run.concurrency_key
            for run in self.runs.values()
            if run.status == LEASED and run.lease_valid and run.concurrency_key is not None
        }

    def ready(self) -> list[UUID]:
        """Claimable runs: pending and due, or leased with an expired lease."""
        return [
            run_id
            for run_id, run in self.runs.items()
            if (run.status == PENDING and not run.later)
            or (run.status == LEASED and not run.lease_valid)
        ]

    def claim_order(self, limit: int, run_after: dict[UUID, Any]) -> list[UUID]:
        """The runs a claim of ``limit`` leases, in claim order: ready runs by priority, then
        ``run_after``, then id; a concurrency key with a valid lease elsewhere is skipped, and one
        claim takes at most one run per key."""
        busy = self.busy_keys()
        ready = self.ready()
        ready.sort(key=lambda run_id: (-self.runs[run_id].priority, run_after[run_id], run_id))
        chosen: list[UUID] = []
        keys: set[str] = set()
        for run_id in ready:
            if len(chosen) == limit:
                break
            key = self.runs[run_id].concurrency_key
            if key is not None:
                if key in busy or key in keys:
                    continue
                keys.add(key)
            chosen.append(run_id)
        return chosen

    def probe(self, lease: Lease) -> str:
        """The state of the run *under that lease* (DESIGN.md section 3, rule 2), as
        ``leases.probe`` reads it: a stale holder is told ``lost`` whatever became of the run."""
        run = self.runs.get(lease[0])
        if run is None or run.generation != lease[1]:
            return "lost"  # deleted, or claimed again since: another lease's business
        if run.status == CANCELLED:
            return "cancelled"
        if run.status in (COMPLETED, FAILED):
            return "finished"
        if run.status == LEASED:
            return "held"  # expired or not: the holder's deadline tells it
        return "lost"  # resumed and not claimed again yet

    def renewal(self, lease: Lease) -> str:
        """What ``renew`` reports for one lease: as :meth:`probe`, but an expired lease is lost."""
        state = self.probe(lease)
        if state == "held" and not self.runs[lease[0]].lease_valid:
            return "lost"
        return state


def error_of(generation: int) -> dict[str, str]:
    return {"type": "builtins.RuntimeError", "message": f"gen {generation}", "traceback": ""}


def output_of(generation: int) -> JSON:
    return {"gen": generation}


# -- the machine -------------------------------------------------------------------------------


def any_lease() -> st.SearchStrategy[Lease]:
    """One of the leases claims have returned so far (rules drawing it need the precondition
    ``has_leases``): as often a lease that still holds its run as any lease, which is mostly
    stale."""
    return st.runner().flatmap(_leases_of)


def _leases_of(machine: RunMachine) -> st.SearchStrategy[Lease]:
    every = st.sampled_from(machine.claimed)
    holding = [lease for lease in machine.claimed if machine.model.holds(lease)]
    return st.one_of(st.sampled_from(holding), every) if holding else every


def has_leases(machine: RunMachine) -> bool:
    return bool(machine.claimed)


def _holding_leases(machine: RunMachine) -> list[Lease]:
    return [lease for lease in machine.claimed if machine.model.holds(lease)]


def has_holding_leases(machine: RunMachine) -> bool:
    return bool(_holding_leases(machine))


def _resumable_keyed_runs(machine: RunMachine) -> list[UUID]:
    """Failed or cancelled runs with a concurrency key."""
    return [
        run_id
        for run_id, run in machine.model.runs.items()
        if run.status in (FAILED, CANCELLED) and run.concurrency_key is not None
    ]


def has_resumable_keyed_runs(machine: RunMachine) -> bool:
    return bool(_resumable_keyed_runs(machine))


class RunMachine(RuleBasedStateMachine):
    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        # Each example starts from empty tables (steps and logs go with their runs).
        Run.objects.all().delete()
        AuditRecord.objects.all().delete()
        self.model = Model()
        self.claimed: list[Lease] = []
        """Every ``(run id, generation)`` a claim returned, in claim order."""
        self.highest_generation: dict[UUID, int] = {}

    # -- helpers -------------------------------------------------------------------------------

    def snapshot(self) -> dict[UUID, Any]:
        steps: dict[UUID, list[Any]] = {}
        for step in Step.objects.order_by("id").values():
            steps.setdefault(step["run_id"], []).append(step)
        return {row["id"]: (row, steps.get(row["id"], [])) for row in Run.objects.values()}

    def assert_unchanged(self, before: dict[UUID, Any], *, but: Collection[UUID] = ()) -> None:
        """Every run not in ``but`` (and its steps) is exactly as it was: a refused write wrote
        nothing, not even ``updated_at``."""
        after = self.snapshot()
        for run_id in set(before) | set(after):
            if run_id not in but:
                assert after.get(run_id) == before.get(run_id), run_id

    def assert_refusal(self, lease: Lease) -> None:
        """A refused write is told apart by reading the run: cancelled under this lease, or the
        lease was lost."""
        assert leases.probe(*lease) == self.model.probe(lease)
        expected = JobCancelled if self.model.probe(lease) == "cancelled" else LeaseLost
        assert type(leases.refusal(*lease)) is expected

    def assert_state_error(self, error: RunStateError, run_id: UUID) -> None:
        assert error.run_id == run_id
        assert error.status == self.model.runs[run_id].status

    def assert_not_found(self, act: Callable[[], object], run_id: UUID) -> None:
        """The operation raises ``RunNotFound`` for this (deleted) run."""
        with pytest.raises(RunNotFound) as missing:
            act()
        assert missing.value.run_id == run_id

    def assert_refused(
        self,
        act: Callable[[], object],
        error: type[RunStateError],
        run_id: UUID,
        before: dict[UUID, Any],
    ) -> None:
        """The operation raises ``error`` naming the run and its status, and changes nothing."""
        with pytest.raises(error) as raised:
            act()
        self.assert_state_error(raised.value, run_id)
        self.assert_unchanged(before)

    def assert_pending_exists(
        self, act: Callable[[], object], pending: UUID, rule: str, before: dict[UUID, Any]
    ) -> None:
        """The operation raises ``PendingRunExists`` naming the pending run, and changes nothing."""
        with pytest.raises(PendingRunExists) as conflict:
            act()
        assert conflict.value.run_id == pending
        reached(rule, "PendingRunExists")
        self.assert_unchanged(before)

    # -- trigger -------------------------------------------------------------------------------

    # Every example starts with a few runs and a claim: Hypothesis turns rules off at random per
    # example (swarm testing), and with ``trigger`` or ``claim`` off, every other rule would be idle
    # for the whole example.
    @initialize(
        target=runs,
        specs=st.lists(st.fixed_dictionaries(TRIGGER), min_size=1, max_size=4),
        worker=st.sampled_from(WORKERS),
        limit=st.integers(1, 3),
    )
    def first_runs(self, specs: list[dict[str, Any]], worker: str, limit: int) -> Any:
        created = [self.trigger_one(**spec) for spec in specs]
        self.claim_runs(worker, limit)
        return multiple(*[run_id for run_id in created if run_id is not None])

    @rule(target=runs, spec=st.fixed_dictionaries(TRIGGER))
    def trigger(self, spec: dict[str, Any]) -> Any:
        created = self.trigger_one(**spec)
        return multiple() if created is None else created

    def trigger_one(
        self,
        job_name: str,
        user: int,
        idempotency_key: str | None,
        concurrency_key: str | None,
        priority: int,
        later: bool,
        coalesce: Coalesce,
    ) -> UUID | None:
        """Trigger through ``Job.trigger``; the new run's id, or ``None`` when none was created."""
        job = JOBS[job_name]
        key = concurrency_key or (f"user:{user}" if job is jobs.per_user else None)
        existing = self.model.with_idempotency_key(job.name, idempotency_key)
        pending = self.model.pending_with_key(job.name, key)

        def call() -> Run:
            return job.trigger(  # type: ignore[no-any-return]
                {"user": user},
                idempotency_key=idempotency_key,
                concurrency_key=concurrency_key,
                priority=priority,
                run_after=timezone.now() + timedelta(hours=1) if later else None,
                coalesce=coalesce,
            )

        if existing is None and pending is not None and coalesce == "error":
            with pytest.raises(PendingRunExists) as raised:
                call()
            assert (raised.value.job_name, raised.value.concurrency_key) == (job.name, key)
            assert raised.value.run_id == pending
            reached("trigger", "PendingRunExists")
            return None

        run = call()

        reached("trigger", run.disposition)

        if existing is not None:
            assert (run.pk, run.disposition) == (existing, "idempotent")
            return None
        if pending is not None:
            assert (run.pk, run.disposition) == (pending, "coalesced")
            return None
        assert run.disposition == "created"
        assert (run.status, run.lease_generation, run.attempt) == (PENDING, 0, 0)
        self.model.runs[run.pk] = ModelRun(
            job_name=job.name,
            idempotency_key=idempotency_key,
            concurrency_key=key,
            priority=priority,
            later=later,
        )
        return run.pk  # type: ignore[no-any-return]

    # -- the worker path -----------------------------------------------------------------------

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 3))
    def claim(self, worker: str, limit: int) -> None:
        self.claim_runs(worker, limit)

    @precondition(has_leases)
    @rule(lease=any_lease(), worker=st.sampled_from(WORKERS))
    def reclaim(self, lease: Lease, worker: str) -> None:
        """A lease lapses and a worker claims: how a stale holder comes about. (Both steps are
        rules of their own too; this one keeps them together when Hypothesis turns rules off.)"""
        self.expire_lease(lease)
        self.claim_runs(worker, 1)

    def claim_runs(self, worker: str, limit: int) -> None:
        run_after = dict(Run.objects.values_list("pk", "run_after"))
        expected = self.model.claim_order(limit, run_after)
        busy = self.model.busy_keys()
        if any(self.model.runs[run_id].concurrency_key in busy for run_id in self.model.ready()):
            reached("claim", "a ready run's key is busy")

        claimed = leases.claim(worker_id=worker, limit=limit, lease_seconds=LEASE_SECONDS)

        assert [run.pk for run in claimed] == expected
        reached("claim", f"{len(claimed)} run(s)")
        for run in claimed:
            model = self.model.runs[run.pk]
            model.status, model.owner, model.lease_valid = LEASED, worker, True
            model.generation += 1
            model.attempt += 1
            # The fencing token is the one this claim wrote, and no claim ever hands it out twice.
            assert (run.status, run.lease_owner) == (LEASED, worker)
            assert (run.lease_generation, run.attempt) == (model.generation, model.attempt)
            lease = (run.pk, run.lease_generation)
            assert lease not in self.claimed
            self.claimed.append(lease)

    # Lists of leases are deduplicated in the rule, not by ``unique=``: with few leases to draw
    # from, a unique list is mostly filtered out.
    @precondition(has_leases)
    @rule(drawn=st.lists(any_lease(), min_size=1, max_size=3))
    def renew(self, drawn: list[Lease]) -> None:
        held = list(dict.fromkeys(drawn))
        expected = {lease: self.model.renewal(lease) for lease in held}
        renewed = {lease[0] for lease, state in expected.items() if state == "held"}
        before = self.snapshot()

        states = leases.renew(held, LEASE_SECONDS)

        assert states == expected
        for state in states.values():
            reached("renew", state)
        self.assert_unchanged(before, but=renewed)
        after = self.snapshot()
        for run_id in renewed:
            assert after[run_id][0]["lease_expires_at"] >= before[run_id][0]["lease_expires_at"]

    @precondition(has_leases)
    @rule(lease=any_lease(), name=st.sampled_from(STEP_NAMES), index=st.integers(0, 3))
    def persist_step(self, lease: Lease, name: str, index: int) -> None:
        run_id, generation = lease
        holds = self.model.holds(lease)
        before = self.snapshot()
        now = timezone.now()

        def call() -> bool:
            return leases.persist_completed_step(
                run_id,
                generation,
                index=index,
                name=name,
                attempt=1,
                output=output_of(generation),
                started_at=now,
                completed_at=now,
            )

        if holds and name in self.model.runs[run_id].steps:
            # A second completed checkpoint of one name: refused by the database, nothing written.
            with pytest.raises(IntegrityError):
                call()
            self.assert_unchanged(before)
            reached("persist step", "IntegrityError")
            return

        written = call()

        assert written is holds
        reached("persist step", "written" if written else f"refused ({self.model.probe(lease)})")
        if holds:
            model = self.model.runs[run_id]
            model.steps[name] = index
            model.current_step_index = index + 1
        else:
            self.assert_unchanged(before)
            self.assert_refusal(lease)

    @rule()
    def a_run_through_its_life(self) -> None:
        """One run through transitions that random draws reach rarely, in order, each through the
        rules above (so the model checks every one): a checkpoint written twice (the database
        refuses the second), a resume and a retrigger of a running run (refused), its completion,
        then a renewal, a checkpoint, a cancel and a resume under the finished lease (refused), and
        its deletion. Its priority puts it first in the claim."""
        run_id = self.trigger_one(
            job_name=jobs.noop.name,
            user=1,
            idempotency_key=None,
            concurrency_key=None,
            priority=9,
            later=False,
            coalesce="error",
        )
        assert run_id is not None
        self.claim_runs("w1", 1)
        lease = self.claimed[-1]
        assert lease[0] == run_id
        self.persist_step(lease, "a", 0)
        self.persist_step(lease, "a", 1)
        self.resume(run_id)
        self.retrigger(run_id, None)
        self.complete_or_fail(lease, completed=True)
        self.renew([lease])
        self.persist_step(lease, "b", 1)
        self.cancel(run_id)
        self.resume(run_id)
        self.delete(run_id)

    @precondition(has_holding_leases)
    @rule(data=st.data(), name=st.sampled_from(STEP_NAMES))
    def cancel_a_running_attempt(self, data: st.DataObject, name: str) -> None:
        """An operator cancels a run under its live lease; then its holder renews, tries to
        checkpoint the step it was in and to complete the run (both refused as cancelled), and
        records the step as cancelled. Drawn on purpose: random draws rarely line these up (which
        of them a run reached depended on Hypothesis's seed, and the seed on this file's text)."""
        lease = data.draw(st.sampled_from(_holding_leases(self)))
        self.cancel(lease[0])
        self.renew([lease])
        self.persist_step(lease, name, 0)
        self.complete_or_fail(lease, completed=True)
        self.record_cancelled_step(lease, name, 0)

    @precondition(has_resumable_keyed_runs)
    @rule(data=st.data())
    def resume_and_retrigger_behind_a_pending_run(self, data: st.DataObject) -> None:
        """A failed or cancelled run whose job and concurrency key have a pending run again: its
        resume and its retrigger are refused. Drawn on purpose, as above."""
        run_id = data.draw(st.sampled_from(_resumable_keyed_runs(self)))
        run = self.model.runs[run_id]
        self.trigger_one(
            job_name=run.job_name,
            user=1,
            idempotency_key=None,
            concurrency_key=run.concurrency_key,
            priority=0,
            later=False,
            coalesce="skip",
        )
        self.resume(run_id)
        self.retrigger(run_id, None)

    @precondition(has_leases)
    @rule(
        drawn=st.lists(
            st.tuples(any_lease(), st.sampled_from([COMPLETED, FAILED])), min_size=1, max_size=3
        )
    )
    def finish(self, drawn: list[tuple[Lease, str]]) -> None:
        rows = list(dict(drawn).items())  # one row per lease: the last drawn
        expected = {lease[0] for lease, _status in rows if self.model.holds(lease)}
        before = self.snapshot()

        recorded = leases.finish(
            [
                FinishRow(
                    run_id,
                    generation,
                    RunStatus(status),  # type: ignore[arg-type]
                    output_of(generation) if status == COMPLETED else error_of(generation),
                )
                for (run_id, generation), status in rows
            ]
        )

        assert set(recorded) == expected
        reached("finish", "all" if len(recorded) == len(rows) else "some" if recorded else "none")
        for (run_id, generation), status in rows:
            if self.model.holds((run_id, generation)):
                self._finished(run_id, generation, status)
        self.assert_unchanged(before, but=expected)

    @precondition(has_leases)
    @rule(lease=any_lease(), completed=st.booleans())
    def complete_or_fail(self, lease: Lease, completed: bool) -> None:
        run_id, generation = lease
        holds = self.model.holds(lease)
        before = self.snapshot()

        if completed:
            won = leases.complete(run_id, generation, output_of(generation))
        else:
            won = leases.fail(run_id, generation, error_of(generation))

        assert won is holds
        reached("complete or fail", "won" if won else f"refused ({self.model.probe(lease)})")
        if holds:
            self._finished(run_id, generation, COMPLETED if completed else FAILED)
        else:
            self.assert_unchanged(before)
            self.assert_refusal(lease)

    def _finished(self, run_id: UUID, generation: int, status: str) -> None:
        model = self.model.runs[run_id]
        model.status, model.lease_valid, model.waiting_for = status, False, None
        if status == COMPLETED:
            model.output = output_of(generation)
        else:
            model.error = error_of(generation)

    @precondition(has_leases)
    @rule(lease=any_lease(), name=st.sampled_from(STEP_NAMES), index=st.integers(0, 3))
    def record_cancelled_step(self, lease: Lease, name: str, index: int) -> None:
        """The one write a lease makes after a cancel: the step it was running. Only the lease the
        run was cancelled under may make it."""
        run_id, generation = lease
        allowed = self.model.probe(lease) == "cancelled"
        before = self.snapshot()
        now = timezone.now()

        recorded = leases.record_cancelled_step(
            run_id, generation, index=index, name=name, attempt=1, started_at=now, completed_at=now
        )

        assert recorded is allowed
        reached("record cancelled step", "recorded" if recorded else "refused")
        if allowed:
            self.model.runs[run_id].cancelled_steps.append((name, index))
        else:
            self.assert_unchanged(before)

    @precondition(has_leases)
    @rule(lease=any_lease())
    def release(self, lease: Lease) -> None:
        run_id, generation = lease
        holds = self.model.holds(lease)
        handed_back = holds and not self.model.runs[run_id].owner
        before = self.snapshot()

        released = leases.release(run_id, generation)

        assert released is (holds and not handed_back)
        reached("release", "released" if released else "refused")
        if handed_back:
            self.assert_unchanged(before)  # handed back once: its attempt is recorded already
        elif holds:
            # Handed back: expired now, and no owner, so the next claim does not count it lost.
            self.model.runs[run_id].lease_valid = False
            self.model.runs[run_id].owner = ""
        else:
            self.assert_unchanged(before)
            self.assert_refusal(lease)

    @precondition(has_leases)
    @rule(lease=any_lease())
    def expire_lease(self, lease: Lease) -> None:
        """The run's current lease lapses, whichever generation holds it (a claimed run is the one
        likely to be leased, hence a lease drawn rather than a run)."""
        # Test arrangement: see the module docstring for why this is an UPDATE, not a wait.
        run_id = lease[0]
        Run.objects.filter(pk=run_id, status=LEASED).update(
            lease_expires_at=DatabaseNow() - timedelta(seconds=1)
        )
        model = self.model.runs.get(run_id)
        reached("expire lease", "expired" if model and model.status == LEASED else "not leased")
        if model is not None and model.status == LEASED:
            model.lease_valid = False

    # -- durable waits (signals) ---------------------------------------------------------------

    @precondition(has_leases)
    @rule(lease=any_lease(), name=st.sampled_from(SIGNALS), index=st.integers(0, 3))
    def wait_for_signal(self, lease: Lease, name: str, index: int) -> None:
        """The holder settles a wait for signal ``name``: consumed if one was sent, else the run
        waits, its lease released. A completed wait is replayed by the job, never settled again."""
        run_id, generation = lease
        holds = self.model.holds(lease)
        if holds and name in self.model.runs[run_id].steps:
            reached("wait for signal", "replayed")
            return
        before = self.snapshot()

        settled = leases.settle(
            run_id, generation, WaitRequest("signal", name, index, signal=name), attempt=1
        )

        if not holds:
            assert settled is None
            reached("wait for signal", f"refused ({self.model.probe(lease)})")
            self.assert_unchanged(before)
            self.assert_refusal(lease)
            return
        model = self.model.runs[run_id]
        if name in model.signals:
            assert isinstance(settled, WaitResult) and settled.status == "done"
            reached("wait for signal", "consumed")
            model.signals.remove(name)  # the oldest of that name
            model.steps[name] = index
            model.current_step_index = index + 1
            model.waiting_for = None
            return
        assert isinstance(settled, leases.Waiting)
        reached("wait for signal", "waiting")
        model.status, model.lease_valid, model.owner = WAITING, False, ""
        model.waiting_for = name
        model.wait_records.setdefault(name, index)

    @rule(run_id=runs, name=st.sampled_from(SIGNALS))
    def send_signal(self, run_id: UUID, name: str) -> None:
        model = self.model.runs.get(run_id)
        before = self.snapshot()
        if model is None:
            reached("send signal", "deleted")
            self.assert_not_found(lambda: waits.send_signal(run_id, name), run_id)
            return
        if model.status in TERMINAL:
            reached("send signal", "RunNotWaiting")
            self.assert_refused(
                lambda: waits.send_signal(run_id, name), RunNotWaiting, run_id, before
            )
            return

        result = waits.send_signal(run_id, name, {"n": len(model.signals)})

        woke = model.status == WAITING and model.waiting_for == name
        assert (result.created, result.woke) == (True, woke)
        reached("send signal", "woke" if woke else "stored")
        model.signals.append(name)
        if woke:
            model.status, model.later = PENDING, False

    @precondition(has_holding_leases)
    @rule(data=st.data(), name=st.sampled_from(SIGNALS), index=st.integers(0, 3))
    def a_signal_before_its_wait(self, data: st.DataObject, name: str, index: int) -> None:
        """A signal sent to a running run, then its wait: consumed at once, without waiting."""
        lease = data.draw(st.sampled_from(_holding_leases(self)))
        self.send_signal(lease[0], name)
        self.wait_for_signal(lease, name, index)

    @precondition(lambda self: self.model.in_status(WAITING))
    @rule(data=st.data(), action=st.sampled_from(["signal", "cancel"]))
    def act_on_a_waiting_run(self, data: st.DataObject, action: str) -> None:
        """Resume (refused), then signal or cancel, a run drawn among the waiting ones (the bundle
        draws any run, so a derandomized run could go without meeting one that waits)."""
        run_id = data.draw(st.sampled_from(self.model.in_status(WAITING)))
        self.resume(run_id)
        if action == "signal":
            self.send_signal(run_id, str(self.model.runs[run_id].waiting_for))
        else:
            self.cancel(run_id)

    # -- operator actions ----------------------------------------------------------------------

    @rule(run_id=runs)
    def cancel(self, run_id: UUID) -> None:
        model = self.model.runs.get(run_id)
        reached("cancel", "deleted" if model is None else model.status)
        before = self.snapshot()
        if model is None:
            self.assert_not_found(lambda: operations.cancel_run(run_id), run_id)
            return
        if model.status in (COMPLETED, FAILED):
            self.assert_refused(
                lambda: operations.cancel_run(run_id), RunNotCancellable, run_id, before
            )
            return

        result = operations.cancel_run(run_id)

        if model.status == CANCELLED:
            assert (result.cancelled, result.from_status) == (False, CANCELLED)
            self.assert_unchanged(before)
            return
        assert (result.cancelled, result.from_status) == (True, model.status)
        model.status, model.lease_valid, model.waiting_for = CANCELLED, False, None

    @rule(run_id=runs)
    def resume(self, run_id: UUID) -> None:
        model = self.model.runs.get(run_id)
        reached("resume", "deleted" if model is None else model.status)
        before = self.snapshot()
        if model is None:
            self.assert_not_found(lambda: operations.resume_run(run_id), run_id)
            return
        if model.status not in (FAILED, CANCELLED):
            self.assert_refused(
                lambda: operations.resume_run(run_id), RunNotResumable, run_id, before
            )
            return
        other = self.model.pending_with_key(model.job_name, model.concurrency_key)
        if other is not None:
            self.assert_pending_exists(
                lambda: operations.resume_run(run_id), other, "resume", before
            )
            return

        result = operations.resume_run(run_id)

        assert (result.run_id, result.from_status) == (run_id, model.status)
        model.status, model.later, model.owner = PENDING, False, ""
        model.output = model.error = None

    @precondition(lambda self: self.model.in_status(COMPLETED, FAILED))
    @rule(target=runs, data=st.data(), key=st.sampled_from([None, "r1"]))
    def retrigger_a_finished_run(self, data: st.DataObject, key: str | None) -> Any:
        """Retrigger a run drawn among the finished ones: the bundle draws any run, and which runs
        are finished when depends on the random run ids (the claim order), so a derandomized run
        could go without ever retriggering a completed one."""
        finished = self.model.in_status(COMPLETED, FAILED)
        return self.retrigger(data.draw(st.sampled_from(finished)), key)

    @rule(target=runs, run_id=runs, key=st.sampled_from([None, "r1"]))
    def retrigger(self, run_id: UUID, key: str | None) -> Any:
        model = self.model.runs.get(run_id)
        reached("retrigger", "deleted" if model is None else model.status)
        before = self.snapshot()
        if model is None:
            self.assert_not_found(
                lambda: operations.retrigger_run(run_id, idempotency_key=key), run_id
            )
            return multiple()
        stored_key = None if key is None else f"retrigger:{run_id}:{key}"
        existing = self.model.with_idempotency_key(model.job_name, stored_key)
        if existing is not None:
            run = operations.retrigger_run(run_id, idempotency_key=key)
            assert (run.pk, run.disposition) == (existing, "idempotent")
            reached("retrigger", "idempotent")
            self.assert_unchanged(before)
            return multiple()
        if model.status not in TERMINAL:
            self.assert_refused(
                lambda: operations.retrigger_run(run_id, idempotency_key=key),
                RunNotRetriggerable,
                run_id,
                before,
            )
            return multiple()
        pending = self.model.pending_with_key(model.job_name, model.concurrency_key)
        if pending is not None:
            self.assert_pending_exists(
                lambda: operations.retrigger_run(run_id, idempotency_key=key),
                pending,
                "retrigger",
                before,
            )
            return multiple()

        run = operations.retrigger_run(run_id, idempotency_key=key)

        assert run.disposition == "created"
        assert run.pk not in self.model.runs
        self.model.runs[run.pk] = ModelRun(
            job_name=model.job_name,
            idempotency_key=stored_key,
            concurrency_key=model.concurrency_key,
            priority=model.priority,
            later=False,
        )
        return run.pk

    @rule(run_id=runs)
    def delete(self, run_id: UUID) -> None:
        model = self.model.runs.get(run_id)
        reached("delete", "deleted" if model is None else model.status)
        before = self.snapshot()
        if model is None:
            self.assert_not_found(lambda: operations.delete_run(run_id), run_id)
            return
        if model.status not in TERMINAL:
            self.assert_refused(
                lambda: operations.delete_run(run_id), RunNotDeletable, run_id, before
            )
            return

        result = operations.delete_run(run_id)

        assert (result.run_id, result.from_status) == (run_id, model.status)
        del self.model.runs[run_id]

    # -- the database agrees with the model ----------------------------------------------------

    @invariant()
    def database_matches_model(self) -> None:
        rows = {row["id"]: row for row in Run.objects.values()}
        valid = set(Run.objects.validly_leased().values_list("pk", flat=True))
        steps: dict[UUID, list[tuple[str, int, str]]] = {}
        for run_id, name, index, status in Step.objects.values_list(
            "run_id", "name", "index", "status"
        ):
            steps.setdefault(run_id, []).append((name, index, status))

        # The invariants, on the rows as stored (whatever the model says).
        assert all(
            row["lease_expires_at"] is not None for row in rows.values() if row["status"] == LEASED
        )
        valid_keys = [rows[run_id]["concurrency_key"] for run_id in valid]
        assert no_duplicates(key for key in valid_keys if key is not None), "one lease per key"
        assert no_duplicates(
            (row["job_name"], row["concurrency_key"])
            for row in rows.values()
            if row["status"] == PENDING
            and row["concurrency_key"] is not None
            and row["waiting_for"] is None
        ), "one pending run per (job, key), woken runs aside"
        assert no_duplicates(
            (run_id, name)
            for run_id, run_steps in steps.items()
            for name, _index, status in run_steps
            if status == "completed"
        ), "one completed step per name"
        for run_id, row in rows.items():
            # A generation only grows, whatever happens to the run.
            assert row["lease_generation"] >= self.highest_generation.get(run_id, 0)
            self.highest_generation[run_id] = row["lease_generation"]

        # The rows, against the model.
        assert set(rows) == set(self.model.runs)
        for run_id, model in self.model.runs.items():
            row = rows[run_id]
            assert {
                "status": row["status"],
                "lease_generation": row["lease_generation"],
                "attempt": row["attempt"],
                "completed_step_count": row["completed_step_count"],
                "current_step_index": row["current_step_index"],
                "job_name": row["job_name"],
                "idempotency_key": row["idempotency_key"],
                "concurrency_key": row["concurrency_key"],
                "priority": row["priority"],
                "output": row["output"],
                "error": row["error"],
                "waiting_for": (row["waiting_for"] or {}).get("signal"),
                "wake_at": row["wake_at"],
            } == {
                "status": model.status,
                "lease_generation": model.generation,
                "attempt": model.attempt,
                "completed_step_count": len(model.steps),
                "current_step_index": model.current_step_index,
                "job_name": model.job_name,
                "idempotency_key": model.idempotency_key,
                "concurrency_key": model.concurrency_key,
                "priority": model.priority,
                "output": model.output,
                "error": model.error,
                "waiting_for": model.waiting_for,
                "wake_at": None,
            }, run_id
            assert sorted(steps.get(run_id, [])) == sorted(
                [(name, index, "completed") for name, index in model.steps.items()]
                + [(name, index, "cancelled") for name, index in model.cancelled_steps]
                + [(name, index, "waiting") for name, index in model.wait_records.items()]
            ), run_id
            assert sorted(
                Signal.objects.filter(run=run_id, consumed_at__isnull=True).values_list(
                    "name", flat=True
                )
            ) == sorted(model.signals), run_id
            if model.status == LEASED:
                assert row["lease_owner"] == model.owner
                assert (run_id in valid) is model.lease_valid
            else:
                assert row["lease_expires_at"] is None
                assert run_id not in valid


def no_duplicates(items: Iterable[Any]) -> bool:
    counted = Counter(items)
    return all(n == 1 for n in counted.values())


def test_run_state_machine__database_agrees_with_the_model(db_alias):
    REACHED.clear()

    run_state_machine_as_test(RunMachine, settings=MACHINE_SETTINGS)

    if MACHINE_SETTINGS.derandomize and EXAMPLES >= DEFAULT_EXAMPLES:
        missing = [outcome for outcome in MUST_REACH if not REACHED[outcome]]
        assert not missing, f"the machine never reached {missing}; reached {dict(REACHED)}"
