"""Database constraints of the models, and migrations that match them (on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import import_module
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from django_durably.models import Run, RunLog, RunStatus, Step, StepStatus
from tests.factories import make_log, make_run, make_step

pytestmark = pytest.mark.django_db(databases="__all__")


def rejected(db_alias: str, create: Any) -> None:
    """``create()`` raises IntegrityError and leaves the connection usable."""
    with pytest.raises(IntegrityError), transaction.atomic(using=db_alias):
        create()


# -- Step: one completed checkpoint per (run, name) ----------------------------------------------


def test_step_constraint__rejects_a_second_completed_step_with_the_same_name(db_alias):
    run = make_run()
    make_step(run, name="fetch", status=StepStatus.COMPLETED)
    rejected(db_alias, lambda: make_step(run, name="fetch", status=StepStatus.COMPLETED, index=1))
    assert Step.objects.filter(run=run, name="fetch").count() == 1


def test_step_constraint__allows_several_failed_attempts(db_alias):
    run = make_run()
    for index in range(3):
        make_step(run, name="fetch", status=StepStatus.FAILED, index=index)
    assert Step.objects.filter(run=run, name="fetch", status=StepStatus.FAILED).count() == 3


def test_step_constraint__allows_failed_then_completed(db_alias):
    run = make_run()
    make_step(run, name="fetch", status=StepStatus.FAILED)
    make_step(run, name="fetch", status=StepStatus.CANCELLED)
    make_step(run, name="fetch", status=StepStatus.COMPLETED)
    make_step(run, name="fetch", status=StepStatus.FAILED)
    assert Step.objects.filter(run=run, name="fetch").count() == 4
    rejected(db_alias, lambda: make_step(run, name="fetch", status=StepStatus.COMPLETED))


def test_step_constraint__is_per_run_and_per_name(db_alias):
    first, second = make_run(), make_run()
    make_step(first, name="fetch", status=StepStatus.COMPLETED)
    make_step(second, name="fetch", status=StepStatus.COMPLETED)
    make_step(first, name="save", status=StepStatus.COMPLETED)
    assert Step.objects.filter(status=StepStatus.COMPLETED).count() == 3


def test_step_constraint__rejects_completing_a_second_row_by_update(db_alias):
    run = make_run()
    make_step(run, name="fetch", status=StepStatus.COMPLETED)
    failed = make_step(run, name="fetch", status=StepStatus.FAILED)
    rejected(
        db_alias,
        lambda: Step.objects.filter(pk=failed.pk).update(status=StepStatus.COMPLETED),
    )


def test_step__deleted_with_its_run(db_alias):
    run = make_run()
    make_step(run, name="fetch", status=StepStatus.COMPLETED)
    make_log(run, message="hello")
    run.delete()
    assert Step.objects.count() == 0
    assert RunLog.objects.count() == 0


# -- Run: idempotency keys -----------------------------------------------------------------------


def test_run_constraint__idempotency_key_unique_per_job(db_alias):
    make_run(idempotency_key="k")
    rejected(db_alias, lambda: make_run(idempotency_key="k"))
    rejected(db_alias, lambda: make_run(idempotency_key="k", status=RunStatus.COMPLETED))
    assert Run.objects.filter(idempotency_key="k").count() == 1


def test_run_constraint__idempotency_key_may_repeat_across_jobs(db_alias):
    make_run(idempotency_key="k")
    make_run(idempotency_key="k", job_name="tests.three_steps")
    assert Run.objects.filter(idempotency_key="k").count() == 2


def test_run_constraint__runs_without_idempotency_key_are_unconstrained(db_alias):
    for _ in range(3):
        make_run(idempotency_key=None)
    assert Run.objects.count() == 3


# -- Run: one pending run per (job, concurrency key) ---------------------------------------------


def test_run_constraint__one_pending_per_concurrency_key(db_alias):
    make_run(concurrency_key="c")
    rejected(db_alias, lambda: make_run(concurrency_key="c"))
    assert Run.objects.filter(concurrency_key="c").count() == 1


@pytest.mark.parametrize(
    "status", [RunStatus.LEASED, RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED]
)
def test_run_constraint__non_pending_runs_share_a_concurrency_key(db_alias, status):
    expiry = timezone.now() + timedelta(minutes=1) if status == RunStatus.LEASED else None
    make_run(concurrency_key="c", status=status, lease_expires_at=expiry)
    make_run(concurrency_key="c", status=status, lease_expires_at=expiry)
    make_run(concurrency_key="c")
    assert Run.objects.filter(concurrency_key="c").count() == 3


def test_run_constraint__concurrency_key_is_per_job(db_alias):
    make_run(concurrency_key="c")
    make_run(concurrency_key="c", job_name="tests.three_steps")
    assert Run.objects.filter(status=RunStatus.PENDING).count() == 2


def test_run_constraint__resuming_into_a_taken_pending_key_is_rejected(db_alias):
    make_run(concurrency_key="c")
    failed = make_run(concurrency_key="c", status=RunStatus.FAILED)
    rejected(
        db_alias,
        lambda: Run.objects.filter(pk=failed.pk).update(status=RunStatus.PENDING),
    )


def test_run_constraint__pending_runs_without_concurrency_key_are_unconstrained(db_alias):
    make_run()
    make_run()
    assert Run.objects.filter(status=RunStatus.PENDING).count() == 2


# -- Run: check constraints ----------------------------------------------------------------------


def test_run_constraint__status_must_be_known(db_alias):
    rejected(db_alias, lambda: make_run(status="paused"))
    run = make_run()
    rejected(db_alias, lambda: Run.objects.filter(pk=run.pk).update(status="done"))
    assert Run.objects.get(pk=run.pk).status == RunStatus.PENDING


def test_run_constraint__leased_needs_a_lease_expiry(db_alias):
    rejected(db_alias, lambda: make_run(status=RunStatus.LEASED))
    run = make_run()
    rejected(db_alias, lambda: Run.objects.filter(pk=run.pk).update(status=RunStatus.LEASED))
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.LEASED, lease_expires_at=timezone.now() + timedelta(seconds=30)
    )
    assert Run.objects.get(pk=run.pk).status == RunStatus.LEASED


@pytest.mark.parametrize("field", ["attempt", "current_step_index", "completed_step_count"])
def test_run_constraint__counters_are_not_negative(db_alias, field):
    rejected(db_alias, lambda: make_run(**{field: -1}))
    assert Run.objects.count() == 0


def test_run__database_defaults(db_alias):
    run = make_run()
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING
    assert (run.queue, run.priority, run.labels) == ("default", 0, {})
    assert run.run_after == run.created_at == run.updated_at
    assert (run.attempt, run.lease_generation, run.completed_step_count) == (0, 0, 0)
    assert run.is_finished is False


# -- migrations and checks -----------------------------------------------------------------------


def test_migrations__match_the_models(db_alias):
    # Exits with status 1 when a migration is missing.
    call_command("makemigrations", "durably", "--check", "--dry-run", verbosity=0)


def test_migrations__nothing_missing_for_any_app(db_alias):
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_check__manage_py_check_passes(db_alias):
    call_command("check", "--fail-level", "WARNING", verbosity=0)


# -- the database clock: one text format on SQLite -------------------------------------------------


def test_database_now__a_time_read_back_and_passed_in_finds_its_row(db_alias):
    """SQLite compares datetimes as text: its clock must write what Django writes for Python
    datetimes, or a run is not >= its own created_at."""
    run = make_run()
    created_at = Run.objects.using(db_alias).get(pk=run.pk).created_at
    runs = Run.objects.using(db_alias)

    assert runs.filter(created_at__gte=created_at).count() == 1
    assert runs.filter(created_at__lte=created_at).count() == 1
    assert runs.filter(created_at=created_at).count() == 1
    assert runs.filter(created_at__lt=created_at).count() == 0
    assert runs.filter(created_at__gt=created_at).count() == 0


def test_migration_0002__makes_times_written_before_it_comparable(db_alias):
    """On SQLite, the clock's old three-digit text gets padded, so a filter by the instant finds the
    row; PostgreSQL stores timestamps, and the migration leaves them alone."""
    connection = connections[db_alias]
    migration = import_module("django_durably.migrations.0002_database_now_on_sqlite")
    run = make_run()
    with connection.cursor() as cursor:  # as the clock wrote it before the migration
        cursor.execute(
            "UPDATE durably_run SET created_at = '2026-11-01 10:00:00.123' WHERE id = %s",
            [run.pk.hex if connection.vendor == "sqlite" else run.pk],
        )
    instant = datetime(2026, 11, 1, 10, 0, 0, 123000, tzinfo=UTC)

    migration.pad_sqlite_milliseconds(None, SimpleNamespace(connection=connection))

    runs = Run.objects.using(db_alias)
    assert runs.filter(created_at=instant).count() == 1
    assert runs.filter(created_at__gte=instant).count() == 1
    assert runs.filter(created_at__lt=instant).count() == 0
