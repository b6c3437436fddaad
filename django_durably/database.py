"""What django-durably needs of the database that stores runs: its migrations applied, and on
SQLite, writers that wait for each other instead of failing.

* :func:`db_alias` names the database that holds runs (routers decide), and
  :func:`ensure_outside_transaction` refuses the calls that cannot work inside a caller's
  transaction on it.
* :func:`ensure_migrated` asks Django's migration executor (not a table probe) whether durably's
  migrations are applied, so a worker can refuse to start with a clear error. It costs a read of
  ``django_migrations`` and loading the migration files, once at start-up.
* :func:`missing_tables_as_not_migrated` turns the error of a statement that met no durably table
  into :class:`~django_durably.exceptions.DatabaseNotMigrated`. It decides from the error alone:
  on PostgreSQL the failed statement has spoiled the transaction, so nothing more may be asked
  there, and the happy path pays nothing but a ``try``.
* :func:`retry_if_locked` re-runs one of durably's own short transactions when SQLite answers
  "database is locked". A deferred transaction (SQLite's default ``BEGIN``) that has read and then
  writes fails at once, without waiting on the busy timeout, when another connection committed a
  write meanwhile (``SQLITE_BUSY_SNAPSHOT`` in WAL mode): it could only go on with a stale
  snapshot. The only remedy is to start it again. ``"transaction_mode": "IMMEDIATE"`` avoids it by
  taking the write lock at ``BEGIN``, where waiting on the timeout works, which is why the
  ``django_durably.W002`` check asks for it; the retry covers deferred databases and user code.

A module of its own below ``leases``: it imports neither models nor anything above them.
"""

from __future__ import annotations

import logging
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from django.apps import apps
from django.db import DatabaseError, OperationalError, connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.executor import MigrationExecutor

from django_durably.exceptions import DatabaseNotMigrated, DurablyError

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

APP_LABEL = "durably"  # DurablyConfig.label; apps.py sits above this module
DEFAULT_SQLITE_TIMEOUT = (
    5.0  # what Python's sqlite3 (and so Django) waits without OPTIONS["timeout"]
)
FIRST_RETRY_DELAY = 0.005
MAX_RETRY_DELAY = 0.2

# SQLite primary result codes (the low byte of an extended code such as SQLITE_BUSY_SNAPSHOT, 517).
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
_LOCKED_MESSAGES = ("database is locked", "database table is locked")

_SQLITE_MISSING_TABLE = re.compile(r"no such table: (?:\w+\.)?(durably_\w+)")
_POSTGRES_MISSING_TABLE = re.compile(r'relation "(?:\w+\.)?(durably_\w+)" does not exist')
POSTGRES_UNDEFINED_TABLE = "42P01"


# -- routing -------------------------------------------------------------------------------------


def db_alias() -> str:
    """The database that holds runs (``DATABASE_ROUTERS`` may move them off ``default``)."""
    return router.db_for_write(apps.get_model(APP_LABEL, "Run"))


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


# -- migrations --------------------------------------------------------------------------------


def unapplied_migrations(alias: str) -> tuple[str, ...]:
    """The migrations (``"app_label.name"``, in the order ``migrate`` would apply them) that
    durably's tables on ``alias`` still need: durably's own and those they depend on."""
    executor = MigrationExecutor(connections[alias])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes(APP_LABEL))
    return tuple(f"{migration.app_label}.{migration.name}" for migration, _backwards in plan)


def ensure_migrated(alias: str) -> None:
    """Raise :class:`DatabaseNotMigrated` unless every durably migration is applied on ``alias``.

    A project that disables durably's migrations (``MIGRATION_MODULES``, pytest-django's
    ``--nomigrations``) creates the tables from the models and passes. Other database errors (the
    server is down) propagate as they are.
    """
    unapplied = unapplied_migrations(alias)
    if unapplied:
        raise DatabaseNotMigrated(alias, unapplied)


def missing_durably_table(error: BaseException) -> str | None:
    """The durably table that ``error`` (a database error) says does not exist, or ``None``."""
    if not isinstance(error, DatabaseError):
        return None
    cause = error.__cause__
    if isinstance(cause, sqlite3.OperationalError):
        found = _SQLITE_MISSING_TABLE.search(str(error))
    elif getattr(cause, "sqlstate", None) == POSTGRES_UNDEFINED_TABLE or (
        getattr(cause, "pgcode", None) == POSTGRES_UNDEFINED_TABLE  # psycopg2
    ):
        found = _POSTGRES_MISSING_TABLE.search(str(error))
    else:
        return None
    return found.group(1) if found else None


@contextmanager
def missing_tables_as_not_migrated(alias: str) -> Iterator[None]:
    """Raise :class:`DatabaseNotMigrated` (from the original error) when a statement in the block
    meets no durably table on ``alias``; any other error goes through unchanged.

    The unapplied migrations are named when they can still be read, that is when no transaction
    of the caller is open (its statement failed; on PostgreSQL nothing more can run in it).
    """
    try:
        yield
    except DatabaseError as exc:
        table = missing_durably_table(exc)
        if table is None:
            raise
        raise DatabaseNotMigrated(alias, _unapplied_if_readable(alias), table=table) from exc


def _unapplied_if_readable(alias: str) -> tuple[str, ...]:
    if connections[alias].in_atomic_block:
        return ()
    try:
        return unapplied_migrations(alias)
    except DatabaseError:
        return ()


# -- a locked SQLite database ------------------------------------------------------------------


def is_locked(error: BaseException) -> bool:
    """Whether ``error`` is SQLite's "database is locked" (``SQLITE_BUSY``, including the
    immediate ``SQLITE_BUSY_SNAPSHOT``) or "database table is locked" (``SQLITE_LOCKED``)."""
    if not isinstance(error, OperationalError):
        return False
    cause = error.__cause__
    if not isinstance(cause, sqlite3.OperationalError):
        return False
    code = getattr(cause, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)
    return str(cause) in _LOCKED_MESSAGES


def busy_timeout(connection: BaseDatabaseWrapper) -> float:
    """Seconds a SQLite connection waits for a lock before "database is locked"."""
    timeout = connection.settings_dict.get("OPTIONS", {}).get("timeout", DEFAULT_SQLITE_TIMEOUT)
    return max(float(timeout), 0.0)


def retry_if_locked(alias: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn(*args, **kwargs)`` (one of durably's own short transactions on ``alias``, or a
    single statement) and, when SQLite answers that the database is locked, call it again after a
    jittered backoff, until the connection's busy ``timeout`` has passed since the first call.
    Then the last error is raised, with a warning logged.

    An attempt that fails at once is one that read, then could not write: another connection
    held the write lock or had committed since the read, and SQLite refuses the upgrade without
    calling the busy handler. An attempt whose first statement writes (or that begins
    ``IMMEDIATE``) waits on the busy handler instead, and fails only once the whole timeout has
    passed, so it is not tried again.

    ``fn`` must be safe to run again: a locked database rolled its transaction back. Inside a
    caller's transaction (an outer atomic block) nothing can be run again, and PostgreSQL waits
    for locks by itself, so there the error is raised at once. The happy path costs a ``try``.
    """
    started = time.monotonic()
    try:
        return fn(*args, **kwargs)
    except OperationalError as exc:
        connection = connections[alias]
        if connection.vendor != "sqlite" or connection.in_atomic_block or not is_locked(exc):
            raise
        error = exc
    return _retry(connection, started + busy_timeout(connection), error, fn, *args, **kwargs)


def _retry(
    connection: BaseDatabaseWrapper,
    deadline: float,
    error: OperationalError,
    fn: Callable[P, T],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    attempts = 1
    ceiling = FIRST_RETRY_DELAY
    while True:
        delay = random.uniform(0, ceiling)  # noqa: S311 - jitter, not security
        if time.monotonic() + delay >= deadline:
            logger.warning(
                "Database %r is still locked after %d attempt(s); giving up: %s",
                connection.alias,
                attempts,
                error,
                extra={"action": "database_locked", "alias": connection.alias},
            )
            raise error
        time.sleep(delay)
        ceiling = min(ceiling * 2, MAX_RETRY_DELAY)
        attempts += 1
        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:
            if not is_locked(exc):
                raise
            error = exc
