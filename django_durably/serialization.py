"""Turning Python values into the JSON that runs and steps store. A leaf module.

Values are normalised when they are accepted (at trigger time, when a step finishes), never later:
what a job sees on replay is exactly what it saw the first time.
"""

from __future__ import annotations

import json
import traceback
from typing import Any

from pydantic import BaseModel

from django_durably.exceptions import NotJSONSerializable
from django_durably.types import JSON


def to_json(value: Any, *, what: str) -> JSON:
    """Return ``value`` as it will read back from the database.

    Pydantic models are dumped in JSON mode; tuples become lists. Anything else that JSON cannot
    represent exactly (sets, datetimes, NaN, non-string keys) raises :class:`NotJSONSerializable`.
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        text = dump(value)
    except (TypeError, ValueError) as exc:
        raise NotJSONSerializable(f"{what} must be JSON-serializable: {exc}") from exc
    _check_keys(value, what)
    loaded: JSON = json.loads(text)
    return loaded


def _check_keys(value: Any, what: str) -> None:
    """``json.dumps`` silently turns ``1``, ``None`` or ``True`` keys into strings; refuse them."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSONSerializable(
                    f"{what} must be JSON-serializable: object keys must be strings, got {key!r}"
                )
            _check_keys(item, what)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_keys(item, what)


def dump(value: Any) -> str:
    """Strict, compact JSON: no NaN or Infinity, which PostgreSQL's jsonb rejects."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def to_json_lenient(value: Any) -> JSON:
    """Like :func:`to_json` but replaces what JSON cannot hold with its ``repr`` (for log data)."""
    try:
        return to_json(value, what="value")
    except NotJSONSerializable:
        try:
            text = json.dumps(value, default=repr, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError):
            return repr(value)
        loaded: JSON = json.loads(text)
        return loaded


def describe_exception(exc: BaseException) -> dict[str, str]:
    """The stored form of an exception: its class path, message and traceback (never a pickle)."""
    cls = type(exc)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
