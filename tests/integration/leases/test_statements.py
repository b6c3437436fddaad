"""The hand-written statements agree with the ORM expressions they restate (leases.statements):
each pair is applied to the same rows and must decide and write the same. Change one side, and a
test here fails."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections, transaction
from django.db.models.functions import Now

from django_durably.leases import FinishRow, claims, writes
from django_durably.leases.statements import (
    FINISH_RECORDING_SQL,
    FINISH_ROW,
    FINISH_SQL,
    HELD_BY_SQL,
    LEASE_SET_SQL,
    cursor_for,
    jsonb,
    lease_fields,
)
from django_durably.models import AttemptOutcome, Run, RunAttempt, RunStatus
from tests.factories import make_run

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

# Columns compared between the ORM's and the statement's result; the times are checked apart.
COMPARED = [
    "status",
    "lease_generation",
    "attempt",
    "failed_attempts",
    "lease_owner",
    "output",
    "error",
    "current_step_index",
    "completed_step_count",
]


def postgres_only(alias: str) -> None:
    if connections[alias].vendor != "postgresql":
        pytest.skip("the hand-written statements run on PostgreSQL only")


def row(run: Run) -> dict[str, Any]:
    return dict(Run.objects.filter(pk=run.pk).values(*COMPARED).get())


def lease_seconds_left(run: Run) -> float:
    fresh = Run.objects.filter(pk=run.pk).annotate(now=Now()).values("now", "lease_expires_at")
    values = fresh.get()
    if values["lease_expires_at"] is None:
        return 0.0
    return float((values["lease_expires_at"] - values["now"]).total_seconds())


def twins(**fields: Any) -> tuple[Run, Run]:
    """Two runs alike in every compared column."""
    return make_run(**fields), make_run(**fields)


def test_held_by__the_sql_guard_selects_what_the_queryset_selects(db_alias):
    soon = Now() + timedelta(seconds=60)
    runs = [
        make_run(status=status, lease_generation=generation, lease_expires_at=soon)
        for status in RunStatus.values
        for generation in (1, 2)
    ]
    connection = connections[db_alias]
    sql = f"SELECT run.id FROM durably_run run WHERE run.id = %s AND {HELD_BY_SQL}".format(  # noqa: S608 - our constant
        generation="%s"
    )

    for run in runs:
        for generation in (1, 2):
            by_orm = Run.objects.held_by(run.pk, generation).exists()
            with connection.cursor() as cursor:
                pk = run.pk if connection.vendor == "postgresql" else run.pk.hex
                cursor.execute(sql, [pk, generation])
                by_sql = cursor.fetchone() is not None
            assert by_sql == by_orm, (run.status, run.lease_generation, generation)
    assert sum(Run.objects.held_by(r.pk, r.lease_generation).exists() for r in runs) == 2


def test_lease_set__writes_what_lease_fields_writes(db_alias):
    postgres_only(db_alias)
    by_orm, by_sql = twins(status=RunStatus.PENDING, lease_generation=3, attempt=3)

    Run.objects.filter(pk=by_orm.pk).update(**lease_fields("w", 30))
    with cursor_for(db_alias) as cursor:
        cursor.execute(
            f"UPDATE durably_run run SET {LEASE_SET_SQL} WHERE run.id = %s",  # noqa: S608
            ["w", 30.0, by_sql.pk],
        )

    assert row(by_sql) == row(by_orm)
    assert row(by_orm)["lease_generation"] == 4
    for run in (by_orm, by_sql):
        assert 25 < lease_seconds_left(run) <= 30
        assert Run.objects.get(pk=run.pk).started_at is not None


ENDINGS = [
    FinishRow(uuid.uuid4(), 2, RunStatus.COMPLETED, {"out": "1"}),
    FinishRow(uuid.uuid4(), 2, RunStatus.FAILED, {"type": "E", "message": "m"}),
    FinishRow(uuid.uuid4(), 2, RunStatus.PENDING, {"type": "E", "message": "m"}, retry_delay=30),
    FinishRow(
        uuid.uuid4(),
        2,
        RunStatus.PENDING,
        {"type": "E", "message": "m", "retry": "step"},
        outcome=AttemptOutcome.STEP_RETRY,
        retry_delay=30,
        counted=False,
    ),
    FinishRow(
        uuid.uuid4(),
        2,
        RunStatus.FAILED,
        {"type": "T", "message": "m"},
        outcome=AttemptOutcome.TIMED_OUT,
        bump_generation=True,
    ),
]


@pytest.mark.parametrize("ending", ENDINGS, ids=lambda e: f"{e.status}-{e.attempt_outcome}")
def test_finish__the_statement_writes_what_the_orm_writes(db_alias, ending):
    """``FINISH_SQL`` (PostgreSQL) and the ORM's ``_finish_one`` (SQLite) end a run alike: status,
    output or error, counters, generation, the retry time (database now + delay) and the attempt's
    history row."""
    postgres_only(db_alias)
    fields = {
        "status": RunStatus.LEASED,
        "lease_generation": 2,
        "attempt": 3,
        "failed_attempts": 1,
        "lease_owner": "w",
        "attempt_started_at": Now(),
        "lease_expires_at": Now() + timedelta(seconds=60),
    }
    by_orm, by_sql = twins(**fields)

    with transaction.atomic():
        assert writes._finish_one(db_alias, dataclasses.replace(ending, run_id=by_orm.pk))
        if ending.status != RunStatus.COMPLETED:
            writes.record_attempt(db_alias, by_orm.pk, ending.attempt_outcome, ending.value)
    with cursor_for(db_alias) as cursor:
        cursor.execute(
            (FINISH_SQL if ending.status == RunStatus.COMPLETED else FINISH_RECORDING_SQL).format(
                rows=FINISH_ROW
            ),
            [
                by_sql.pk,
                2,
                ending.status.value,
                ending.attempt_outcome.value,
                jsonb(ending.value),
                float(ending.retry_delay),
                int(ending.counts),
                int(ending.bump_generation),
            ],
        )
        assert [r[0] for r in cursor.fetchall()] == [by_sql.pk]

    assert row(by_sql) == row(by_orm)
    for run in (by_orm, by_sql):
        stored = Run.objects.get(pk=run.pk)
        assert stored.status == ending.status
        assert stored.lease_expires_at is None
        if ending.status == RunStatus.PENDING:
            assert stored.completed_at is None
            assert stored.retry_at == stored.run_after
            assert stored.run_after - stored.updated_at == timedelta(seconds=30)
        else:
            assert stored.completed_at is not None
            assert stored.retry_at is None
        (attempt,) = stored.attempt_history()  # a completed one is the run's own record
        assert (attempt.number, attempt.worker, attempt.outcome) == (3, "w", ending.attempt_outcome)
        assert attempt.started_at == stored.attempt_started_at
        assert attempt.error == (None if ending.status == RunStatus.COMPLETED else ending.value)
        assert attempt.retry_at == stored.retry_at
        saved = RunAttempt.objects.filter(run=run.pk).count()
        assert saved == (0 if ending.status == RunStatus.COMPLETED else 1)


def test_claim_until_a_key__leases_the_orm_candidates_in_their_order(db_alias):
    """The one-statement claim takes the ready runs that ``_candidates`` (the ORM's claimable set,
    in claim order) lists before the first run with a concurrency key."""
    postgres_only(db_alias)
    past = Now() - timedelta(seconds=5)
    for priority, seconds_ago in ((0, 30), (5, 10), (5, 20), (0, 40), (1, 0)):
        make_run(priority=priority, run_after=Now() - timedelta(seconds=seconds_ago))
    make_run(priority=9, run_after=Now() + timedelta(hours=1))  # not due
    make_run(status=RunStatus.LEASED, lease_generation=1, lease_expires_at=past, priority=2)
    make_run(
        status=RunStatus.LEASED, lease_generation=1, lease_expires_at=Now() + timedelta(seconds=60)
    )
    make_run(priority=-1, concurrency_key="k")  # the first keyed run: the statement stops here
    make_run(priority=-2)
    alias: str = db_alias
    candidates = claims._candidates(alias, None, 20, lock=False, seen=set(), keys_done=set())
    expected: list[Any] = []
    for candidate in candidates:
        if candidate.concurrency_key is not None:
            break
        expected.append(candidate.id)

    with transaction.atomic(using=alias):
        claimed, keyed_waiting = claims._claim_until_a_key(alias, "w", None, 20, 30.0)
        transaction.set_rollback(True, using=alias)

    assert [run.pk for run in claimed] == expected
    assert len(expected) == 6  # five pending and due, one expired lease
    assert keyed_waiting is True
