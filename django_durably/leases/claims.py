"""Claiming ready runs: who gets a lease, in which order, with which fencing token.

* PostgreSQL: the runs that come before the first run with a concurrency key are leased by one
  statement (``FOR UPDATE SKIP LOCKED``, ``UPDATE ... RETURNING``). Runs with a key are serialised
  with a transaction-scoped advisory lock on the key plus a fresh re-check, and a busy key is
  skipped so unrelated runs stay claimable.
* SQLite (and any other backend): each candidate is claimed with one conditional UPDATE, which
  SQLite executes under its database write lock, so several worker processes on one file stay
  correct; the row is read back under that same lock.

Every path returns the lease it wrote (generation, owner, expiry), never a row read again after
the claim committed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from django.db import connections, transaction
from django.db.models import Exists, OuterRef

from django_durably import signals
from django_durably.conf import durably_settings
from django_durably.database import db_alias, missing_tables_as_not_migrated
from django_durably.events import send_after_commit
from django_durably.leases.statements import (
    CLAIM_UNTIL_A_KEY_SQL,
    KEY_LOCK_SQL,
    LEASE_CHOSEN_SQL,
    LEASE_SET_SQL,
    RECORD_LOST_SQL,
    cursor_for,
    jsonb,
    lease_fields,
)
from django_durably.models import (
    AttemptOutcome,
    DatabaseNow,
    Run,
    RunAttempt,
    RunQuerySet,
    RunStatus,
)

# What the history says of an attempt whose worker stopped renewing its lease.
WORKER_LOST_ERROR = {
    "type": "django_durably.exceptions.WorkerLost",
    "message": "The worker stopped renewing the lease (it died, froze or lost the database); "
    "another worker reclaimed the run.",
    "traceback": "",
}
_WORKER_LOST_JSON = jsonb(WORKER_LOST_ERROR)  # a parameter of every claim: encoded once


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
            claimed, keyed_waiting = _claim_until_a_key(alias, worker_id, queues, limit, seconds)
            if len(claimed) < limit and keyed_waiting:
                more = limit - len(claimed)
                claimed += _claim_serialising_keys(alias, worker_id, queues, more, seconds)
        else:
            claimed = _claim_one_at_a_time(alias, worker_id, queues, limit, seconds)
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


def lock_oldest_finished(runs: RunQuerySet, limit: int) -> list[UUID]:
    """Lock up to ``limit`` of ``runs``, oldest finished first, for the caller's transaction (to
    purge them); rows another transaction holds are skipped. Row locks live in this package."""
    return list(
        runs.order_by("completed_at")
        .select_for_update(skip_locked=True)
        .values_list("pk", flat=True)[:limit]
    )


# -- PostgreSQL: the runs before the first key, in one statement ---------------------------------


def _claim_until_a_key(
    alias: str, worker_id: str, queues: list[str] | None, limit: int, seconds: float
) -> tuple[list[Run], bool]:
    """The claimed runs, and whether a run with a concurrency key waits among the candidates: then
    the keyed path must look."""
    sql = CLAIM_UNTIL_A_KEY_SQL.format(
        limit=int(limit),
        queue_filter="AND queue = ANY(%s)" if queues else "",
        columns=_claimed_columns(alias),
        names=_claimed_names(alias),
        lease_set=LEASE_SET_SQL,
        record_lost=RECORD_LOST_SQL,
    )
    params: list[Any] = [list(queues), list(queues)] if queues else []
    params += [worker_id, float(seconds), _WORKER_LOST_JSON]
    with cursor_for(alias) as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    keyed_waiting = bool(rows[0][-1])
    if rows[0][0] is None:  # nothing claimed: the one row of NULLs beside the flag
        return [], keyed_waiting
    return [_run_from_row(alias, row[:-1]) for row in rows], keyed_waiting


# -- PostgreSQL: runs with a concurrency key, one key lock at a time -----------------------------


def _claim_serialising_keys(
    alias: str, worker_id: str, queues: list[str] | None, limit: int, seconds: float
) -> list[Run]:
    chosen: list[UUID] = []
    with transaction.atomic(using=alias):
        with connections[alias].cursor() as cursor:
            for run_id, key, _candidate in _each_candidate(alias, queues, limit, chosen, lock=True):
                if key is not None:
                    if not _try_key_lock(cursor, key):
                        continue
                    # Fresh re-check now that the key is ours for this transaction.
                    if (
                        Run.objects.using(alias)
                        .validly_leased()
                        .filter(concurrency_key=key)
                        .exists()
                    ):
                        continue
                chosen.append(run_id)
        if not chosen:
            return []
        sql = LEASE_CHOSEN_SQL.format(
            lease_set=LEASE_SET_SQL,
            columns=_claimed_columns(alias),
            names=_claimed_names(alias),
            record_lost=RECORD_LOST_SQL,
        )
        with cursor_for(alias) as cursor:
            cursor.execute(sql, [chosen, worker_id, float(seconds), _WORKER_LOST_JSON])
            return [_run_from_row(alias, row) for row in cursor.fetchall()]


def _try_key_lock(cursor: Any, key: str) -> bool:
    cursor.execute(KEY_LOCK_SQL, [_key_lock_id(key)])
    return bool(cursor.fetchone()[0])


def _key_lock_id(key: str) -> int:
    """A stable signed 64-bit advisory lock id for a concurrency key."""
    digest = hashlib.blake2b(f"django_durably:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# -- SQLite: one conditional UPDATE per candidate ------------------------------------------------


def _claim_one_at_a_time(
    alias: str, worker_id: str, queues: list[str] | None, limit: int, seconds: float
) -> list[Run]:
    chosen: list[UUID] = []
    claimed: list[Run] = []
    for run_id, _key, seen in _each_candidate(alias, queues, limit, chosen, lock=False):
        # One statement: still ready, and no other valid lease on the key, checked under the
        # database's write lock together with the update itself. The row is read back in the same
        # transaction, under that lock, so the lease returned is the one this UPDATE wrote.
        with transaction.atomic(using=alias):
            runs = Run.objects.using(alias)
            won = (
                runs.ready(queues)
                # As it was read: a lost attempt recorded below is the one this claim ends.
                .filter(pk=run_id, lease_generation=seen.lease_generation)
                .exclude(_busy_key())
                .update(**lease_fields(worker_id, seconds))
            )
            if won:
                chosen.append(run_id)
                run = runs.get(pk=run_id)
                claimed.append(run)
                if run.failed_attempts > seen.failed_attempts:  # its worker was lost
                    RunAttempt.objects.using(alias).create(
                        run_id=run_id,
                        number=seen.attempt,
                        worker=seen.lease_owner,
                        started_at=seen.attempt_started_at,
                        ended_at=seen.lease_expires_at or DatabaseNow(),
                        outcome=AttemptOutcome.LOST,
                        error=WORKER_LOST_ERROR,
                    )
    return claimed


# -- candidates, in claim order ------------------------------------------------------------------


class Candidate(NamedTuple):
    """A ready run as the claim found it: its place in the claim order, its key, and the lease it
    had (a reclaim records the attempt it ends)."""

    priority: int
    run_after: datetime
    id: UUID
    concurrency_key: str | None
    lease_generation: int
    failed_attempts: int
    attempt: int
    lease_owner: str
    attempt_started_at: datetime | None
    lease_expires_at: datetime | None


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
    found: list[Candidate] = []
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
        found.extend(Candidate(*row) for row in qs.values_list(*Candidate._fields)[:limit])
    found.sort(key=lambda row: (-row.priority, row.run_after, row.id))
    return found


def _each_candidate(
    alias: str, queues: list[str] | None, limit: int, chosen: list[UUID], *, lock: bool
) -> Iterator[tuple[UUID, str | None, Candidate]]:
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
        for candidate in batch:
            if len(chosen) == limit:
                return
            run_id, key = candidate.id, candidate.concurrency_key
            seen.add(run_id)
            if key is not None:
                if key in keys_done:
                    continue
                keys_done.add(key)
            yield run_id, key, candidate


# -- claimed rows as runs ------------------------------------------------------------------------

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
        "attempt_started_at",  # the attempt's end reads it from the row
        "wake_at",  # a wait reads its own record (a step row), not the run's copy
        "waiting_for",
    }
)
_CLAIMED_FIELDS = [field for field in Run._meta.concrete_fields if field.name not in _NOT_CLAIMED]
_CLAIMED_NAMES = frozenset(str(field.attname) for field in _CLAIMED_FIELDS)
_COLUMNS: dict[str, str] = {}
_NAMES: dict[str, str] = {}
_CONVERTERS: dict[str, list[tuple[int, list[Any], Any]]] = {}


def _claimed_names(alias: str) -> str:
    """The claimed columns as a ``claimed`` CTE returns them (unqualified)."""
    if alias not in _NAMES:
        quote = connections[alias].ops.quote_name
        _NAMES[alias] = ", ".join(quote(str(field.column)) for field in _CLAIMED_FIELDS)
    return _NAMES[alias]


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
