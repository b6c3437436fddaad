"""Connections with other settings than the suite's, for the thread under test: a SQLite connection
that begins deferred transactions or waits less for a lock, or one to an empty database.

Django keeps one connection per alias and thread, so :func:`swapped_connection` replaces the current
thread's and leaves every other thread (a worker slot, a concurrent writer) on the suite's settings.
"""

from __future__ import annotations

import copy
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import load_backend


@contextmanager
def swapped_connection(
    alias: str, *, name: str | None = None, drop_options: tuple[str, ...] = (), **options: Any
) -> Iterator[BaseDatabaseWrapper]:
    """Give this thread a new connection for ``alias``: the database ``name`` (default: the one in
    use), ``OPTIONS`` without ``drop_options`` and with ``options``. Restored on exit."""
    current = connections[alias]
    settings_dict = copy.deepcopy(current.settings_dict)
    if name is not None:
        settings_dict["NAME"] = name
    kept = {k: v for k, v in settings_dict["OPTIONS"].items() if k not in drop_options}
    settings_dict["OPTIONS"] = {**kept, **options}
    swapped = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, alias)
    connections[alias] = swapped
    try:
        yield swapped
    finally:
        swapped.close()
        connections[alias] = current


@contextmanager
def deferred_sqlite(alias: str = "default", **options: Any) -> Iterator[BaseDatabaseWrapper]:
    """This thread's SQLite connection, beginning transactions as SQLite does by default
    (``BEGIN``, deferred: the write lock is taken at the first write, not at ``BEGIN``)."""
    with swapped_connection(alias, drop_options=("transaction_mode",), **options) as connection:
        yield connection


@contextmanager
def sqlite_lock_held(alias: str = "default") -> Iterator[sqlite3.Connection]:
    """Another connection holding SQLite's write lock (``BEGIN IMMEDIATE``) until the block ends."""
    holder = sqlite3.connect(connections[alias].settings_dict["NAME"], isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield holder
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@contextmanager
def empty_database(vendor: str, folder: Path) -> Iterator[str]:
    """The name of a new database without any table: a SQLite file in ``folder``, or a PostgreSQL
    database on the suite's server, dropped on exit."""
    if vendor == "sqlite":
        path = folder / "empty.sqlite3"
        sqlite3.connect(path).close()
        yield str(path)
        return
    import psycopg
    from psycopg import sql

    name = f"durably_empty_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.POSTGRES_URL, autocommit=True) as server:
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(settings.POSTGRES_URL, autocommit=True) as server:
            server.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
