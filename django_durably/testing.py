"""Helpers for testing your jobs.

Two ways to test a job:

* **Through the database**, as production runs it: trigger, then :func:`run_pending` (or
  ``process_until_idle``) in a test that commits (pytest-django ``transaction=True``)::

      run = import_contacts.trigger({"user_id": 7})
      run_pending()
      run.refresh_from_db()
      assert run.status == "completed"

* **In memory**, without a database: call the job with a :class:`StepContext` backed by an
  :class:`InMemoryStepStore`. Seed ``completed`` to check what a resumed run does::

      store = InMemoryStepStore(completed={"fetch": [1, 2, 3]})
      result = import_contacts(store.context(), {"user_id": 7})
      assert "fetch" not in store.calls  # replayed, not re-run
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from django_durably.awaiting import WaitRequest, WaitResult, checkpoint_of
from django_durably.context import StepContext
from django_durably.exceptions import JobCancelled, LeaseLost, RunWaiting
from django_durably.limits import StepCall
from django_durably.types import JSON, LogLevel


@dataclass
class StoredStep:
    index: int
    name: str
    status: str
    output: JSON = None
    error: dict[str, str] | None = None
    step_attempt: int = 1


@dataclass
class StoredLog:
    level: LogLevel
    message: str
    data: JSON
    step_name: str | None


# The writes a lease holder makes, which a cancel or a lost lease refuses (``cancel(on=...)``).
Write = Literal["save_completed", "save_failed", "save_progress", "save_log"]
WRITES: tuple[Write, ...] = get_args(Write)


@dataclass
class InMemoryStepStore:
    """A :class:`~django_durably.context.StepStore` that keeps everything in lists.

    ``calls`` lists the names of steps whose function really ran (``started`` the same with each
    step's index); ``steps`` every step stored (completed, failed or cancelled) in order;
    ``checks`` how many times the job asked whether to stop (before each new step, in
    ``progress()`` and ``step.check()``); ``waits`` the delays a step retry waited in place (they
    are recorded, not slept); ``timeouts`` the ``(step name, seconds)`` of timed step calls (not
    enforced: only a worker can end a stuck call). Seed ``tries`` (step name: failed tries) to check
    a step whose next try was released to a later claim.

    :meth:`cancel` and :meth:`lose_lease` stop the run as an operator's cancel or another worker's
    claim would: the next step boundary raises :class:`~django_durably.exceptions.JobCancelled`
    (or :class:`~django_durably.exceptions.LeaseLost`) and every later write is refused. With
    ``on="save_completed"`` (or another write), the stop lands just before that write instead, as
    when a run is cancelled while a step's function runs: the function finishes, its checkpoint is
    refused. Like the database, the store refuses naive ``started_at`` times.

    Durable waits: ``step.sleep`` returns at once (recorded in ``sleeps``); ``wait_for_signal``
    takes the oldest payload seeded in ``signals`` (by signal name) and otherwise unwinds the job
    with :class:`~django_durably.exceptions.RunWaiting`, as in a worker (``waiting`` names the
    step): seed the signal and call the job again with the same store, and it replays up to the
    wait. ``step.trigger`` records ``children`` (id, job name, input) without running them;
    ``wait_for_runs`` returns their outputs once all are in ``child_outputs`` (and unwinds until
    then). Timeouts of waits are not simulated.
    """

    completed: dict[str, JSON] = field(default_factory=dict)
    run_id: uuid.UUID = field(default_factory=uuid.uuid4)
    steps: list[StoredStep] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    logs: list[StoredLog] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    started: list[tuple[int, str]] = field(default_factory=list)
    checks: int = 0
    waits: list[float] = field(default_factory=list)
    timeouts: list[tuple[str, float]] = field(default_factory=list)
    tries: dict[str, int] = field(default_factory=dict)
    signals: dict[str, list[Any]] = field(default_factory=dict)
    sleeps: list[str] = field(default_factory=list)
    children: list[tuple[uuid.UUID, str, Any]] = field(default_factory=list)
    child_outputs: dict[uuid.UUID, Any] = field(default_factory=dict)
    waiting: str | None = None
    cancelled: bool = False
    lease_lost: bool = False
    _stop_on: tuple[Write, Literal["cancelled", "lease_lost"]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def context(self, *, job_name: str = "test", attempt: int = 1) -> StepContext:
        """A :class:`StepContext` for one execution backed by this store."""
        return StepContext(run_id=self.run_id, job_name=job_name, attempt=attempt, store=self)

    def cancel(self, *, on: Write | None = None) -> None:
        """Cancel the run now, or (``on=``) when the job reaches that write."""
        self._stop("cancelled", on)

    def lose_lease(self, *, on: Write | None = None) -> None:
        """Lose the run's lease now, or (``on=``) when the job reaches that write."""
        self._stop("lease_lost", on)

    def _stop(self, how: Literal["cancelled", "lease_lost"], on: Write | None) -> None:
        if on is None:
            setattr(self, how, True)
        elif on in WRITES:
            self._stop_on = (on, how)
        else:
            raise ValueError(f"on= takes one of {', '.join(WRITES)}, not {on!r}")

    def _refuse_stopped(self, write: Write | None = None) -> None:
        if self._stop_on is not None and self._stop_on[0] == write:
            setattr(self, self._stop_on[1], True)
            self._stop_on = None
        if self.cancelled:
            raise JobCancelled(self.run_id)
        if self.lease_lost:
            raise LeaseLost(self.run_id)

    @staticmethod
    def _aware(name: str, started_at: datetime) -> None:
        if started_at.tzinfo is None:
            raise ValueError(f"Step {name!r} was given a naive started_at: {started_at!r}")

    # -- the StepStore protocol ----------------------------------------------------------------

    def load_completed(self) -> dict[str, JSON]:
        return dict(self.completed)

    def check(self) -> None:
        self.checks += 1
        self._refuse_stopped()

    def step_started(self, *, index: int, name: str) -> None:
        self.calls.append(name)
        self.started.append((index, name))

    def step_tries(self, name: str) -> int:
        return self.tries.get(name, 0)

    def wait(self, seconds: float) -> None:
        self.checks += 1
        self._refuse_stopped()
        self.waits.append(seconds)

    @contextmanager
    def timing(self, call: StepCall | None) -> Iterator[None]:
        if call is not None:
            self.timeouts.append((call.name, call.timeout))
        yield

    def save_completed(
        self, *, index: int, name: str, output: JSON, started_at: datetime, step_attempt: int = 1
    ) -> None:
        self._aware(name, started_at)
        self._refuse_stopped("save_completed")
        self.completed[name] = output
        self.steps.append(
            StoredStep(
                index=index, name=name, status="completed", output=output, step_attempt=step_attempt
            )
        )

    def save_failed(
        self,
        *,
        index: int,
        name: str,
        error: dict[str, str],
        started_at: datetime,
        step_attempt: int = 1,
    ) -> None:
        self._aware(name, started_at)
        self._refuse_stopped("save_failed")
        self.steps.append(
            StoredStep(
                index=index, name=name, status="failed", error=error, step_attempt=step_attempt
            )
        )

    def settle_wait(self, request: WaitRequest) -> WaitResult:
        self._refuse_stopped()
        result: WaitResult | None = None
        if request.kind == "sleep":
            self.sleeps.append(request.step)
            result = WaitResult("done")
        elif request.kind == "signal":
            queued = self.signals.get(request.signal or request.step) or []
            if queued:
                result = WaitResult("done", queued.pop(0))
        elif all(run_id in self.child_outputs for run_id in request.runs):
            result = WaitResult("done", [self.child_outputs[i] for i in request.runs])
        if result is None:
            self.waiting = request.step
            raise RunWaiting(self.run_id, step_name=request.step, kind=request.kind)
        self.waiting = None
        output = checkpoint_of(result)
        self.completed[request.step] = output
        self.steps.append(
            StoredStep(index=request.index, name=request.step, status="completed", output=output)
        )
        return result

    def trigger_children(
        self, *, index: int, name: str, job: Any, inputs: list[Any], options: dict[str, Any]
    ) -> list[uuid.UUID]:
        self._refuse_stopped("save_completed")
        job_name = str(getattr(job, "name", job))
        ids = [uuid.uuid4() for _ in inputs]
        self.children += [(i, job_name, value) for i, value in zip(ids, inputs, strict=True)]
        output: JSON = [str(i) for i in ids]
        self.completed[name] = output
        self.steps.append(StoredStep(index=index, name=name, status="completed", output=output))
        return ids

    def save_cancelled(self, *, index: int, name: str, started_at: datetime) -> None:
        self._aware(name, started_at)
        self.steps.append(StoredStep(index=index, name=name, status="cancelled"))

    def save_progress(self, progress: dict[str, Any]) -> None:
        self._refuse_stopped("save_progress")
        self.progress.append(progress)

    def save_log(self, *, level: LogLevel, message: str, data: JSON, step_name: str | None) -> None:
        self._refuse_stopped("save_log")
        self.logs.append(StoredLog(level=level, message=message, data=data, step_name=step_name))


def run_pending(max_runs: int | None = None, *, queues: list[str] | None = None) -> int:
    """Execute ready runs in this process until none is left; return how many ran.

    A thin wrapper over :func:`django_durably.process_until_idle` for tests.
    """
    from django_durably.executor import process_until_idle  # needs the app registry

    return process_until_idle(max_runs, queues=queues)
