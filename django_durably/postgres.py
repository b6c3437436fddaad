"""PostgreSQL-only helpers (imported only once a PostgreSQL connection is in use: psycopg is an
optional dependency)."""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import connections
from django.db.backends.postgresql.psycopg_any import register_tzloader
from django.db.backends.utils import CursorWrapper
from psycopg.pq import Format

_TIMESTAMPTZ_OID = psycopg.adapters.types["timestamptz"].oid


def bound_cursor(alias: str) -> CursorWrapper:
    """A cursor for django-durably's hand-written statements, which run for every claim, step and
    finish: the parameters travel apart from the statement (server-side binding), so no SQL literal
    is built in Python for them.

    Django's default cursor binds on the client instead. Statements are prepared (named and reused)
    only when the database's ``OPTIONS`` set ``prepare_threshold``, exactly as for Django's own
    cursors: by default never, which keeps PgBouncer's transaction pooling working. The cursor is
    wrapped like any Django cursor: errors become ``django.db`` errors, and debug logging and
    ``execute_wrapper`` see it.
    """
    connection = connections[alias]
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        raw: psycopg.Cursor[Any] = psycopg.Cursor(connection.connection)
    # As Django's own cursors: the connection's time zone for timestamps read, if it differs.
    loader = connection.connection.adapters.get_loader(_TIMESTAMPTZ_OID, Format.TEXT)
    if connection.timezone != getattr(loader, "timezone", None):
        register_tzloader(connection.timezone, raw)
    wrapped: Any = raw  # Django's wrappers are typed for its own cursors, and work with any
    if connection.queries_logged:
        return connection.make_debug_cursor(wrapped)
    return connection.make_cursor(wrapped)
