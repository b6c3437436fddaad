"""Claiming, renewing and releasing runs, and the fenced writes that finish them.

This is the only module that locks rows. Every function is one guarded statement (or one short
transaction) whose row count says whether it won; lease times come from the database clock.

* PostgreSQL: ready runs are picked with ``SELECT ... FOR UPDATE SKIP LOCKED`` in one short
  transaction. Runs with a concurrency key are serialised with a transaction-scoped advisory lock on
  the key plus a fresh re-check, and a busy key is skipped so unrelated runs stay claimable.
* SQLite (and any other backend): each candidate is claimed with one conditional UPDATE, which SQLite
  executes under its database write lock, so several worker processes on one file stay correct.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol
from uuid import UUID

from django.db import connections, router, transaction
from django.db.models import (
    BooleanField,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    Value,
)
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Coalesce

from django_durably import signals
from django_durably.conf import durably_settings
from django_durably.database import missing_tables_as_not_migrated
from django_durably.events import send_after_commit
from django_durably.exceptions import DurablyInterrupt, JobCancelled, LeaseLost
from django_durably.models import DatabaseNow, Run, RunQuerySet, RunStatus, Step, StepStatus
from django_durably.notifications import CHANNEL, notify_ready
from django_durably.serialization import dump
from django_durably.types import JSON

LeaseState = Literal["held", "cancelled", "lost", "finished"]


def db_alias() -> str:
    """The database that holds runs (``DATABASE_ROUTERS`` may move them off ``default``)."""
    return router.db_for_write(Run)


def _bound_cursor(alias: str) -> Any:
    from django_durably.postgres import bound_cursor  # psycopg is only there with PostgreSQL

    return bound_cursor(alias)


def lease_expiry(seconds: float) -> ExpressionWrapper[CombinedExpression]:
    """``now + seconds`` by the database clock."""
    return ExpressionWrapper(
        DatabaseNow() + Value(timedelta(seconds=seconds)), output_field=DateTimeField()
    )


# -- inserting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewRun:
    """A validated, unsaved pending run, and what inserting it needs besides the instance."""

    run: Run
    input_json: str | None
    """``run.input`` as the JSON text to store (``None``: SQL NULL, as the ORM stores ``None``)."""
    run_after: datetime | None
    """The trigger's ``run_after``; ``None``: the database clock's now, as the column's default."""


def insert_runs(alias: str, job_name: str, new_runs: Sequence[NewRun]) -> None:
    """Insert pending runs of one job with one statement, whatever their number, and wake the
    workers of their queues when it commits (PostgreSQL only; SQLite uses ``bulk_create``).

    Each run gets the stored ``run_after``, ``created_at`` and ``updated_at`` and is marked saved,
    as ``bulk_create`` would leave it.
    """
    runs = {new.run.pk: new.run for new in new_runs}
    with _bound_cursor(alias) as cursor:
        cursor.execute(
            _INSERT_RUNS_SQL,
            [
                job_name,
                [new.run.pk for new in new_runs],
                [new.run.queue for new in new_runs],
                [new.run.priority for new in new_runs],
                [new.input_json for new in new_runs],
                [new.run.idempotency_key for new in new_runs],
                [new.run.concurrency_key for new in new_runs],
                [dump(new.run.labels) for new in new_runs],
                [new.run_after for new in new_runs],
                CHANNEL,
            ],
        )
        rows = cursor.fetchall()
    if len(rows) != len(runs):  # pragma: no cover - INSERT ... SELECT inserts every row or raises
        raise RuntimeError(f"Inserted {len(rows)} of {len(runs)} runs.")
    for run_id, run_after, created_at, updated_at in rows:
        run = runs[run_id]
        run.run_after, run.created_at, run.updated_at = run_after, created_at, updated_at
        run._state.adding = False
        run._state.db = alias


# Every column of ``durably_run`` but ``created_at`` and ``updated_at`` (their defaults, the
# database clock), with the values a new pending run has; one row per element of the arrays. The
# wake-up is sent from the same statement, once per queue, so it is one round trip and its own
# transaction when the trigger is not inside one. ``run_after`` NULL means now, as its default.
# The always-true WHERE is what runs the notifications, once (PostgreSQL skips a plain CTE that
# nothing reads, and keeps a volatile call such as ``pg_notify`` in a subquery).
_INSERT_RUNS_SQL = """
WITH created AS (
    INSERT INTO durably_run (
        id, job_name, queue, priority, status, input, output, error, idempotency_key,
        concurrency_key, labels, progress, run_after, attempt, current_step_index,
        completed_step_count, lease_owner, lease_expires_at, lease_generation, started_at,
        completed_at
    )
    SELECT
        item.id, %s, item.queue, item.priority, 'pending', item.input::jsonb, NULL, NULL,
        item.idempotency_key, item.concurrency_key, item.labels::jsonb, NULL,
        COALESCE(item.run_after, STATEMENT_TIMESTAMP()), 0, 0, 0, '', NULL, 0, NULL, NULL
    FROM unnest(
        %s::uuid[], %s::text[], %s::integer[], %s::text[], %s::text[], %s::text[], %s::text[],
        %s::timestamptz[]
    ) AS item(id, queue, priority, input, idempotency_key, concurrency_key, labels, run_after)
    RETURNING id, run_after, created_at, updated_at, queue
)
SELECT id, run_after, created_at, updated_at FROM created
WHERE (
    SELECT count(*) FROM (
        SELECT pg_notify(%s, queue) FROM (SELECT DISTINCT queue FROM created) AS queues
    ) AS woken
) >= 0
"""


# -- claiming ----------------------------------------------------------------------------------


def claim(
    *,
    worker_id: str,
    queues: list[str] | None = None,
    limit: int = 1,
    lease_seconds: float | None = None,
) -> list[Run]:
    """Lease up to ``limit`` ready runs to ``worker_id`` and return them, in claim order.

    Each claimed run has ``status='leased'``, ``lease_generation`` bumped (the fencing token every
    later write of this worker must present), ``attempt`` incremented, ``lease_owner`` set and
    ``lease_expires_at`` = database now + ``lease_seconds``. ``started_at`` is kept when a run is
    reclaimed. Runs are never returned to two holders under the same generation.

    The lease returned (generation, owner, expiry) is the one this claim wrote, read from the
    claiming ``UPDATE ... RETURNING`` itself (on SQLite, in the claiming transaction), never
    re-read after the claim committed: by then a cancel, a resume and another worker's claim may
    have moved the run to a later generation.
    """
    if limit < 1:
        return []
    seconds = durably_settings.LEASE_SECONDS if lease_seconds is None else lease_seconds
    alias = db_alias()
    with missing_tables_as_not_migrated(alias):
        if connections[alias].vendor == "postgresql":
            claimed, keyed_waiting = _claim_unkeyed_prefix(alias, worker_id, queues, limit, seconds)
            if len(claimed) < limit and keyed_waiting:
                claimed += _claim_locking(alias, worker_id, queues, limit - len(claimed), seconds)
        else:
            claimed = _claim_conditional(alias, worker_id, queues, limit, seconds)
    claimed.sort(key=lambda run: (-run.priority, run.run_after, run.pk))
    for run in claimed:
        send_after_commit(
            signals.run_leased,
            using=alias,
            run_id=run.pk,
            job_name=run.job_name,
            attempt=run.attempt,
            lease_owner=run.lease_owner,
        )
    return claimed


# What a claim writes, in the hand-written PostgreSQL statements (parameters: the owner, the lease in
# seconds); ``_lease_fields`` is the same for the ORM (SQLite). Both claiming statements return the
# row they wrote (``RETURNING``), so the fencing token a worker holds is the one its claim wrote: a
# worker paused after its claim commits must not pick up a generation written by a later claim.
_LEASE_SET_SQL = """
    status = 'leased',
    lease_generation = run.lease_generation + 1,
    attempt = run.attempt + 1,
    lease_owner = %s,
    lease_expires_at = statement_timestamp() + make_interval(secs => %s),
    started_at = COALESCE(run.started_at, statement_timestamp()),
    updated_at = statement_timestamp()
"""

# The common case on PostgreSQL, in one statement and one round trip: lease the ready runs that come
# before the first run with a concurrency key, in claim order. Runs with a key need an advisory lock
# and a fresh re-check in a transaction of their own (``_claim_locking``), so when one is among the
# candidates (``keyed_waiting``), or nothing was claimed, ``claim`` goes on with that path. The
# LIMIT is a literal (see DESIGN.md section 4).
_UNKEYED_PREFIX_SQL = """
WITH pending AS (
    SELECT id, concurrency_key, priority, run_after FROM durably_run
    WHERE status = 'pending' AND run_after <= statement_timestamp() {queue_filter}
      AND (concurrency_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM durably_run busy
          WHERE busy.concurrency_key = durably_run.concurrency_key
            AND busy.status = 'leased' AND busy.lease_expires_at > statement_timestamp()))
    ORDER BY priority DESC, run_after, id
    LIMIT {limit} FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT id, concurrency_key, priority, run_after FROM durably_run
    WHERE status = 'leased' AND lease_expires_at <= statement_timestamp() {queue_filter}
      AND (concurrency_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM durably_run busy
          WHERE busy.concurrency_key = durably_run.concurrency_key AND busy.id <> durably_run.id
            AND busy.status = 'leased' AND busy.lease_expires_at > statement_timestamp()))
    ORDER BY priority DESC, run_after, id
    LIMIT {limit} FOR UPDATE SKIP LOCKED
), ranked AS (
    SELECT id, concurrency_key,
           row_number() OVER (ORDER BY priority DESC, run_after, id) AS position
    FROM (SELECT * FROM pending UNION ALL SELECT * FROM expired) candidates
), first_keyed AS (
    SELECT min(position) AS position FROM ranked WHERE concurrency_key IS NOT NULL
), picked AS (
    SELECT id FROM ranked
    WHERE position <= {limit}
      AND position < COALESCE((SELECT position FROM first_keyed), {limit} + 1)
)
UPDATE durably_run run SET {lease_set}
FROM picked
WHERE run.id = picked.id
RETURNING {columns}, (SELECT position IS NOT NULL FROM first_keyed) AS keyed_waiting
"""


def _claim_unkeyed_prefix(
    alias: str, worker_id: str, queues: list[str] | None, limit: int, seconds: float
) -> tuple[list[Run], bool]:
    """The claimed runs, and whether a run with a concurrency key waits among the candidates."""
    sql = _UNKEYED_PREFIX_SQL.format(
        limit=int(limit),
        queue_filter="AND queue = ANY(%s)" if queues else "",
        columns=_claimed_columns(alias),
        lease_set=_LEASE_SET_SQL,
    )
    params: list[Any] = [list(queues), list(queues)] if queues else []
    params += [worker_id, float(seconds)]
    with _bound_cursor(alias) as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return [], True
    return [_run_from_row(alias, row[:-1]) for row in rows], bool(rows[0][-1])


# Building ``Run`` instances from the claim's rows, the way the ORM would (``from_db_value``) but
# without a RawQuerySet, which resolves columns, fields and converters again on every query. The
# claim returns what executing a run needs; the rest (results, labels, bookkeeping times) is left
# deferred, so reading it costs a query, as with ``QuerySet.only()``.
_NOT_CLAIMED = frozenset(
    {
        "output",
        "error",
        "labels",
        "progress",
        "idempotency_key",
        "created_at",
        "updated_at",
        "completed_at",
    }
)
_CLAIMED_FIELDS = [field for field in Run._meta.concrete_fields if field.name not in _NOT_CLAIMED]
_CLAIMED_NAMES = frozenset(str(field.attname) for field in _CLAIMED_FIELDS)
_COLUMNS: dict[str, str] = {}
_CONVERTERS: dict[str, list[tuple[int, list[Any], Any]]] = {}


def _claimed_columns(alias: str) -> str:
    if alias not in _COLUMNS:
        quote = connections[alias].ops.quote_name
        _COLUMNS[alias] = ", ".join(f"run.{quote(str(field.column))}" for field in _CLAIMED_FIELDS)
    return _COLUMNS[alias]


def _run_from_row(alias: str, row: Sequence[Any]) -> Run:
    connection = connections[alias]
    if alias not in _CONVERTERS:
        converters = []
        for position, field in enumerate(_CLAIMED_FIELDS):
            found = connection.ops.get_db_converters(field.cached_col)
            found += field.get_db_converters(connection)
            if found:
                converters.append((position, found, field.cached_col))
        _CONVERTERS[alias] = converters
    values = list(row)
    for position, found, column in _CONVERTERS[alias]:
        for converter in found:
            values[position] = converter(values[position], column, connection)
    return Run.from_db(alias, _CLAIMED_NAMES, values)


def _busy_key() -> Exists:
    """Another run with the same concurrency key holds a valid lease."""
    return Exists(
        Run.objects.filter(
            status=RunStatus.LEASED,
            lease_expires_at__gt=DatabaseNow(),
            concurrency_key=OuterRef("concurrency_key"),
        ).exclude(pk=OuterRef("pk"))
    )


def _candidates(
    alias: str,
    queues: list[str] | None,
    limit: int,
    *,
    lock: bool,
    seen: set[UUID],
    keys_done: set[str],
) -> list[Any]:
    """Ready runs in claim order: pending and due first by the index, then expired leases.

    Runs in ``seen`` and runs whose key is in ``keys_done`` (taken by this claim, or busy) are left
    out, so a caller that pages through candidates always moves on to runs it has not decided on.
    """
    order = ("-priority", "run_after", "id")
    sources: list[RunQuerySet] = [
        Run.objects.using(alias).pending().filter(run_after__lte=DatabaseNow()),
        Run.objects.using(alias).expired(),
    ]
    found: list[Any] = []
    for qs in sources:
        if queues:
            qs = qs.filter(queue__in=queues)
        if seen:
            qs = qs.exclude(pk__in=seen)
        if keys_done:
            qs = qs.exclude(concurrency_key__in=keys_done)
        qs = qs.exclude(_busy_key()).order_by(*order)
        if lock:
            qs = qs.select_for_update(skip_locked=True, of=("self",))
        found.extend(qs.values_list("priority", "run_after", "id", "concurrency_key")[:limit])
    found.sort(key=lambda row: (-row[0], row[1], row[2]))
    return found


def _lease_fields(worker_id: str, seconds: float) -> dict[str, Any]:
    return {
        "status": RunStatus.LEASED,
        "lease_generation": F("lease_generation") + 1,
        "attempt": F("attempt") + 1,
        "lease_owner": worker_id,
        "lease_expires_at": lease_expiry(seconds),
        "started_at": Coalesce(F("started_at"), DatabaseNow()),
        "updated_at": DatabaseNow(),
    }


def _each_candidate(
    alias: str, queues: list[str] | None, limit: int, chosen: list[UUID], *, lock: bool
) -> Iterator[tuple[UUID, str | None]]:
    """Ready runs, in claim order, until ``chosen`` (filled by the caller) holds ``limit`` runs.

    Pages through candidates so that runs skipped for a busy key never hide the ones behind them,
    and yields at most one run per concurrency key: once a key was tried (won, or found busy), its
    other runs must wait for a later claim.
    """
    seen: set[UUID] = set()
    keys_done: set[str] = set()
    while len(chosen) < limit and (
        batch := _candidates(
            alias, queues, limit - len(chosen), lock=lock, seen=seen, keys_done=keys_done
        )
    ):
        for _priority, _run_after, run_id, key in batch:
            if len(chosen) == limit:
                return
            seen.add(run_id)
            if key is not None:
                if key in keys_done:
                    continue
                keys_done.add(key)
            yield run_id, key


# Leasing the runs ``_claim_locking`` chose and locked, returning what the claim wrote.
_LEASE_CHOSEN_SQL = """
UPDATE durably_run run SET {lease_set}
WHERE run.id = ANY(%s)
RETURNING {columns}
"""


def _claim_locking(
    alias: str, worker_id: str, queues: list[str] | None, limit: int, seconds: float
) -> list[Run]:
    chosen: list[UUID] = []
    with transaction.atomic(using=alias):
        with connections[alias].cursor() as cursor:
            for run_id, key in _each_candidate(alias, queues, limit, chosen, lock=True):
                if key is not None:
                    if not _try_key_lock(cursor, key):
                        continue
                    # Fresh re-check now that the key is ours for this transaction.
                    if Run.objects.using(alias).leased().filter(concurrency_key=key).exists():
                        continue
                chosen.append(run_id)
        if not chosen:
            return []
        sql = _LEASE_CHOSEN_SQL.format(lease_set=_LEASE_SET_SQL, columns=_claimed_columns(alias))
        with _bound_cursor(alias) as cursor:
            cursor.execute(sql, [worker_id, float(seconds), chosen])
            return [_run_from_row(alias, row) for row in cursor.fetchall()]


def _try_key_lock(cursor: Any, key: str) -> bool:
    cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_key_lock_id(key)])
    return bool(cursor.fetchone()[0])


def _key_lock_id(key: str) -> int:
    """A stable signed 64-bit advisory lock id for a concurrency key."""
    digest = hashlib.blake2b(f"django_durably:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _claim_conditional(
    alias: str, worker_id: str, queues: list[str] | None, limit: int, seconds: float
) -> list[Run]:
    chosen: list[UUID] = []
    claimed: list[Run] = []
    for run_id, _key in _each_candidate(alias, queues, limit, chosen, lock=False):
        # One statement: still ready, and no other valid lease on the key, checked under the
        # database's write lock together with the update itself. The row is read back in the same
        # transaction, under that lock, so the lease returned is the one this UPDATE wrote.
        with transaction.atomic(using=alias):
            runs = Run.objects.using(alias)
            won = (
                runs.ready(queues)
                .filter(pk=run_id)
                .exclude(_busy_key())
                .update(**_lease_fields(worker_id, seconds))
            )
            if won:
                chosen.append(run_id)
                claimed.append(runs.get(pk=run_id))
    return claimed


def lock_oldest_finished(runs: RunQuerySet, limit: int) -> list[UUID]:
    """Lock up to ``limit`` of ``runs``, oldest finished first, for the caller's transaction (to
    purge them); rows another transaction holds are skipped. Row locks live in this module."""
    return list(
        runs.order_by("completed_at")
        .select_for_update(skip_locked=True)
        .values_list("pk", flat=True)[:limit]
    )


# -- while running -----------------------------------------------------------------------------


def renew(
    leases: Collection[tuple[UUID, int]], lease_seconds: float
) -> dict[tuple[UUID, int], LeaseState]:
    """Extend every lease in ``leases`` (``(run_id, generation)`` pairs) in one UPDATE; report each
    one's state, keyed by its pair.

    A lease is renewed only while the run is leased under that generation and the lease has not
    expired. ``cancelled`` means an operator cancelled the run; ``finished`` that this lease
    completed or failed it meanwhile (a renewal racing the run's own end); ``lost`` that the lease
    expired or another worker holds it now. One process may hold two attempts of one run (an old
    one that has not noticed its loss yet, and a new claim), so leases are told apart by their
    generation, not by run id.
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
        .leased()
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
    """Hand a run back at once (its lease expires now) so any worker can claim it immediately.

    Completed checkpoints are kept. Guarded by generation: a no-op if the lease was lost already.
    """
    alias = db_alias()
    with transaction.atomic(using=alias):
        released = bool(
            Run.objects.using(alias)
            .held_by(run_id, generation)
            .update(lease_expires_at=DatabaseNow(), updated_at=DatabaseNow())
        )
        if released:
            queue = Run.objects.using(alias).filter(pk=run_id).values_list("queue", flat=True)
            notify_ready(alias, queue)
    return released


# -- finishing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ending:
    """How a job ended, to be recorded under its lease: ``value`` is the output of a completed run or
    the error of a failed one."""

    run_id: UUID
    generation: int
    status: Literal[RunStatus.COMPLETED, RunStatus.FAILED]
    value: JSON | dict[str, str]


# Finishing runs on PostgreSQL: one statement for any number of runs (a worker records the runs its
# slots finished together), hand-written because it runs for every batch. Same guard as
# ``Run.objects.held_by``, row by row.
_FINISH_SQL = """
UPDATE durably_run run SET
    status = ending.status,
    output = CASE WHEN ending.status = 'completed' THEN ending.value ELSE run.output END,
    error = CASE WHEN ending.status = 'failed' THEN ending.value ELSE run.error END,
    completed_at = statement_timestamp(),
    lease_expires_at = NULL,
    updated_at = statement_timestamp()
FROM (VALUES {rows}) AS ending (id, generation, status, value)
WHERE run.id = ending.id AND run.status = 'leased' AND run.lease_generation = ending.generation
RETURNING run.id
"""
_FINISH_ROW = "(%s::uuid, %s::bigint, %s, %s::jsonb)"


def _jsonb(value: Any) -> str | None:
    """A parameter for ``%s::jsonb``: ``None`` is stored as SQL NULL, as the ORM stores it."""
    return None if value is None else dump(value)


def finish(endings: Sequence[Ending]) -> set[UUID]:
    """Record each run's end (completed with its output, or failed with its error) if its lease still
    holds the run, all in one transaction; return the ids of the runs recorded. A run left out was
    cancelled, or its lease was lost (``refusal`` tells which)."""
    if not endings:
        return set()
    alias = db_alias()
    if connections[alias].vendor == "postgresql":
        params: list[Any] = []
        for ending in endings:
            params += [ending.run_id, ending.generation, ending.status.value, _jsonb(ending.value)]
        sql = _FINISH_SQL.format(rows=", ".join([_FINISH_ROW] * len(endings)))
        with _bound_cursor(alias) as cursor:
            cursor.execute(sql, params)
            return {row[0] for row in cursor.fetchall()}
    won: set[UUID] = set()
    with transaction.atomic(using=alias):
        for ending in endings:
            column = "output" if ending.status == RunStatus.COMPLETED else "error"
            changes: dict[str, Any] = {column: ending.value}
            if (
                Run.objects.using(alias)
                .held_by(ending.run_id, ending.generation)
                .update(
                    status=ending.status,
                    completed_at=DatabaseNow(),
                    lease_expires_at=None,
                    updated_at=DatabaseNow(),
                    **changes,
                )
            ):
                won.add(ending.run_id)
    return won


def complete(run_id: UUID, generation: int, output: JSON) -> bool:
    """Mark the run completed with ``output``, if this lease still holds it."""
    return run_id in finish([Ending(run_id, generation, RunStatus.COMPLETED, output)])


def fail(run_id: UUID, generation: int, error: dict[str, str]) -> bool:
    """Mark the run failed with ``error``, if this lease still holds it."""
    return run_id in finish([Ending(run_id, generation, RunStatus.FAILED, error)])


# Persisting a completed step on PostgreSQL: the guarded counter update and the step's insert in one
# statement (one round trip, one transaction). No row inserted means the guard refused.
_PERSIST_STEP_SQL = """
WITH held AS (
    UPDATE durably_run SET
        current_step_index = %s,
        completed_step_count = completed_step_count + 1,
        updated_at = statement_timestamp()
    WHERE id = %s AND status = 'leased' AND lease_generation = %s
    RETURNING id
)
INSERT INTO durably_step
    (run_id, "index", name, status, attempt, output, error, started_at, completed_at)
SELECT id, %s, %s, 'completed', %s, %s::jsonb, NULL, %s, %s FROM held
RETURNING id
"""


def persist_completed_step(
    run_id: UUID,
    generation: int,
    *,
    index: int,
    name: str,
    attempt: int,
    output: JSON,
    started_at: datetime,
    completed_at: datetime,
) -> bool:
    """Insert a completed step and advance the run's step counters, atomically, if this lease still
    holds the run. Returns whether it did; raises ``IntegrityError`` if the step name already has a
    completed row."""
    alias = db_alias()
    if connections[alias].vendor == "postgresql":
        with _bound_cursor(alias) as cursor:
            cursor.execute(
                _PERSIST_STEP_SQL,
                [
                    index + 1,
                    run_id,
                    generation,
                    index,
                    name,
                    attempt,
                    _jsonb(output),
                    started_at,
                    completed_at,
                ],
            )
            return cursor.fetchone() is not None
    with transaction.atomic(using=alias):
        held = (
            Run.objects.using(alias)
            .held_by(run_id, generation)
            .update(
                current_step_index=index + 1,
                completed_step_count=F("completed_step_count") + 1,
                updated_at=DatabaseNow(),
            )
        )
        if held:
            Step.objects.using(alias).create(
                run_id=run_id,
                index=index,
                name=name,
                status=StepStatus.COMPLETED,
                attempt=attempt,
                output=output,
                started_at=started_at,
                completed_at=completed_at,
            )
    return bool(held)


def refusal(run_id: UUID, generation: int) -> DurablyInterrupt:
    """Why a fenced write of lease ``generation`` was refused: the run was cancelled under that
    lease (``JobCancelled``), or the lease was lost (``LeaseLost``)."""
    return JobCancelled(run_id) if probe(run_id, generation) == "cancelled" else LeaseLost(run_id)


_PROBE_SQL = "SELECT status, lease_generation FROM durably_run WHERE id = %s"


def probe(run_id: UUID, generation: int) -> LeaseState:
    """The state of lease ``generation`` of a run, read from the database (one indexed read).

    ``held`` means the run is leased under that generation (its expiry is the holder's local
    deadline's business); ``cancelled`` that it was cancelled under it; ``finished`` that it ended
    under it; ``lost`` anything else (another claim, a resume, a deleted run).
    """
    alias = db_alias()
    row: Sequence[Any] | None
    if connections[alias].vendor == "postgresql":
        with _bound_cursor(alias) as cursor:  # prepared: a step boundary may ask every time
            cursor.execute(_PROBE_SQL, [run_id])
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


def record_cancelled_step(
    run_id: UUID,
    generation: int,
    *,
    index: int,
    name: str,
    attempt: int,
    started_at: datetime,
    completed_at: datetime,
) -> bool:
    """Record that step ``name`` was running when the run was cancelled under lease ``generation``
    (a ``cancelled`` step row); return whether it was recorded. Nothing is written unless the run is
    still cancelled under that lease: once it was resumed and claimed again, it is not this
    lease's to write."""
    alias = db_alias()
    with transaction.atomic(using=alias):
        # A guarded write first, like every lease-holder write: it locks the run (so no resume and
        # claim can slip in before the insert) and, on SQLite, takes the write lock at once.
        cancelled = (
            Run.objects.using(alias)
            .filter(pk=run_id, status=RunStatus.CANCELLED, lease_generation=generation)
            .update(updated_at=DatabaseNow())
        )
        if cancelled:
            Step.objects.using(alias).create(
                run_id=run_id,
                index=index,
                name=name,
                status=StepStatus.CANCELLED,
                attempt=attempt,
                started_at=started_at,
                completed_at=completed_at,
            )
    return bool(cancelled)


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
    state: LeaseState = "held"
    confirmed_at: float = field(default_factory=time.monotonic)
    feed: CancelFeed | None = None

    @property
    def key(self) -> tuple[UUID, int]:
        """``(run_id, generation)``: one attempt of a run. A process may hold two of one run."""
        return (self.run_id, self.generation)

    def check(self) -> None:
        """Raise :class:`JobCancelled` or :class:`LeaseLost` if the run must stop, as far as this
        process knows (no database access)."""
        if self.state == "cancelled":
            raise JobCancelled(self.run_id)
        if self.state == "lost" or time.monotonic() >= self.deadline:
            self.state = "lost"
            raise LeaseLost(self.run_id)

    def confirm(self, sent_at: float) -> None:
        """A statement sent at ``sent_at`` found the lease held."""
        self.confirmed_at = max(self.confirmed_at, sent_at)

    def needs_probe(self) -> bool:
        """Whether the database must be asked if the run was cancelled: no live feed has been
        listening since before the last confirmation (a cancel committed since then would be
        delivered to this process)."""
        since = None if self.feed is None else self.feed.live_since
        return since is None or since > self.confirmed_at
