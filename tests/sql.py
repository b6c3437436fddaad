"""What a test sees of the SQL the library sends: the statements a call sends on a connection
(``call_and_capture``, ``statements``), what they are (``keyword``, ``writes``, ``transactions``),
and ``execute_wrapper`` hooks that record statements or step in before one (``recording``,
``before_first``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import connections
from django.test.utils import CaptureQueriesContext

WRITES = ("UPDATE", "INSERT", "WITH", "DELETE")


def call_and_capture(alias: str, fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """What ``fn()`` returns, and the SQL statements it sends on this thread's connection to
    ``alias``."""
    with CaptureQueriesContext(connections[alias]) as captured:
        result = fn()
    return result, [query["sql"] for query in captured.captured_queries]


def statements(alias: str, fn: Callable[[], Any]) -> list[str]:
    """The SQL statements ``fn()`` sends on this thread's connection to ``alias``."""
    return call_and_capture(alias, fn)[1]


def keyword(sql: str) -> str:
    """The statement's first keyword, upper case (``SELECT``, ``WITH``, ``BEGIN``...)."""
    return sql.lstrip().split(None, 1)[0].upper()


def writes(sql: list[str]) -> list[str]:
    """The statements of ``sql`` that write rows (a ``WITH`` is one of the library's writes)."""
    return [s for s in sql if keyword(s) in ("UPDATE", "INSERT", "WITH")]


def transactions(sql: list[str]) -> int:
    """Transactions among ``sql``: explicit ones (SQLite's ``BEGIN``), plus each write outside one
    (autocommit)."""
    count, explicit = 0, False
    for statement in sql:
        word = keyword(statement)
        if word == "BEGIN":
            count, explicit = count + 1, True
        elif word in ("COMMIT", "ROLLBACK"):
            explicit = False
        elif not explicit and word in WRITES:
            count += 1
    return count


def is_postgres(alias: str) -> bool:
    return connections[alias].vendor == "postgresql"


def recording(into: list[str], when: Callable[[], bool] = lambda: True) -> Callable[..., Any]:
    """An ``execute_wrapper`` hook that appends each statement sent while ``when()`` holds (asked
    on the thread sending it) to ``into``."""

    def hook(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if when():
            into.append(sql)
        return execute(sql, params, many, context)

    return hook


def before_first(
    prefix: str, action: Callable[[], Any], *, seen: list[str] | None = None
) -> Callable[..., Any]:
    """An ``execute_wrapper`` hook that calls ``action`` once, just before the first statement
    starting with ``prefix`` runs; every statement with that prefix is appended to ``seen``."""
    done: list[bool] = []

    def hook(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.lstrip().upper().startswith(prefix):
            if seen is not None:
                seen.append(sql)
            if not done:
                done.append(True)
                action()
        return execute(sql, params, many, context)

    return hook
