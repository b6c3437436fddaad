"""Creating runs (trigger, trigger_many) and waiting for them to finish.

Every item is validated before anything is written; then all runs of one call are inserted in one
transaction. Idempotency keys and the one-pending-run-per-concurrency-key rule are enforced by unique
constraints, so concurrent triggers cannot both win; a lost race is retried and resolved to the
existing run.

On PostgreSQL the runs are inserted by one prepared statement whatever their number
(``leases.insert_runs``), which also sends the workers' wake-up notification. Without keys to look
up first that statement is the whole trigger: one round trip, its own transaction.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import IntegrityError, connections, transaction

from django_durably import signals
from django_durably.conf import durably_settings
from django_durably.database import db_alias, missing_tables_as_not_migrated, retry_if_locked
from django_durably.events import send_after_commit
from django_durably.exceptions import (
    DurablyError,
    InvalidInput,
    InvalidLabels,
    InvalidRunAfter,
    InvalidTrigger,
    PendingRunExists,
    RunCancelled,
    RunFailed,
    RunNotFound,
    WaitTimeout,
)
from django_durably.jobs import (
    MAX_QUEUE_LENGTH,
    PRIORITY_RANGE,
    Job,
    TriggerItem,
    check_key,
    get_job,
    is_short_text,
)
from django_durably.leases import NewRun, insert_runs
from django_durably.models import Run, RunLog, RunStatus
from django_durably.serialization import dump, unstorable_text
from django_durably.types import Coalesce

LABEL_KEY_PATTERN = re.compile(r"[A-Za-z0-9._/-]+")
MAX_LABELS = 32
MAX_LABEL_KEY_LENGTH = 100
MAX_LABEL_VALUE_LENGTH = 500
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
            .pending()
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
    stored_input, parsed_input = job.prepare_input(item.input)
    stored_json = dump(stored_input)
    size = len(stored_json.encode())
    if size > durably_settings.MAX_INPUT_BYTES:
        raise InvalidInput(
            f"Input of job {job.name!r} is {size} bytes of JSON; the limit is "
            f"{durably_settings.MAX_INPUT_BYTES} (DURABLY_MAX_INPUT_BYTES).",
            field="input",
        )
    if item.coalesce not in ("error", "skip"):
        raise InvalidTrigger(
            f"coalesce must be 'error' or 'skip', got {item.coalesce!r}.", field="coalesce"
        )
    run_after = _run_after(item.run_after)
    return _Prepared(
        input_json=None if stored_input is None else stored_json,
        run_after=run_after,
        run=Run(
            job_name=job.name,
            queue=_queue(
                item.queue
                if item.queue is not None
                else (job.queue or durably_settings.DEFAULT_QUEUE)
            ),
            priority=_priority(
                next(
                    p
                    for p in (item.priority, job.priority, durably_settings.DEFAULT_PRIORITY)
                    if p is not None
                )
            ),
            input=stored_input,
            idempotency_key=_idempotency_key(item.idempotency_key),
            concurrency_key=job.resolve_concurrency_key(item.concurrency_key, parsed_input),
            labels=validate_labels(item.labels),
            # Not given: the database clock's now, the column's default.
            **({} if run_after is None else {"run_after": run_after}),
        ),
        coalesce=item.coalesce,
    )


def validate_labels(labels: Any) -> dict[str, str]:
    """Check labels: a flat object of ``[A-Za-z0-9._/-]+`` keys and string values."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise InvalidLabels(
            f"labels must be an object of string keys and string values, got {type(labels).__name__}.",
            field="labels",
        )
    if len(labels) > MAX_LABELS:
        raise InvalidLabels(f"At most {MAX_LABELS} labels are allowed.", field="labels")
    for key, value in labels.items():
        if (
            not isinstance(key, str)
            or len(key) > MAX_LABEL_KEY_LENGTH
            or not LABEL_KEY_PATTERN.fullmatch(key)
        ):
            raise InvalidLabels(
                f"Label key {key!r} is invalid: keys are 1-{MAX_LABEL_KEY_LENGTH} characters of "
                "letters, digits, '.', '_', '/' and '-'.",
                field="labels",
            )
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE_LENGTH:
            raise InvalidLabels(
                f"Label {key!r} has value {value!r}: values are strings of at most "
                f"{MAX_LABEL_VALUE_LENGTH} characters.",
                field="labels",
            )
        if (problem := unstorable_text(value)) is not None:
            raise InvalidLabels(f"Label {key!r} has a value that {problem}.", field="labels")
    return dict(labels)


def _idempotency_key(key: Any) -> str | None:
    return None if key is None else check_key(key, "idempotency_key")


def _queue(queue: Any) -> str:
    if not is_short_text(queue, MAX_QUEUE_LENGTH):
        raise InvalidTrigger(
            f"queue must be a non-empty string of at most {MAX_QUEUE_LENGTH} characters, "
            f"got {queue!r}.",
            field="queue",
        )
    return str(queue)


def _priority(priority: Any) -> int:
    low, high = PRIORITY_RANGE
    if not isinstance(priority, int) or isinstance(priority, bool) or not low <= priority <= high:
        raise InvalidTrigger(
            f"priority must be an integer between {low} and {high}, got {priority!r}.",
            field="priority",
        )
    return priority


def _run_after(run_after: Any) -> datetime | None:
    if run_after is None:
        return None
    if not isinstance(run_after, datetime):
        raise InvalidRunAfter(
            f"run_after must be a timezone-aware datetime, got {type(run_after).__name__}.",
            field="run_after",
        )
    if run_after.tzinfo is None or run_after.utcoffset() is None:
        raise InvalidRunAfter(
            f"run_after must be timezone-aware, got the naive datetime {run_after.isoformat()}; "
            "use django.utils.timezone.now() + timedelta(...) or attach a tzinfo.",
            field="run_after",
        )
    return run_after


def run_pk(run_id: UUID | str) -> UUID:
    if isinstance(run_id, UUID):
        return run_id
    try:
        return UUID(str(run_id))
    except ValueError:
        raise RunNotFound(run_id) from None


# -- waiting -----------------------------------------------------------------------------------


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


def ensure_outside_transaction(what: str) -> None:
    """Refuse calls that cannot work inside a caller's ``transaction.atomic()``.

    A run is invisible to workers until its trigger commits, and a claim must commit before its job
    runs (or the lease and checkpoints would be invisible to other processes).
    """
    if connections[db_alias()].in_atomic_block:
        raise DurablyError(
            f"{what} cannot be called inside a transaction (atomic block): runs must be committed "
            "before a worker can claim them, and a claim must commit before its job runs. Call it "
            "outside transaction.atomic(); in pytest-django tests, use "
            "django_db(transaction=True)."
        )
