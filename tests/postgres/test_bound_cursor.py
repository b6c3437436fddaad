"""The cursor of the hand-written PostgreSQL statements: parameters bound on the server, statements
prepared (unless ``DURABLY_PREPARE_STATEMENTS = False``) without preparing Django's own queries,
a pooler that loses prepared statements survived, and wrapped like any Django cursor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import DatabaseError, connections, transaction
from django.test.utils import CaptureQueriesContext

from tests.postgres.statements import deallocate

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def prepare_threshold(alias: str) -> Iterator[None]:
    """As ``OPTIONS = {"prepare_threshold": 2}`` would set it, on the live connection."""
    connection = connections[alias]
    connection.ensure_connection()
    before = connection.connection.prepare_threshold
    connection.connection.prepare_threshold = 2
    try:
        yield
    finally:
        connection.connection.prepare_threshold = before


def prepared_statements(alias: str) -> list[str]:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def run_ten_times(alias: str) -> None:
    from django_durably.postgres import bound_cursor

    for number in range(10):
        with bound_cursor(alias) as cursor:
            cursor.execute("SELECT %s::int + 1 AS durably_probe", [number])
            assert cursor.fetchone() == (number + 1,)


def probes(alias: str) -> list[str]:
    return [s for s in prepared_statements(alias) if "durably_probe" in s]


def test_bound_cursor__prepares_its_statements_once_by_default(alias):
    run_ten_times(alias)

    assert len(probes(alias)) == 1  # one named statement, reused nine times


def test_bound_cursor__leaves_djangos_own_queries_unprepared(alias):
    run_ten_times(alias)
    for _ in range(10):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 41 + 1 AS django_probe")

    assert connections[alias].connection.prepare_threshold is None  # Django's default, restored
    assert not [s for s in prepared_statements(alias) if "django_probe" in s]


def test_bound_cursor__never_prepares_when_switched_off(alias, settings):
    settings.DURABLY_PREPARE_STATEMENTS = False
    run_ten_times(alias)

    assert probes(alias) == []


def test_bound_cursor__switched_off_follows_the_options_prepare_threshold(
    alias, settings, prepare_threshold
):
    settings.DURABLY_PREPARE_STATEMENTS = False
    run_ten_times(alias)

    assert probes(alias)


def deallocate_probes(alias: str) -> None:
    assert deallocate(alias, "%durably_probe%") == 1


def test_bound_cursor__a_lost_prepared_statement_runs_again_unprepared_and_preparing_stops(
    alias, preparing_restored, caplog
):
    run_ten_times(alias)
    deallocate_probes(alias)

    with caplog.at_level("WARNING", logger="django_durably.postgres"):
        run_ten_times(alias)  # asserts every result

    assert probes(alias) == []  # not prepared again: this process stopped preparing
    assert "DURABLY_PREPARE_STATEMENTS = False" in caplog.text
    assert len(caplog.records) == 1


def test_bound_cursor__a_lost_prepared_statement_inside_a_transaction_is_a_database_error(
    alias, preparing_restored
):
    from django_durably.postgres import bound_cursor

    run_ten_times(alias)
    deallocate_probes(alias)

    with pytest.raises(DatabaseError, match="does not exist"):
        with transaction.atomic(using=alias), bound_cursor(alias) as cursor:
            cursor.execute("SELECT %s::int + 1 AS durably_probe", [1])
    run_ten_times(alias)  # the connection is usable, unprepared
    assert probes(alias) == []


def test_bound_cursor__is_seen_by_debug_capture_and_raises_django_errors(alias):
    from django_durably.postgres import bound_cursor

    with CaptureQueriesContext(connections[alias]) as captured:
        with bound_cursor(alias) as cursor:
            cursor.execute("SELECT %s::int", [7])
        with pytest.raises(DatabaseError), bound_cursor(alias) as cursor:
            cursor.execute("SELECT no_such_column FROM durably_run")

    assert "SELECT" in captured.captured_queries[0]["sql"]
    assert len(captured.captured_queries) == 2


def test_bound_cursor__does_not_prepare_while_queries_are_logged(alias):
    with CaptureQueriesContext(connections[alias]) as captured:
        run_ten_times(alias)

    assert probes(alias) == []
    assert all("durably_probe" in query["sql"] for query in captured.captured_queries)
