"""Prepared statements as a pooler that does not keep them apart would leave them."""

from __future__ import annotations

from django.db import connections


def deallocate(alias: str, statement_like: str) -> int:
    """What a pooler does when the next statement lands on another server connection: the named
    statements whose text is ``LIKE statement_like`` are gone, and psycopg does not know. Returns
    how many there were."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT name FROM pg_prepared_statements WHERE statement LIKE %s", [statement_like]
        )
        names = [name for (name,) in cursor.fetchall()]
        for name in names:
            cursor.execute(f'DEALLOCATE "{name}"')
    return len(names)
