"""Turning Python values into the JSON that runs and steps store. A leaf module.

Values are normalised when they are accepted (at trigger time, when a step finishes), never later:
what a job sees on replay is exactly what it saw the first time.
"""

from __future__ import annotations

import json
import traceback
from typing import Any

from pydantic import BaseModel

from django_durably.exceptions import NotJSONSerializable, OutputTooLarge
from django_durably.types import JSON


def to_json(value: Any, *, what: str, max_bytes: int | None = None) -> JSON:
    """Return ``value`` as it will read back from the database.

    With ``max_bytes``, JSON longer than that raises :class:`OutputTooLarge` (for outputs).

    Pydantic models are dumped in JSON mode; tuples become lists. Anything else that JSON cannot
    represent exactly (sets, datetimes, NaN, non-string keys), and strings that databases cannot
    store (NUL characters, lone surrogates), raise :class:`NotJSONSerializable`.
    """
    try:
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        try:
            text = dump(value)
        except (TypeError, ValueError) as exc:
            raise NotJSONSerializable(f"{what} must be JSON-serializable: {exc}") from exc
        if max_bytes is not None and len(text) > max_bytes:  # ASCII: characters are bytes
            raise OutputTooLarge(what, size=len(text), limit=max_bytes)
        # The dump escapes every non-ASCII character, so a string holding a NUL or a surrogate shows
        # up as a \u0000 or \udXXX escape; only then are strings checked one by one (valid surrogate
        # pairs, such as emoji, also show up here and pass the check).
        _check_value(value, what, strings="\\u0000" in text or "\\ud" in text)
        loaded: JSON = json.loads(text)
    except RecursionError:
        # Arrays or objects nested past Python's recursion limit (the encoder, the checks and the
        # decoder all recurse): a typed error, not a RecursionError from deep inside.
        raise NotJSONSerializable(
            f"{what} is nested too deeply to be stored as JSON (Python's recursion limit)."
        ) from None
    return loaded


def unstorable_text(text: str) -> str | None:
    """Why a database cannot store ``text``, or ``None`` when it can.

    PostgreSQL refuses NUL characters in text and JSON, and no database stores lone surrogates
    (they are not valid UTF-8).
    """
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate"
    return None


def storable_text(text: str) -> str:
    """``text`` with what databases cannot store replaced by U+FFFD (NUL) or ``?`` (a lone
    surrogate): for text that is recorded rather than returned to the job, such as log lines and
    exception messages, where losing a character beats losing the record."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


def _check_value(value: Any, what: str, *, strings: bool) -> None:
    """``json.dumps`` silently turns ``1``, ``None`` or ``True`` keys into strings; refuse them, and
    with ``strings``, refuse strings that :func:`unstorable_text` rejects."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSONSerializable(
                    f"{what} must be JSON-serializable: object keys must be strings, got {key!r}"
                )
            if strings:
                _check_text(key, what)
            _check_value(item, what, strings=strings)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_value(item, what, strings=strings)
    elif strings and isinstance(value, str):
        _check_text(value, what)


def _check_text(text: str, what: str) -> None:
    problem = unstorable_text(text)
    if problem is not None:
        raise NotJSONSerializable(
            f"{what} cannot be stored: the string {text[:40]!r} {problem}, which databases "
            "cannot store."
        )


def dump(value: Any) -> str:
    """Strict, compact JSON: no NaN or Infinity, which PostgreSQL's jsonb rejects."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def to_json_lenient(value: Any) -> JSON:
    """Like :func:`to_json` but replaces what JSON cannot hold with its ``repr``, and characters no
    database stores with :func:`storable_text` (for log data)."""
    try:
        return to_json(value, what="value")
    except NotJSONSerializable:
        try:
            text = json.dumps(value, default=repr, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError):
            return repr(value)
        stored: JSON = _storable(json.loads(text))
        return stored


def describe_exception(exc: BaseException) -> dict[str, str]:
    """The stored form of an exception: its class path, message and traceback (never a pickle)."""
    cls = type(exc)
    return {
        "type": storable_text(f"{cls.__module__}.{cls.__qualname__}"),
        "message": storable_text(str(exc)),
        "traceback": storable_text("".join(traceback.format_exception(exc))),
    }
