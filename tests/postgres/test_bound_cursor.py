"""The cursor of the hand-written PostgreSQL statements: parameters bound on the server, statements
prepared only when the database's ``prepare_threshold`` option asks for it (so PgBouncer's
transaction pooling keeps working by default), and wrapped like any Django cursor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import DatabaseError, connections
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def alias() -> str:
    if "postgres" not in settings.DATABASES:
        pytest.skip(settings.POSTGRES_SKIP_REASON or "PostgreSQL is not configured")
    return "postgres"


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


def test_bound_cursor__never_prepares_by_default(alias):
    run_ten_times(alias)

    assert not [s for s in prepared_statements(alias) if "durably_probe" in s]


def test_bound_cursor__prepares_when_the_options_ask_for_it(alias, prepare_threshold):
    run_ten_times(alias)

    assert [s for s in prepared_statements(alias) if "durably_probe" in s]


def test_bound_cursor__is_seen_by_debug_capture_and_raises_django_errors(alias):
    from django_durably.postgres import bound_cursor

    with CaptureQueriesContext(connections[alias]) as captured:
        with bound_cursor(alias) as cursor:
            cursor.execute("SELECT %s::int", [7])
        with pytest.raises(DatabaseError), bound_cursor(alias) as cursor:
            cursor.execute("SELECT no_such_column FROM durably_run")

    assert "SELECT" in captured.captured_queries[0]["sql"]
    assert len(captured.captured_queries) == 2
