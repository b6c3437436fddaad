"""System checks: duplicate job names, settings that cannot work (including the HTTP API's auth
and scope), unsupported databases, and SQLite settings that make writers fail instead of waiting.

Every id is listed in docs/reference/checks.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router

from django_durably.conf import durably_settings
from django_durably.jobs import registry_conflicts
from django_durably.retries import default_policy
from django_durably.validation import MAX_QUEUE_LENGTH, PRIORITY_RANGE

SUPPORTED_VENDORS = ("postgresql", "sqlite")


@register()
def check_job_names(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E001: two different functions registered under one job name."""
    return [
        Error(
            f"Job name {name!r} is registered by two different functions: {first} and {second}.",
            hint="Give one of them another name with @job(name=...).",
            id="django_durably.E001",
        )
        for name, first, second in registry_conflicts()
    ]


def _positive_number(name: str) -> str | None:
    value = durably_settings.raw(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        return f"DURABLY_{name} must be a positive number, got {value!r}."
    return None


def _flag_errors(*names: str) -> list[CheckMessage]:
    """E004 for each of these settings that is set to something other than True or False."""
    return [
        Error(f"DURABLY_{name} must be True or False, got {flag!r}.", id="django_durably.E004")
        for name in names
        if (flag := durably_settings.raw(name)) is not None and not isinstance(flag, bool)
    ]


@register()
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E002: timing settings that are not positive numbers; E003: renewal not within the lease;
    E004: names and limits of the wrong type."""
    errors: list[CheckMessage] = [
        Error(message, hint="Remove the setting to use the default.", id="django_durably.E002")
        for name in (
            "LEASE_SECONDS",
            "RENEW_INTERVAL",
            "POLL_INTERVAL",
            "WAIT_POLL_INTERVAL",
            "RETENTION_INTERVAL",
            "STREAM_POLL_INTERVAL",
            "STREAM_KEEPALIVE",
            "STREAM_PROGRESS_INTERVAL",
            "STREAM_MAX_SECONDS",
        )
        if (message := _positive_number(name))
    ]
    if not errors and durably_settings.RENEW_INTERVAL >= durably_settings.LEASE_SECONDS:
        errors.append(
            Error(
                f"DURABLY_RENEW_INTERVAL ({durably_settings.RENEW_INTERVAL:g}s) must be shorter "
                f"than DURABLY_LEASE_SECONDS ({durably_settings.LEASE_SECONDS:g}s), or every lease "
                "expires before it is renewed.",
                hint="Use a third of the lease or less (the default).",
                id="django_durably.E003",
            )
        )
    for name, max_length in (("DEFAULT_QUEUE", MAX_QUEUE_LENGTH), ("JOBS_MODULE", None)):
        value = durably_settings.raw(name)
        if value is not None and (not isinstance(value, str) or not value):
            errors.append(
                Error(
                    f"DURABLY_{name} must be a non-empty string, got {value!r}.",
                    id="django_durably.E004",
                )
            )
        elif isinstance(value, str) and max_length is not None and len(value) > max_length:
            errors.append(
                Error(
                    f"DURABLY_{name} must be at most {max_length} characters, got {value!r}.",
                    id="django_durably.E004",
                )
            )
    retention = durably_settings.raw("RETENTION")
    if retention is not None and not (
        (isinstance(retention, timedelta) and retention > timedelta(0))
        or (
            isinstance(retention, int | float)
            and not isinstance(retention, bool)
            and 0 < retention < math.inf
        )
    ):
        errors.append(
            Error(
                f"DURABLY_RETENTION must be a positive timedelta or number of seconds, or None, "
                f"got {retention!r}.",
                hint="For example DURABLY_RETENTION = timedelta(days=30).",
                id="django_durably.E005",
            )
        )
    errors += _flag_errors("PREPARE_STATEMENTS", "API_DOCS_PUBLIC")
    low, high = PRIORITY_RANGE
    priority = durably_settings.raw("DEFAULT_PRIORITY")
    if isinstance(priority, int) and not isinstance(priority, bool) and not low <= priority <= high:
        errors.append(
            Error(
                f"DURABLY_DEFAULT_PRIORITY must be between {low} and {high}, got {priority!r}.",
                id="django_durably.E004",
            )
        )
    for name, minimum in (
        ("DEFAULT_PRIORITY", None),
        ("MAX_INPUT_BYTES", 1),
        ("MAX_OUTPUT_BYTES", 1),
        ("STREAM_MAX_PER_PROCESS", 1),
        ("API_MAX_BODY_BYTES", 1),
        ("API_MAX_JSON_DEPTH", 1),
        ("MAX_RECLAIMS", 1),
        ("MAX_ABANDONED_THREADS", 0),
    ):
        value = durably_settings.raw(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(
                Error(
                    f"DURABLY_{name} must be an integer, got {value!r}.", id="django_durably.E004"
                )
            )
        elif minimum is not None and value < minimum:
            errors.append(
                Error(
                    f"DURABLY_{name} must be at least {minimum}, got {value!r}.",
                    id="django_durably.E004",
                )
            )
    return errors + _retry_errors()


def _retry_errors() -> list[CheckMessage]:
    """E008: a default retry policy that is not one; an inline retry delay that is not a number of
    seconds (0 is allowed: every step retry then releases the run)."""
    errors: list[CheckMessage] = []
    try:
        default_policy()
    except ImproperlyConfigured as exc:
        errors.append(
            Error(
                str(exc),
                hint="For example DURABLY_DEFAULT_RETRY = Retry(max_attempts=3), or None.",
                id="django_durably.E008",
            )
        )
    inline = durably_settings.raw("INLINE_RETRY_MAX_DELAY")
    if inline is not None and (
        isinstance(inline, bool)
        or not isinstance(inline, int | float)
        or not 0 <= inline < math.inf
    ):
        errors.append(
            Error(
                f"DURABLY_INLINE_RETRY_MAX_DELAY must be a number of seconds, at least 0, got "
                f"{inline!r}.",
                id="django_durably.E008",
            )
        )
    return errors


@register()
def check_api_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E006: DURABLY_API_AUTH names no usable auth; E007: DURABLY_API_SCOPE names no usable scope."""
    if durably_settings.API_AUTH is None and durably_settings.API_SCOPE is None:
        return []  # the defaults are valid; skip importing django-ninja (every command runs checks)
    from django_durably import access  # needs models (and django-ninja), so imported when checking

    errors: list[CheckMessage] = []
    try:
        access.api_auth()
    except ImproperlyConfigured as exc:
        errors.append(
            Error(
                str(exc),
                hint="Use a django-ninja auth object (such as an APIKeyHeader or HttpBearer "
                "subclass instance), a dotted path to one or to its class, or a list of those.",
                id="django_durably.E006",
            )
        )
    try:
        access.api_scope()
    except ImproperlyConfigured as exc:
        errors.append(
            Error(
                str(exc),
                hint="Use a dotted path to a class (or object) with runs(request, queryset) and "
                "scope_trigger(request, trigger), such as a LabelScope subclass.",
                id="django_durably.E007",
            )
        )
    return errors


@register(Tags.database)
def check_database(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W001: the database holding runs is neither PostgreSQL nor SQLite."""
    from django_durably.models import Run

    alias = router.db_for_write(Run)
    vendor = connections[alias].vendor
    if vendor in SUPPORTED_VENDORS:
        return []
    return [
        CheckWarning(
            f"django-durably stores runs in database {alias!r}, a {vendor} database; only "
            "PostgreSQL and SQLite are supported and tested.",
            hint="Route the 'durably' app to a PostgreSQL or SQLite database.",
            id="django_durably.W001",
        )
    ]


IMMEDIATE_MODES = ("IMMEDIATE", "EXCLUSIVE")  # both take the write lock at BEGIN


@register(Tags.database)
def check_sqlite_locking(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W002: the SQLite database holding runs begins deferred transactions; W003: its busy timeout
    is not positive. Either makes concurrent writers fail with "database is locked"."""
    from django_durably.models import Run

    alias = router.db_for_write(Run)
    if connections[alias].vendor != "sqlite":
        return []
    options = connections[alias].settings_dict.get("OPTIONS") or {}
    warnings: list[CheckMessage] = []
    mode = options.get("transaction_mode")
    if not isinstance(mode, str) or mode.upper() not in IMMEDIATE_MODES:
        warnings.append(
            CheckWarning(
                f"django-durably stores runs in SQLite database {alias!r}, which begins "
                "transactions in deferred mode: a transaction that reads, then writes fails at "
                'once with "database is locked" when another connection wrote meanwhile, '
                "whatever the busy timeout.",
                hint=f'Add "transaction_mode": "IMMEDIATE" to DATABASES["{alias}"]["OPTIONS"]: '
                "a transaction then takes the write lock when it begins, waiting on the busy "
                "timeout for it.",
                id="django_durably.W002",
            )
        )
    timeout = options.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        warnings.append(
            CheckWarning(
                f"django-durably stores runs in SQLite database {alias!r}, whose busy timeout "
                f'is {timeout!r}: a writer fails at once with "database is locked" instead of '
                "waiting for the lock.",
                hint=f'Set "timeout" in DATABASES["{alias}"]["OPTIONS"] to some seconds, such '
                "as 20, or remove it for the default of 5.",
                id="django_durably.W003",
            )
        )
    return warnings
