"""The model-backed :class:`~django_durably.context.StepStore`: a job's steps, progress and log lines
as the fenced writes of its lease (``leases.writes``).

A refused write stores nothing and raises ``JobCancelled`` when the run was cancelled under this
lease, ``LeaseLost`` otherwise; a database error stops the job as lost. Signals are sent after the
write they describe has committed.

The step boundary (:meth:`ModelStepStore.check`) costs no query while the worker's listener delivers
cancels (PostgreSQL). Otherwise (SQLite, ``process_one``, a listener that reconnected since the lease
was last confirmed) it reads the run (one indexed read; prepared on PostgreSQL), so a cancel
acknowledged before a step starts stops it there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from django_durably import signals
from django_durably.awaiting import WaitRequest, WaitResult, checkpoint_of
from django_durably.database import db_alias
from django_durably.events import send_after_commit
from django_durably.exceptions import LeaseLost, RunWaiting, StepConflict
from django_durably.jobs import Job, TriggerItem, get_job
from django_durably.leases import (
    LeaseHandle,
    Waiting,
    persist_completed_step,
    persist_failed_step,
    persist_log,
    persist_progress,
    probe,
    record_cancelled_step,
    refusal,
    settle,
)
from django_durably.limits import StepCall
from django_durably.models import DatabaseNow, Run, Step, StepStatus
from django_durably.types import JSON, LogLevel

logger = logging.getLogger(__name__)


@contextmanager
def _database_errors_lose_the_lease(run_id: Any) -> Iterator[None]:
    """A checkpoint that could not be written leaves the lease in doubt: stop as lost.

    The run keeps its lease until it expires and is then reclaimed, so a database outage never
    turns into a failed run; it costs at most a repeat of the step that could not be recorded.
    """
    try:
        yield
    except IntegrityError:
        raise
    except DatabaseError as exc:
        raise LeaseLost(run_id, f"Could not write a checkpoint of run {run_id}: {exc}") from exc


class ModelStepStore:
    """Stores the steps, progress and logs of one leased run."""

    def __init__(self, run: Run, lease: LeaseHandle) -> None:
        self.run_id = run.pk
        self.attempt = run.attempt
        self.completed_step_count = run.completed_step_count
        self.lease = lease
        self.alias = db_alias()
        self._run = run
        self._step_chain: dict[str, int] | None = None

    def _after_commit(self, signal: Any, **kwargs: Any) -> None:
        send_after_commit(signal, using=self.alias, run_id=self.run_id, **kwargs)

    def load_completed(self) -> dict[str, JSON]:
        if self.completed_step_count == 0:
            return {}  # nothing to replay: no query on a run's first attempt
        rows = Step.objects.using(self.alias).filter(
            run_id=self.run_id, status=StepStatus.COMPLETED
        )
        with _database_errors_lose_the_lease(self.run_id):
            return dict(rows.values_list("name", "output"))

    def _refused(self) -> BaseException:
        return refusal(self.run_id, self.lease.generation)

    def check(self) -> None:
        self.lease.check()
        if not self.lease.needs_probe():
            return
        sent_at = time.monotonic()
        with _database_errors_lose_the_lease(self.run_id):
            state = probe(self.run_id, self.lease.generation)
        if state == "held":
            self.lease.confirm(sent_at)
            return
        self.lease.state = "cancelled" if state == "cancelled" else "lost"
        self.lease.check()

    def step_started(self, *, index: int, name: str) -> None:
        self._after_commit(signals.step_started, step_name=name, index=index, attempt=self.attempt)

    def step_tries(self, name: str) -> int:
        if self._step_chain is None:
            self._step_chain = {}
            if self._run.retry_at is not None:  # a retry: of a step released until its next try?
                with _database_errors_lose_the_lease(self.run_id):
                    error = (
                        Run.objects.using(self.alias)
                        .filter(pk=self.run_id)
                        .values_list("error", flat=True)
                        .first()
                    )
                if isinstance(error, dict) and error.get("retry") == "step":
                    self._step_chain[str(error.get("step"))] = int(error.get("step_attempt", 0))
        return self._step_chain.get(name, 0)

    def wait(self, seconds: float) -> None:
        self.lease.sleep(seconds)

    @contextmanager
    def timing(self, call: StepCall | None) -> Iterator[None]:
        limits = self.lease.limits
        if call is None or limits is None:
            yield
            return
        limits.step = call
        if self.lease.wake_keeper is not None:
            self.lease.wake_keeper()
        try:
            yield
        finally:
            limits.step = None

    def save_completed(
        self, *, index: int, name: str, output: JSON, started_at: datetime, step_attempt: int = 1
    ) -> None:
        sent_at = time.monotonic()
        with _database_errors_lose_the_lease(self.run_id):
            try:
                held = persist_completed_step(
                    self.run_id,
                    self.lease.generation,
                    index=index,
                    name=name,
                    attempt=self.attempt,
                    output=output,
                    started_at=started_at,
                    # The clock started_at came from, so a duration is never negative.
                    completed_at=timezone.now(),
                    step_attempt=step_attempt,
                )
            except IntegrityError as exc:
                raise StepConflict(
                    f"Step {name!r} of run {self.run_id} was already completed by another execution."
                ) from exc
            if not held:
                raise self._refused()
        self.lease.confirm(sent_at)
        self._after_commit(signals.step_completed, step_name=name, index=index, output=output)

    def save_failed(
        self,
        *,
        index: int,
        name: str,
        error: dict[str, str],
        started_at: datetime,
        step_attempt: int = 1,
    ) -> None:
        sent_at = time.monotonic()
        with _database_errors_lose_the_lease(self.run_id):
            held = persist_failed_step(
                self.run_id,
                self.lease.generation,
                index=index,
                name=name,
                attempt=self.attempt,
                error=error,
                started_at=started_at,
                completed_at=timezone.now(),
                step_attempt=step_attempt,
            )
            if not held:
                raise self._refused()
        self.lease.confirm(sent_at)
        self._after_commit(
            signals.step_failed, step_name=name, index=index, error=error, step_attempt=step_attempt
        )

    def settle_wait(self, request: WaitRequest) -> WaitResult:
        with _database_errors_lose_the_lease(self.run_id):
            settled = settle(self.run_id, self.lease.generation, request, attempt=self.attempt)
        if settled is None:
            raise self._refused()
        if isinstance(settled, Waiting):
            self.lease.state = "finished"  # released: nothing more is written under it
            self._after_commit(
                signals.run_waiting,
                job_name=self._run.job_name,
                step_name=request.step,
                kind=request.kind,
                wake_at=settled.wake_at,
                waiting_for=settled.waiting_for,
            )
            raise RunWaiting(
                self.run_id, step_name=request.step, kind=request.kind, wake_at=settled.wake_at
            )
        if settled.status != "failed":
            self._after_commit(
                signals.step_completed,
                step_name=request.step,
                index=request.index,
                output=checkpoint_of(settled),
            )
        return settled

    def trigger_children(
        self, *, index: int, name: str, job: Any, inputs: list[Any], options: dict[str, Any]
    ) -> list[UUID]:
        target = job if isinstance(job, Job) else get_job(str(job))
        started_at = timezone.now()
        sent_at = time.monotonic()
        with _database_errors_lose_the_lease(self.run_id), transaction.atomic(using=self.alias):
            runs = Run.objects.using(self.alias)
            # The lock first (refused: nothing is created), then the parent's labels to inherit.
            if not runs.held_by(self.run_id, self.lease.generation).update(
                updated_at=DatabaseNow()
            ):
                raise self._refused()
            if options.get("labels") is None:
                labels = runs.filter(pk=self.run_id).values_list("labels", flat=True).get()
                options = {**options, "labels": labels or None}
            children = target.trigger_many(
                [TriggerItem(input=value, parent_id=self.run_id, **options) for value in inputs]
            )
            ids = [child.pk for child in children]
            if not persist_completed_step(
                self.run_id,
                self.lease.generation,
                index=index,
                name=name,
                attempt=self.attempt,
                output=[str(i) for i in ids],
                started_at=started_at,
                completed_at=timezone.now(),
            ):
                raise self._refused()  # rolls the children back with it
        self.lease.confirm(sent_at)
        self._after_commit(
            signals.step_completed, step_name=name, index=index, output=[str(i) for i in ids]
        )
        return ids

    def save_cancelled(self, *, index: int, name: str, started_at: datetime) -> None:
        try:
            recorded = record_cancelled_step(
                self.run_id,
                self.lease.generation,
                index=index,
                name=name,
                attempt=self.attempt,
                started_at=started_at,
                completed_at=timezone.now(),
            )
        except DatabaseError:
            # A record of what happened, not a checkpoint: the cancel stands without it.
            logger.warning(
                "Run %s: could not record step %r as cancelled.",
                self.run_id,
                name,
                exc_info=True,
                extra={"action": "step_cancel_unrecorded", "run_id": str(self.run_id)},
            )
            return
        if recorded:
            self._after_commit(
                signals.step_cancelled, step_name=name, index=index, attempt=self.attempt
            )

    def save_progress(self, progress: dict[str, Any]) -> None:
        sent_at = time.monotonic()
        with _database_errors_lose_the_lease(self.run_id):
            if not persist_progress(self.run_id, self.lease.generation, progress):
                raise self._refused()
        self.lease.confirm(sent_at)
        self._after_commit(signals.run_progress, progress=progress)

    def save_log(self, *, level: LogLevel, message: str, data: JSON, step_name: str | None) -> None:
        sent_at = time.monotonic()
        with _database_errors_lose_the_lease(self.run_id):
            held = persist_log(
                self.run_id,
                self.lease.generation,
                attempt=self.attempt,
                level=level,
                message=message,
                data=data,
                step_name=step_name,
            )
            if not held:
                raise self._refused()
        self.lease.confirm(sent_at)
        self._after_commit(
            signals.run_log, step_name=step_name, level=level, message=message, data=data
        )
