"""Creating runs (trigger, trigger_many) and waiting for them to finish.

Every item is validated before anything is written; then all runs of one call are inserted in one
transaction. Idempotency keys and the one-pending-run-per-concurrency-key rule are enforced by unique
constraints, so concurrent triggers cannot both win; a lost race is retried and resolved to the
existing run.

Every value of an item is checked by ``validation`` (the limits and rules of a trigger live there).
On PostgreSQL the runs are inserted by one prepared statement whatever their number
(``leases.insert_runs``), which also sends the workers' wake-up notification. Without keys to look
up first that statement is the whole trigger: one round trip, its own transaction.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db import IntegrityError, connections, transaction

from django_durably import signals
from django_durably.conf import durably_settings
from django_durably.database import (
    db_alias,
    ensure_outside_transaction,
    missing_tables_as_not_migrated,
    retry_if_locked,
)
from django_durably.events import send_after_commit
from django_durably.exceptions import (
    InvalidTrigger,
    PendingRunExists,
    RunCancelled,
    RunFailed,
    RunNotFound,
    WaitTimeout,
)
from django_durably.jobs import Job, TriggerItem, get_job
from django_durably.leases import NewRun, insert_runs
from django_durably.models import Run, RunLog, RunStatus
from django_durably.types import Coalesce
from django_durably.validation import (
    check_coalesce,
    check_labels,
    check_optional_key,
    check_priority,
    check_queue,
    check_run_after,
    input_json,
    run_pk,
)

TRIGGER_RETRIES = 3


# -- triggering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared(NewRun):
    coalesce: Coalesce


def trigger(job_name: str, input: Any = None, **options: Any) -> Run:
    """Trigger a job by its registered name (``JobNotFound`` if there is none).

    Takes the same keyword options as :meth:`Job.trigger`.
    """
    return get_job(job_name).trigger(input, **options)


def trigger_runs(
    job: Job[Any, Any], items: Sequence[TriggerItem], *, batch: bool = False
) -> list[Run]:
    """Validate every item, then create the runs in one transaction: all or nothing.

    Returns one run per item, in order, each with ``disposition`` set. Raises a subclass of
    :class:`InvalidTrigger` for bad input (with the item's ``index`` when ``batch``, as for
    ``trigger_many()``) and :class:`PendingRunExists` for a concurrency-key conflict; in both cases
    nothing is created.
    """
    prepared = []
    for index, item in enumerate(items):
        try:
            prepared.append(_prepare(job, item))
        except InvalidTrigger as exc:
            if batch:
                exc.at_index(index)
            raise
    if not prepared:
        return []
    alias = db_alias()
    # Keys are looked up before the insert, in the same transaction. Without keys the insert is one
    # statement, atomic by itself (and on PostgreSQL, one round trip: no BEGIN and COMMIT around it).
    has_keys = any(p.run.idempotency_key or p.run.concurrency_key for p in prepared)
    single_statement = not has_keys and connections[alias].vendor == "postgresql"
    with missing_tables_as_not_migrated(alias):
        for attempt in range(TRIGGER_RETRIES):
            try:
                # On SQLite, a deferred transaction whose insert follows a concurrent commit is
                # refused at once ("database is locked"); nothing was written, so start again.
                results, created = retry_if_locked(
                    alias,
                    _insert_in_transaction,
                    job.name,
                    prepared,
                    alias,
                    single_statement=single_statement,
                )
                break
            except IntegrityError:
                # A concurrent trigger took an idempotency key or a pending concurrency key
                # between our read and our insert. Nothing of ours was written; look again.
                if attempt == TRIGGER_RETRIES - 1:
                    raise
    for run in created:
        send_after_commit(signals.run_triggered, using=alias, run=run)
    for run in results:
        if run.disposition == "coalesced":
            send_after_commit(
                signals.run_coalesced,
                using=alias,
                run=run,
                job_name=run.job_name,
                concurrency_key=run.concurrency_key,
            )
    return results


def _insert_in_transaction(
    job_name: str, prepared: list[_Prepared], alias: str, *, single_statement: bool
) -> tuple[list[Run], list[Run]]:
    with contextlib.nullcontext() if single_statement else transaction.atomic(using=alias):
        return _insert(job_name, prepared, alias)


def _insert(job_name: str, prepared: list[_Prepared], alias: str) -> tuple[list[Run], list[Run]]:
    idempotency_keys = {p.run.idempotency_key for p in prepared if p.run.idempotency_key}
    concurrency_keys = {p.run.concurrency_key for p in prepared if p.run.concurrency_key}
    by_idempotency: dict[str, Run] = {}
    if idempotency_keys:
        for found in Run.objects.using(alias).filter(
            job_name=job_name, idempotency_key__in=idempotency_keys
        ):
            by_idempotency[str(found.idempotency_key)] = found
    pending_by_key: dict[str, Run] = {}
    if concurrency_keys:
        for found in (
            Run.objects.using(alias)
            .awaiting_trigger()
            .filter(job_name=job_name, concurrency_key__in=concurrency_keys)
        ):
            pending_by_key[str(found.concurrency_key)] = found

    results: list[Run] = []
    to_create: list[_Prepared] = []
    for item in prepared:
        run = item.run
        if run.idempotency_key and run.idempotency_key in by_idempotency:
            results.append(_with_disposition(by_idempotency[run.idempotency_key], "idempotent"))
            continue
        if run.concurrency_key and run.concurrency_key in pending_by_key:
            existing = pending_by_key[run.concurrency_key]
            if item.coalesce != "skip":
                raise PendingRunExists(
                    job_name=job_name, concurrency_key=run.concurrency_key, run_id=existing.pk
                )
            results.append(_with_disposition(existing, "coalesced"))
            continue
        run.disposition = "created"
        to_create.append(item)
        results.append(run)
        if run.idempotency_key:
            by_idempotency[run.idempotency_key] = run
        if run.concurrency_key:
            pending_by_key[run.concurrency_key] = run
    if to_create:
        _create(job_name, to_create, alias)
    return results, [item.run for item in to_create]


def _create(job_name: str, prepared: list[_Prepared], alias: str) -> None:
    """Insert the runs and wake the workers of their queues (on commit)."""
    if connections[alias].vendor == "postgresql":
        insert_runs(alias, job_name, prepared)  # one statement, the wake-up included
    else:
        Run.objects.using(alias).bulk_create([p.run for p in prepared])  # SQLite: workers poll


def run_of_idempotency_key(job_name: str, idempotency_key: str) -> Run | None:
    """The run that ``idempotency_key`` already made for the job, as a trigger with that key would
    return it (``disposition="idempotent"``), or ``None``."""
    found = (
        Run.objects.using(db_alias())
        .filter(job_name=job_name, idempotency_key=idempotency_key)
        .first()
    )
    return None if found is None else _with_disposition(found, "idempotent")


def _with_disposition(run: Run, disposition: str) -> Run:
    found = copy.copy(run)
    found.disposition = disposition
    return found


def _prepare(job: Job[Any, Any], item: TriggerItem) -> _Prepared:
    """One item's run, its every value checked (``validation``), in the order the errors of an
    item with several invalid values are reported."""
    stored_input, parsed_input = job.prepare_input(item.input)
    stored_json = input_json(job.name, stored_input)
    coalesce = check_coalesce(item.coalesce)
    run_after = check_run_after(item.run_after)
    return _Prepared(
        input_json=None if stored_input is None else stored_json,
        run_after=run_after,
        run=Run(
            job_name=job.name,
            queue=check_queue(
                item.queue
                if item.queue is not None
                else (job.queue or durably_settings.DEFAULT_QUEUE)
            ),
            priority=check_priority(
                next(
                    p
                    for p in (item.priority, job.priority, durably_settings.DEFAULT_PRIORITY)
                    if p is not None
                )
            ),
            input=stored_input,
            idempotency_key=check_optional_key(item.idempotency_key, "idempotency_key"),
            concurrency_key=job.resolve_concurrency_key(item.concurrency_key, parsed_input),
            labels=check_labels(item.labels),
            parent_id=item.parent_id,
            # Not given: the database clock's now, the column's default.
            **({} if run_after is None else {"run_after": run_after}),
        ),
        coalesce=coalesce,
    )


# -- waiting -----------------------------------------------------------------------------------


def trigger_and_wait(job: Job[Any, Any], input: Any, *, timeout: float, **options: Any) -> Run:
    """:meth:`Job.trigger_and_wait <django_durably.jobs.Job.trigger_and_wait>`."""
    ensure_outside_transaction("trigger_and_wait()")
    run = job.trigger(input, **options)
    return wait_for_run(run.id, timeout=timeout)


def wait_for_run(
    run_id: UUID | str,
    timeout: float,
    *,
    poll_interval: float | None = None,
    on_progress: Callable[[dict[str, Any]], object] | None = None,
    on_log: Callable[[RunLog], object] | None = None,
) -> Run:
    """Wait up to ``timeout`` seconds for a run to finish and return it when it completed.

    Raises :class:`RunFailed` or :class:`RunCancelled` (with the run attached) when it ended
    otherwise, :class:`WaitTimeout` when it is still running at the deadline (the run is not
    cancelled), and :class:`RunNotFound` for an unknown id.

    Each poll calls ``on_progress(progress)`` when the run's progress differs from the last value
    passed (or is the first one seen), and ``on_log(line)`` for each :class:`RunLog` line not passed
    yet, oldest first (lines logged before the call included). Both are called before the wait
    returns or raises, so they see the run's last progress and every line. An exception a callback
    raises ends the wait and propagates.
    """
    run_id = run_pk(run_id)
    alias = db_alias()
    deadline = time.monotonic() + timeout
    interval = durably_settings.WAIT_POLL_INTERVAL if poll_interval is None else poll_interval
    progress_seen: Any = None
    last_line = 0
    while True:
        run = Run.objects.using(alias).filter(pk=run_id).first()
        if run is None:
            raise RunNotFound(run_id)
        if on_progress is not None and run.progress is not None and run.progress != progress_seen:
            progress_seen = run.progress
            on_progress(run.progress)
        if on_log is not None:
            # Read after the run: once it is seen finished, every line it logged is visible. The
            # attempt holding the lease writes a run's lines one after another, each committed
            # before the next, so their ids grow in commit order and ``pk > last`` misses none.
            lines = RunLog.objects.using(alias).filter(run_id=run_id, pk__gt=last_line)
            for line in lines.order_by("pk"):
                last_line = line.pk
                on_log(line)
        if run.status == RunStatus.COMPLETED:
            return run
        if run.status == RunStatus.FAILED:
            raise RunFailed(run)
        if run.status == RunStatus.CANCELLED:
            raise RunCancelled(run)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(run.pk, timeout, run.status)
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, max(1.0, interval))
