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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django_durably.context import StepContext
from django_durably.exceptions import JobCancelled
from django_durably.types import JSON, LogLevel


@dataclass
class StoredStep:
    index: int
    name: str
    status: str
    output: JSON = None
    error: dict[str, str] | None = None


@dataclass
class StoredLog:
    level: LogLevel
    message: str
    data: JSON
    step_name: str | None


@dataclass
class InMemoryStepStore:
    """A :class:`~django_durably.context.StepStore` that keeps everything in lists.

    ``calls`` lists the names of steps whose function really ran; :meth:`cancel` makes the next
    step boundary raise :class:`~django_durably.exceptions.JobCancelled`, as a cancelled run would.
    """

    completed: dict[str, JSON] = field(default_factory=dict)
    run_id: uuid.UUID = field(default_factory=uuid.uuid4)
    steps: list[StoredStep] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    logs: list[StoredLog] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    cancelled: bool = False

    def context(self, *, job_name: str = "test", attempt: int = 1) -> StepContext:
        """A :class:`StepContext` for one execution backed by this store."""
        return StepContext(run_id=self.run_id, job_name=job_name, attempt=attempt, store=self)

    def cancel(self) -> None:
        self.cancelled = True

    # -- the StepStore protocol ----------------------------------------------------------------

    def load_completed(self) -> dict[str, JSON]:
        return dict(self.completed)

    def check(self) -> None:
        if self.cancelled:
            raise JobCancelled(self.run_id)

    def step_started(self, *, index: int, name: str) -> None:
        self.calls.append(name)

    def save_completed(self, *, index: int, name: str, output: JSON, started_at: datetime) -> None:
        self.check()
        self.completed[name] = output
        self.steps.append(StoredStep(index=index, name=name, status="completed", output=output))

    def save_failed(
        self, *, index: int, name: str, error: dict[str, str], started_at: datetime
    ) -> None:
        self.check()
        self.steps.append(StoredStep(index=index, name=name, status="failed", error=error))

    def save_cancelled(self, *, index: int, name: str, started_at: datetime) -> None:
        self.steps.append(StoredStep(index=index, name=name, status="cancelled"))

    def save_progress(self, progress: dict[str, Any]) -> None:
        self.check()
        self.progress.append(progress)

    def save_log(self, *, level: LogLevel, message: str, data: JSON, step_name: str | None) -> None:
        self.check()
        self.logs.append(StoredLog(level=level, message=message, data=data, step_name=step_name))


def run_pending(max_runs: int | None = None, *, queues: list[str] | None = None) -> int:
    """Execute ready runs in this process until none is left; return how many ran.

    A thin wrapper over :func:`django_durably.process_until_idle` for tests.
    """
    from django_durably.executor import process_until_idle  # needs the app registry

    return process_until_idle(max_runs, queues=queues)
