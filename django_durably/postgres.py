"""PostgreSQL-only helpers (imported only once a PostgreSQL connection is in use: psycopg is an
optional dependency)."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from django.db import connections
from django.db.backends.postgresql.psycopg_any import register_tzloader
from django.db.backends.utils import CursorWrapper
from psycopg import errors
from psycopg.pq import Format, TransactionStatus

from django_durably.conf import durably_settings

logger = logging.getLogger("django_durably.postgres")

_TIMESTAMPTZ_OID = psycopg.adapters.types["timestamptz"].oid

# What PostgreSQL answers when a named statement this connection prepared is gone, or when another
# client's statement of the same name is there: the connection is shared through a pooler that does
# not keep prepared statements apart (PgBouncer before 1.21, or ``max_prepared_statements = 0``).
# Either way the statement did not run.
_POOLER_LOST_PREPARED = (errors.InvalidSqlStatementName, errors.DuplicatePreparedStatement)


class _Preparing:
    """Whether this process still prepares its hot statements: it stops, once, when a pooler turns
    out to lose them."""

    works = True


def bound_cursor(alias: str) -> CursorWrapper:
    """A cursor for django-durably's hand-written statements, which run for every claim, step and
    finish: the parameters travel apart from the statement (server-side binding), and the statement
    is prepared, so PostgreSQL parses and plans it once per connection rather than on every call.
    Planning was nearly half of what a step checkpoint cost the server.

    ``DURABLY_PREPARE_STATEMENTS = False`` turns the preparing off, and so does query logging
    (``DEBUG``, or a test capturing queries), whose log needs the SQL text. Statements are then
    prepared only if the database's ``OPTIONS`` set ``prepare_threshold``, as for Django's own
    cursors. If a pooler loses a prepared statement anyway, the statement runs again unprepared
    (when no transaction was open), a warning is logged, and this process stops preparing.

    The cursor is wrapped like any Django cursor: errors become ``django.db`` errors, and debug
    logging and ``execute_wrapper`` see it.
    """
    connection = connections[alias]
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    # Not while Django logs queries (DEBUG, or a test capturing them): the log shows the SQL of
    # unprepared statements only.
    logged = connection.queries_logged
    preparing = durably_settings.PREPARE_STATEMENTS and _Preparing.works and not logged
    cursor_class = _PreparingCursor if preparing else psycopg.Cursor
    with connection.wrap_database_errors:
        raw: psycopg.Cursor[Any] = cursor_class(connection.connection)
    # As Django's own cursors: the connection's time zone for timestamps read, if it differs.
    loader = connection.connection.adapters.get_loader(_TIMESTAMPTZ_OID, Format.TEXT)
    if connection.timezone != getattr(loader, "timezone", None):
        register_tzloader(connection.timezone, raw)
    wrapped: Any = raw  # Django's wrappers are typed for its own cursors, and work with any
    if logged:
        return connection.make_debug_cursor(wrapped)
    return connection.make_cursor(wrapped)


class _PreparingCursor(psycopg.Cursor[Any]):
    """Prepares every statement it runs, whatever the connection's ``prepare_threshold`` says for
    Django's own queries (by default nothing is prepared, and it stays that way for them)."""

    def execute(  # type: ignore[override]  # same call, narrower keywords
        self, query: Any, params: Any = None, *, binary: bool | None = None
    ) -> psycopg.Cursor[Any]:
        connection = self.connection
        threshold = connection.prepare_threshold
        if threshold is None:
            connection.prepare_threshold = 1 << 30  # psycopg prepares nothing while it is None
        try:
            return super().execute(query, params, prepare=True, binary=binary)
        except _POOLER_LOST_PREPARED as exc:
            _Preparing.works = False
            logger.warning(
                "A prepared statement of django-durably was lost (%s): the database connection "
                "goes through a pooler that does not keep prepared statements. This process stops "
                "preparing them; set DURABLY_PREPARE_STATEMENTS = False to start that way.",
                exc.sqlstate,
            )
            if connection.info.transaction_status != TransactionStatus.IDLE:
                raise  # the transaction is spoilt: the caller's error handling takes over
            return super().execute(query, params, prepare=False, binary=binary)
        finally:
            connection.prepare_threshold = threshold
