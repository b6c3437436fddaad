"""Routes the durably app to the database under test (``default`` = SQLite, ``postgres``)."""

from __future__ import annotations

from typing import Any

_state = {"alias": "default"}


def use(alias: str) -> None:
    """Send every durably query, from any thread, to ``alias``."""
    _state["alias"] = alias


def current() -> str:
    return _state["alias"]


class DurablyTestRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return _state["alias"] if model._meta.app_label == "durably" else None

    db_for_write = db_for_read

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return None
