"""What django-durably needs of its database: a locked SQLite database is retried within the busy
timeout instead of failing, and an unmigrated database gets an error saying to run ``migrate``.

The concurrent write that locks a deferred SQLite transaction is injected with
``execute_wrapper`` on the thread under test, between the statements it would come between in
production; the deferred-mode and short-timeout connections come from ``tests.databases``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import DatabaseError, OperationalError, connections, transaction
from django.utils import timezone

from django_durably.database import (
    MAX_RETRY_DELAY,
    ensure_migrated,
    missing_tables_as_not_migrated,
    retry_if_locked,
    unapplied_migrations,
)
from django_durably.exceptions import DatabaseNotMigrated
from django_durably.models import Run
from django_durably.operations import purge_runs
from tests import jobs
from tests.concurrency import start
from tests.databases import deferred_sqlite, empty_database, sqlite_lock_held, swapped_connection
from tests.factories import make_run
from tests.sql import before_first

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

DURABLY_MIGRATIONS = (
    "durably.0001_initial",
    "durably.0002_database_now_on_sqlite",
    "durably.0003_retries_and_attempts",
    "durably.0004_waits",
)


@pytest.fixture
def sqlite_only(db_alias: str) -> str:
    if db_alias != "default":
        pytest.skip(
            "SQLite only: PostgreSQL waits for row locks and never says 'database is locked'"
        )
    return db_alias


def a_concurrent_write() -> None:
    """Another connection (another thread's) writes and commits: a run nobody looks at."""
    start(make_run, job_name="tests.elsewhere").outcome()


INSERT_RUN = 'INSERT INTO "DURABLY_RUN"'


# -- retry_if_locked ---------------------------------------------------------------------------


def test_retry_if_locked__a_keyed_trigger_starts_again_after_a_write_between_lookup_and_insert(
    sqlite_only,
):
    inserts: list[str] = []

    with (
        deferred_sqlite() as connection,
        connection.execute_wrapper(before_first(INSERT_RUN, a_concurrent_write, seen=inserts)),
    ):
        run = jobs.noop.trigger("x", idempotency_key="once")

    assert run.disposition == "created"
    assert len(inserts) == 2  # refused once ("database is locked"), then done again
    assert Run.objects.get(idempotency_key="once").pk == run.pk
    assert Run.objects.filter(job_name="tests.elsewhere").count() == 1


def test_retry_if_locked__a_purge_starts_again_after_a_write_between_its_selection_and_delete(
    sqlite_only,
):
    old = timezone.now() - timedelta(days=2)
    for _ in range(3):
        make_run(status="completed", completed_at=old)

    with (
        deferred_sqlite() as connection,
        connection.execute_wrapper(before_first("DELETE", a_concurrent_write)),
    ):
        purged = purge_runs(timedelta(days=1))

    assert purged == 3
    assert list(Run.objects.values_list("job_name", flat=True)) == ["tests.elsewhere"]


def test_retry_if_locked__gives_up_at_the_busy_timeout_when_the_lock_is_never_released(
    sqlite_only, caplog
):
    # The first attempt is refused at once (a write came between its read and its write); then
    # another connection holds the write lock for good, and every later attempt is refused too.
    timeout = 1.0
    inserts: list[str] = []
    with ExitStack() as lock:

        def write_then_hold_the_lock() -> None:
            a_concurrent_write()
            lock.enter_context(sqlite_lock_held())

        with (
            deferred_sqlite(timeout=timeout) as connection,
            connection.execute_wrapper(
                before_first(INSERT_RUN, write_then_hold_the_lock, seen=inserts)
            ),
            caplog.at_level(logging.WARNING, logger="django_durably.database"),
        ):
            began = time.monotonic()
            with pytest.raises(OperationalError, match="database is locked"):
                jobs.noop.trigger("x", idempotency_key="never")
            elapsed = time.monotonic() - began

    assert len(inserts) > 2
    # Retried until the busy timeout, in total, was spent: the next pause would have passed it.
    assert timeout - MAX_RETRY_DELAY <= elapsed < timeout + 0.4
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"Database 'default' is still locked after {len(inserts)} attempt(s); giving up: "
            "database is locked",
        )
    ]
    assert not Run.objects.filter(idempotency_key="never").exists()


def test_retry_if_locked__immediate_transactions_give_up_once_begin_waited_the_timeout(
    sqlite_only,
):
    timeout = 0.5

    with sqlite_lock_held(), swapped_connection("default", timeout=timeout):
        began = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"):
            jobs.noop.trigger("x", idempotency_key="never")
        elapsed = time.monotonic() - began

    assert timeout <= elapsed < timeout + 0.4  # BEGIN waited the whole timeout: not tried again


def test_retry_if_locked__never_inside_a_callers_transaction(sqlite_only):
    inserts: list[str] = []

    with (
        deferred_sqlite() as connection,
        connection.execute_wrapper(before_first(INSERT_RUN, a_concurrent_write, seen=inserts)),
        pytest.raises(OperationalError, match="database is locked"),
        transaction.atomic(),
    ):
        jobs.noop.trigger("x", idempotency_key="inside")

    assert len(inserts) == 1  # the caller's transaction is spoilt: only the caller can start over


def test_retry_if_locked__never_on_postgresql(db_alias):
    if db_alias != "postgres":
        pytest.skip("PostgreSQL only")
    calls: list[int] = []

    def locked() -> None:
        calls.append(1)
        raise OperationalError("database is locked") from sqlite3.OperationalError(
            "database is locked"
        )

    with pytest.raises(OperationalError):
        retry_if_locked(db_alias, locked)

    assert calls == [1]


def test_retry_if_locked__returns_what_the_function_returns(db_alias):
    assert retry_if_locked(db_alias, lambda a, *, b: (a, b), 1, b=2) == (1, 2)


# -- migrations --------------------------------------------------------------------------------


@pytest.fixture
def unmigrated(db_alias: str, tmp_path: Path) -> Iterator[str]:
    """This thread's connection for the database under test goes to an empty database."""
    with (
        empty_database(connections[db_alias].vendor, tmp_path) as name,
        swapped_connection(db_alias, name=name),
    ):
        yield db_alias


def migrate_command(alias: str) -> str:
    return "python manage.py migrate" + ("" if alias == "default" else f" --database {alias}")


def test_ensure_migrated__passes_on_the_migrated_database(db_alias):
    ensure_migrated(db_alias)

    assert unapplied_migrations(db_alias) == ()


def test_ensure_migrated__names_the_unapplied_migrations_of_an_empty_database(unmigrated):
    with pytest.raises(DatabaseNotMigrated) as raised:
        ensure_migrated(unmigrated)

    error = raised.value
    assert (error.alias, error.unapplied_migrations) == (unmigrated, DURABLY_MIGRATIONS)
    assert str(error) == (
        f"Database {unmigrated!r} is not migrated for django-durably: migrations "
        "durably.0001_initial, durably.0002_database_now_on_sqlite, "
        "durably.0003_retries_and_attempts, durably.0004_waits are not applied. "
        f"Run `{migrate_command(unmigrated)}`."
    )


@pytest.mark.parametrize(
    "options", [pytest.param({}, id="no-keys"), pytest.param({"idempotency_key": "k"}, id="keyed")]
)
def test_missing_tables_as_not_migrated__trigger_on_an_unmigrated_database(unmigrated, options):
    with pytest.raises(DatabaseNotMigrated) as raised:
        jobs.noop.trigger("x", **options)

    error = raised.value
    assert (error.alias, error.unapplied_migrations, error.table) == (
        unmigrated,
        DURABLY_MIGRATIONS,
        "durably_run",
    )
    assert f"Run `{migrate_command(unmigrated)}`." in str(error)
    assert isinstance(error.__cause__, DatabaseError)


def test_missing_tables_as_not_migrated__inside_a_transaction_decides_from_the_error_alone(
    unmigrated,
):
    with pytest.raises(DatabaseNotMigrated) as raised, transaction.atomic(using=unmigrated):
        jobs.noop.trigger("x", idempotency_key="k")

    # No query after the failed statement (on PostgreSQL the transaction cannot take one).
    assert (raised.value.unapplied_migrations, raised.value.table) == ((), "durably_run")
    assert str(raised.value) == (
        f"Database {unmigrated!r} is not migrated for django-durably: it has no table "
        f"durably_run. Run `{migrate_command(unmigrated)}`."
    )


def test_missing_tables_as_not_migrated__other_missing_tables_are_left_alone(db_alias):
    with (
        pytest.raises(DatabaseError) as raised,
        missing_tables_as_not_migrated(db_alias),
        connections[db_alias].cursor() as cursor,
    ):
        cursor.execute("SELECT * FROM shop_order")

    assert not isinstance(raised.value, DatabaseNotMigrated)
