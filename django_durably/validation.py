"""Every limit and rule on what a trigger, a job declaration, a step and a run-list query may hold.

One place for each rule, read by everything that applies or documents it: the job decorator and
triggering (``jobs``, ``triggering``), the step context (``context``), the HTTP API's schemas and
its run-list label filters (``schemas``, ``api``), scopes (``access``), the system checks and the
worker command. The byte limits are settings (``DURABLY_MAX_INPUT_BYTES``,
``DURABLY_MAX_OUTPUT_BYTES``); the rest are the constants below. Each check raises a typed error
naming the field: :class:`InvalidTrigger` and its subclasses for a trigger's values,
:class:`ImproperlyConfiguredJob` for a job's declaration, :class:`InvalidStepName` and
:class:`InvalidProgress` inside a job, :class:`InvalidLabels` for a run-list label filter,
:class:`RunNotFound` for an id that is not a run's.

Below ``jobs`` and ``models``: user code imports ``jobs`` (and so this module) before Django's app
registry is ready, so nothing here imports models.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from django_durably.conf import durably_settings
from django_durably.exceptions import (
    ImproperlyConfiguredJob,
    InvalidInput,
    InvalidLabels,
    InvalidProgress,
    InvalidRunAfter,
    InvalidStepName,
    InvalidTrigger,
    InvalidValue,
    RunNotFound,
)
from django_durably.serialization import dump, storable_text, to_json, unstorable_text
from django_durably.types import JSON, Coalesce

MAX_KEY_LENGTH = 255
"""Longest idempotency key, concurrency key and job name."""
MAX_QUEUE_LENGTH = 100
PRIORITY_RANGE = (-(2**31), 2**31 - 1)
RESERVED_KEY_PREFIXES = ("retrigger:", "schedule:")
"""Idempotency keys starting with these belong to django-durably (retriggers, schedules): a trigger
may not choose them, so nobody can plant the run that a retrigger or a schedule would return."""
COALESCE_CHOICES = ("error", "skip")

LABEL_KEY_CHARACTERS = r"[A-Za-z0-9._/-]+"
LABEL_KEY_PATTERN = re.compile(LABEL_KEY_CHARACTERS)
MAX_LABELS = 32
MAX_LABEL_KEY_LENGTH = 100
MAX_LABEL_VALUE_LENGTH = 500
LABEL_KEY_RULE = (
    f"keys are 1-{MAX_LABEL_KEY_LENGTH} characters of letters, digits, '.', '_', '/' and '-'."
)
LABEL_FILTER_PREFIX = "label."
"""Run-list query parameters ``label.<key>=<value>`` filter by labels."""

MAX_STEP_NAME_LENGTH = 255
MAX_PROGRESS_MESSAGE_LENGTH = 1000


def is_short_text(value: Any, max_length: int) -> bool:
    """A non-empty string of at most ``max_length`` characters."""
    return isinstance(value, str) and 0 < len(value) <= max_length


# -- a job's declaration -----------------------------------------------------------------------


def check_job_name(name: Any) -> str:
    """A job's registry name, or :class:`ImproperlyConfiguredJob`."""
    if not is_short_text(name, MAX_KEY_LENGTH):
        raise ImproperlyConfiguredJob(
            f"Job name must be a non-empty string of at most {MAX_KEY_LENGTH} characters, "
            f"got {name!r}."
        )
    return str(name)


def check_job_defaults(job_name: str, queue: Any, priority: Any) -> None:
    """The queue and priority a job declares (``@job()`` or ``using()``)."""
    if queue is not None and not is_short_text(queue, MAX_QUEUE_LENGTH):
        raise ImproperlyConfiguredJob(f"Job {job_name!r}: queue must be a short non-empty string.")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
        raise ImproperlyConfiguredJob(f"Job {job_name!r}: priority must be an int.")


# -- a trigger's values ------------------------------------------------------------------------


class ReservedKey(str):
    """An idempotency key in one of the :data:`RESERVED_KEY_PREFIXES`, made by django-durably itself
    (``operations.retrigger_run``, later schedules). Only keys of this type may use those prefixes."""

    __slots__ = ()


def check_key(value: Any, field: str) -> str:
    """An idempotency or concurrency key as given to a trigger, or :class:`InvalidTrigger`.

    An idempotency key in a reserved namespace (``retrigger:``, ``schedule:``) is refused unless it is
    a :class:`ReservedKey`.
    """
    if not is_short_text(value, MAX_KEY_LENGTH):
        raise InvalidTrigger(
            f"{field} must be a non-empty string of at most {MAX_KEY_LENGTH} characters, "
            f"got {value!r}.",
            field=field,
        )
    if (problem := unstorable_text(value)) is not None:
        raise InvalidTrigger(f"{field} {problem}.", field=field)
    if (
        field == "idempotency_key"
        and value.startswith(RESERVED_KEY_PREFIXES)
        and not isinstance(value, ReservedKey)
    ):
        prefix = next(p for p in RESERVED_KEY_PREFIXES if value.startswith(p))
        raise InvalidTrigger(
            f"{field} may not start with {prefix!r}: django-durably reserves the prefixes "
            f"{', '.join(map(repr, RESERVED_KEY_PREFIXES))} for the keys it makes itself.",
            field=field,
        )
    return str(value)


def check_optional_key(value: Any, field: str) -> str | None:
    """:func:`check_key` for a key that may be absent (``None``)."""
    return None if value is None else check_key(value, field)


def check_queue(queue: Any) -> str:
    if not is_short_text(queue, MAX_QUEUE_LENGTH):
        raise InvalidTrigger(
            f"queue must be a non-empty string of at most {MAX_QUEUE_LENGTH} characters, "
            f"got {queue!r}.",
            field="queue",
        )
    return str(queue)


def check_priority(priority: Any) -> int:
    low, high = PRIORITY_RANGE
    if not isinstance(priority, int) or isinstance(priority, bool) or not low <= priority <= high:
        raise InvalidTrigger(
            f"priority must be an integer between {low} and {high}, got {priority!r}.",
            field="priority",
        )
    return priority


def check_run_after(run_after: Any) -> datetime | None:
    if run_after is None:
        return None
    if not isinstance(run_after, datetime):
        raise InvalidRunAfter(
            f"run_after must be a timezone-aware datetime, got {type(run_after).__name__}.",
            field="run_after",
        )
    if run_after.tzinfo is None or run_after.utcoffset() is None:
        raise InvalidRunAfter(
            f"run_after must be timezone-aware, got the naive datetime {run_after.isoformat()}; "
            "use django.utils.timezone.now() + timedelta(...) or attach a tzinfo.",
            field="run_after",
        )
    return run_after


def check_coalesce(coalesce: Any) -> Coalesce:
    if coalesce not in COALESCE_CHOICES:
        raise InvalidTrigger(
            f"coalesce must be 'error' or 'skip', got {coalesce!r}.", field="coalesce"
        )
    checked: Coalesce = coalesce
    return checked


def input_json(job_name: str, stored_input: JSON) -> str:
    """A run's input (already JSON, see :func:`~django_durably.serialization.to_json`) as the
    text that is stored, or :class:`InvalidInput` past ``DURABLY_MAX_INPUT_BYTES``."""
    text = dump(stored_input)
    size = len(text.encode())
    if size > durably_settings.MAX_INPUT_BYTES:
        raise InvalidInput(
            f"Input of job {job_name!r} is {size} bytes of JSON; the limit is "
            f"{durably_settings.MAX_INPUT_BYTES} (DURABLY_MAX_INPUT_BYTES).",
            field="input",
        )
    return text


# -- labels: a trigger's, and the run list's filters -------------------------------------------


def is_label_key(key: Any) -> bool:
    """Whether ``key`` can be a label key (:data:`LABEL_KEY_RULE`)."""
    return (
        isinstance(key, str)
        and len(key) <= MAX_LABEL_KEY_LENGTH
        and LABEL_KEY_PATTERN.fullmatch(key) is not None
    )


def is_label_value(value: Any) -> bool:
    """Whether ``value`` can be a label value: a string of at most
    :data:`MAX_LABEL_VALUE_LENGTH` characters that databases can store."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_LABEL_VALUE_LENGTH
        and unstorable_text(value) is None
    )


def _check_label_count(labels: dict[Any, Any], what: str, field: str) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidLabels(f"At most {MAX_LABELS} {what} are allowed.", field=field)


def check_labels(labels: Any) -> dict[str, str]:
    """A trigger's labels: a flat object of :func:`is_label_key` keys and :func:`is_label_value`
    values (``None`` for none), or :class:`InvalidLabels`."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise InvalidLabels(
            f"labels must be an object of string keys and string values, got {type(labels).__name__}.",
            field="labels",
        )
    _check_label_count(labels, "labels", "labels")
    for key, value in labels.items():
        if not is_label_key(key):
            raise InvalidLabels(f"Label key {key!r} is invalid: {LABEL_KEY_RULE}", field="labels")
        if is_label_value(value):
            continue
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE_LENGTH:
            raise InvalidLabels(
                f"Label {key!r} has value {value!r}: values are strings of at most "
                f"{MAX_LABEL_VALUE_LENGTH} characters.",
                field="labels",
            )
        raise InvalidLabels(
            f"Label {key!r} has a value that {unstorable_text(value)}.", field="labels"
        )
    return dict(labels)


def check_label_filters(params: Iterable[tuple[str, list[str]]]) -> dict[str, str]:
    """The labels that the run list's ``label.<key>=<value>`` query parameters ask for (other
    parameters are skipped), under the rules of a trigger's labels, or :class:`InvalidLabels`
    whose ``field`` is the parameter."""
    labels: dict[str, str] = {}
    for param, values in params:
        if not param.startswith(LABEL_FILTER_PREFIX):
            continue
        key = param[len(LABEL_FILTER_PREFIX) :]
        if not is_label_key(key):
            raise InvalidLabels(f"{param!r} is not a label filter: {LABEL_KEY_RULE}", field=param)
        if len(values) != 1:
            raise InvalidLabels(f"Give {param} once.", field=param)
        if not is_label_value(values[0]):
            raise InvalidLabels(
                f"{param} must be at most {MAX_LABEL_VALUE_LENGTH} characters, without NUL.",
                field=param,
            )
        labels[key] = values[0]
    _check_label_count(labels, "label filters", "label")
    return labels


# -- inside a job ------------------------------------------------------------------------------


def check_step_name(name: Any) -> str:
    """A step's name, or :class:`InvalidStepName`."""
    if not isinstance(name, str) or not name or len(name) > MAX_STEP_NAME_LENGTH:
        raise InvalidStepName(
            f"Step names must be non-empty strings of at most {MAX_STEP_NAME_LENGTH} "
            f"characters, got {name!r}."
        )
    if (problem := unstorable_text(name)) is not None:
        raise InvalidStepName(f"Step name {name!r} {problem}, which databases cannot store.")
    return name


def check_progress(current: Any, total: Any, message: Any) -> dict[str, Any]:
    """The progress that ``step.progress(current, total, message)`` stores, or
    :class:`InvalidProgress`."""
    if not _is_count(current) or (total is not None and not _is_count(total)):
        raise InvalidProgress(
            f"progress(current={current!r}, total={total!r}): both must be non-negative numbers."
        )
    if message is not None and (
        not isinstance(message, str) or len(message) > MAX_PROGRESS_MESSAGE_LENGTH
    ):
        raise InvalidProgress(
            f"progress message must be a string of at most {MAX_PROGRESS_MESSAGE_LENGTH} "
            "characters."
        )
    if message is not None:
        message = storable_text(message)  # a stray NUL must not fail the write (PostgreSQL)
    return {"current": current, "total": total, "message": message}


def _is_count(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def output_json(value: Any, *, what: str) -> JSON:
    """A job's return value or a step's output as it is stored (see
    :func:`~django_durably.serialization.to_json`): :class:`OutputTooLarge` past
    ``DURABLY_MAX_OUTPUT_BYTES``."""
    return to_json(value, what=what, max_bytes=durably_settings.MAX_OUTPUT_BYTES)


# -- signals ---------------------------------------------------------------------------------------


def check_signal_name(name: Any) -> str:
    """A signal's name (what ``step.wait_for_signal`` waits for), or :class:`InvalidValue`."""
    if not isinstance(name, str) or not name or len(name) > MAX_STEP_NAME_LENGTH:
        raise InvalidValue(
            f"A signal name must be a non-empty string of at most {MAX_STEP_NAME_LENGTH} "
            f"characters, got {name!r}.",
            field="name",
        )
    if (problem := unstorable_text(name)) is not None:
        raise InvalidValue(f"Signal name {name!r} {problem}.", field="name")
    return name


def signal_payload(payload: Any) -> JSON:
    """A signal's payload as it is stored (JSON, at most ``DURABLY_MAX_OUTPUT_BYTES``), or
    :class:`InvalidValue`."""
    try:
        return to_json(
            payload, what="The signal's payload", max_bytes=durably_settings.MAX_OUTPUT_BYTES
        )
    except (TypeError, ValueError) as exc:
        raise InvalidValue(str(exc), field="payload") from exc


# -- ids ---------------------------------------------------------------------------------------


def run_pk(run_id: UUID | str) -> UUID:
    """``run_id`` as a UUID, or :class:`RunNotFound`: no run has an id that is not one."""
    if isinstance(run_id, UUID):
        return run_id
    try:
        return UUID(str(run_id))
    except ValueError:
        raise RunNotFound(run_id) from None
