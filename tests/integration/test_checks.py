"""System checks: exact messages for settings that cannot work, the database vendor, and SQLite
settings that make writers fail."""

from __future__ import annotations

import math

import pytest
from django.core import checks as django_checks
from django.core.management import call_command
from django.db import connections

from django_durably import checks

pytestmark = pytest.mark.django_db(databases="__all__")


def summary(messages):
    return [(m.id, m.msg, m.hint) for m in messages]


def test_check_settings__clean_with_the_test_settings():
    assert checks.check_settings() == []


@pytest.mark.parametrize(
    "name", ["LEASE_SECONDS", "RENEW_INTERVAL", "POLL_INTERVAL", "WAIT_POLL_INTERVAL"]
)
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(0, "0", id="zero"),
        pytest.param(-1.5, "-1.5", id="negative"),
        pytest.param("10", "'10'", id="string"),
        pytest.param(True, "True", id="bool"),
        pytest.param([], "[]", id="list"),
        pytest.param(math.nan, "nan", id="nan"),
        pytest.param(math.inf, "inf", id="inf"),
    ],
)
def test_check_settings__e002_timing_must_be_a_positive_number(settings, name, value, shown):
    setattr(settings, f"DURABLY_{name}", value)
    assert summary(checks.check_settings()) == [
        (
            "django_durably.E002",
            f"DURABLY_{name} must be a positive number, got {shown}.",
            "Remove the setting to use the default.",
        )
    ]


def test_check_settings__e002_reports_every_bad_setting(settings):
    settings.DURABLY_LEASE_SECONDS = 0
    settings.DURABLY_POLL_INTERVAL = -1
    assert [m.msg for m in checks.check_settings()] == [
        "DURABLY_LEASE_SECONDS must be a positive number, got 0.",
        "DURABLY_POLL_INTERVAL must be a positive number, got -1.",
    ]


@pytest.mark.parametrize("value", [1, 0.5, 120])
def test_check_settings__e002_accepts_positive_numbers(settings, value):
    settings.DURABLY_LEASE_SECONDS = value * 10
    settings.DURABLY_RENEW_INTERVAL = value
    settings.DURABLY_POLL_INTERVAL = value
    assert checks.check_settings() == []


@pytest.mark.parametrize(("renew", "shown"), [(30, "30"), (45.5, "45.5")])
def test_check_settings__e003_renewal_not_shorter_than_the_lease(settings, renew, shown):
    settings.DURABLY_LEASE_SECONDS = 30
    settings.DURABLY_RENEW_INTERVAL = renew
    assert summary(checks.check_settings()) == [
        (
            "django_durably.E003",
            f"DURABLY_RENEW_INTERVAL ({shown}s) must be shorter than DURABLY_LEASE_SECONDS (30s), "
            "or every lease expires before it is renewed.",
            "Use a third of the lease or less (the default).",
        )
    ]


def test_check_settings__e003_not_raised_for_the_default_renewal(settings):
    settings.DURABLY_LEASE_SECONDS = 3
    assert checks.check_settings() == []


def test_check_settings__e003_skipped_when_a_timing_setting_is_invalid(settings):
    settings.DURABLY_LEASE_SECONDS = "soon"
    settings.DURABLY_RENEW_INTERVAL = 100
    assert [m.id for m in checks.check_settings()] == ["django_durably.E002"]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DEFAULT_QUEUE", "", "DURABLY_DEFAULT_QUEUE must be a non-empty string, got ''."),
        ("DEFAULT_QUEUE", 5, "DURABLY_DEFAULT_QUEUE must be a non-empty string, got 5."),
        ("JOBS_MODULE", b"jobs", "DURABLY_JOBS_MODULE must be a non-empty string, got b'jobs'."),
        ("DEFAULT_PRIORITY", "1", "DURABLY_DEFAULT_PRIORITY must be an integer, got '1'."),
        ("DEFAULT_PRIORITY", 1.0, "DURABLY_DEFAULT_PRIORITY must be an integer, got 1.0."),
        ("MAX_INPUT_BYTES", True, "DURABLY_MAX_INPUT_BYTES must be an integer, got True."),
        ("MAX_OUTPUT_BYTES", 0, "DURABLY_MAX_OUTPUT_BYTES must be at least 1, got 0."),
        ("PREPARE_STATEMENTS", "no", "DURABLY_PREPARE_STATEMENTS must be True or False, got 'no'."),
        ("PREPARE_STATEMENTS", 0, "DURABLY_PREPARE_STATEMENTS must be True or False, got 0."),
        ("API_DOCS_PUBLIC", "yes", "DURABLY_API_DOCS_PUBLIC must be True or False, got 'yes'."),
    ],
)
def test_check_settings__e004_names_and_limits_of_the_wrong_type(settings, name, value, message):
    setattr(settings, f"DURABLY_{name}", value)
    assert summary(checks.check_settings()) == [("django_durably.E004", message, None)]


def test_check_settings__is_registered(settings):
    settings.DURABLY_LEASE_SECONDS = -5
    found = [m for m in django_checks.run_checks() if (m.id or "").startswith("django_durably.")]
    assert [m.id for m in found] == ["django_durably.E002"]


def test_check_database__w001_not_raised_on_supported_databases(db_alias):
    assert checks.check_database() == []


def test_check_database__is_registered_with_the_database_tag(db_alias):
    found = django_checks.run_checks(tags=[django_checks.Tags.database], databases=[db_alias])
    assert [m for m in found if (m.id or "").startswith("django_durably.")] == []


def test_check__manage_py_check_passes_with_the_database_checks(db_alias):
    call_command("check", "--database", db_alias, "--fail-level", "WARNING")


# -- the HTTP API's settings (E004, E006, E007) ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("API_MAX_BODY_BYTES", "1MB", "DURABLY_API_MAX_BODY_BYTES must be an integer, got '1MB'."),
        ("API_MAX_BODY_BYTES", 0, "DURABLY_API_MAX_BODY_BYTES must be at least 1, got 0."),
        ("API_MAX_JSON_DEPTH", 2.5, "DURABLY_API_MAX_JSON_DEPTH must be an integer, got 2.5."),
        ("API_MAX_JSON_DEPTH", -1, "DURABLY_API_MAX_JSON_DEPTH must be at least 1, got -1."),
    ],
)
def test_check_settings__e004_api_limits(settings, name, value, message):
    setattr(settings, f"DURABLY_{name}", value)
    assert summary(checks.check_settings()) == [("django_durably.E004", message, None)]


def test_check_api_settings__clean_by_default():
    assert checks.check_api_settings() == []


@pytest.mark.parametrize(
    "value",
    [
        "tests.api_hooks.ApiKey",
        "django_durably.access.DEFAULT_AUTH",
        ["tests.api_hooks.UserToken", "tests.api_hooks.ApiKey"],
    ],
)
def test_check_api_settings__accepts_auths(settings, value):
    settings.DURABLY_API_AUTH = value
    assert checks.check_api_settings() == []


AUTH_HINT = (
    "Use a django-ninja auth object (such as an APIKeyHeader or HttpBearer subclass instance), a "
    "dotted path to one or to its class, or a list of those."
)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "tests.api_hooks.Missing",
            "DURABLY_API_AUTH names 'tests.api_hooks.Missing', which cannot be imported: Module "
            '"tests.api_hooks" does not define a "Missing" attribute/class',
        ),
        (
            "tests.api_hooks.API_KEY",
            "DURABLY_API_AUTH must name ninja auth objects (callables of the request), got "
            "'test-api-key'.",
        ),
        ([], "DURABLY_API_AUTH is an empty list; no request could pass."),
    ],
)
def test_check_api_settings__e006_unusable_auth(settings, value, message):
    settings.DURABLY_API_AUTH = value
    assert summary(checks.check_api_settings()) == [("django_durably.E006", message, AUTH_HINT)]


def test_check_api_settings__e006_a_class_needing_arguments(settings):
    settings.DURABLY_API_AUTH = "uuid.UUID"

    ((check_id, message, _),) = summary(checks.check_api_settings())

    assert check_id == "django_durably.E006"
    assert message.startswith(
        "DURABLY_API_AUTH names the class UUID, which cannot be instantiated without arguments: "
        "TypeError("
    )


SCOPE_HINT = (
    "Use a dotted path to a class (or object) with runs(request, queryset) and "
    "scope_trigger(request, trigger), such as a LabelScope subclass."
)


def test_check_api_settings__accepts_a_scope(settings):
    settings.DURABLY_API_SCOPE = "tests.api_hooks.TenantScope"
    assert checks.check_api_settings() == []


def test_check_api_settings__e007_unimportable_scope(settings):
    settings.DURABLY_API_SCOPE = "tests.api_hooks.Nope"

    assert summary(checks.check_api_settings()) == [
        (
            "django_durably.E007",
            "DURABLY_API_SCOPE names 'tests.api_hooks.Nope', which cannot be imported: Module "
            '"tests.api_hooks" does not define a "Nope" attribute/class',
            SCOPE_HINT,
        )
    ]


def test_check_api_settings__e007_scope_without_the_methods(settings):
    settings.DURABLY_API_SCOPE = "tests.api_hooks.ApiKey"

    ((check_id, message, hint),) = summary(checks.check_api_settings())

    assert (check_id, hint) == ("django_durably.E007", SCOPE_HINT)
    assert message.startswith(
        "DURABLY_API_SCOPE must provide runs(request, queryset) and "
        "scope_trigger(request, trigger); <tests.api_hooks.ApiKey object at "
    )
    assert message.endswith("> has no runs().")


def test_check_api_settings__e007_a_class_needing_arguments(settings):
    settings.DURABLY_API_SCOPE = "uuid.UUID"

    ((check_id, message, _),) = summary(checks.check_api_settings())

    assert check_id == "django_durably.E007"
    assert message.startswith("DURABLY_API_SCOPE names the class UUID, which cannot be")


# -- SQLite locking (W002, W003) ---------------------------------------------------------------


@pytest.fixture
def sqlite_options(db_alias, monkeypatch):
    """Set the OPTIONS of the SQLite database holding runs for the test."""
    if db_alias != "default":
        pytest.skip("SQLite only")
    settings_dict = connections[db_alias].settings_dict

    def set_options(**options):
        monkeypatch.setitem(settings_dict, "OPTIONS", options)

    return set_options


W002 = (
    "django_durably.W002",
    "django-durably stores runs in SQLite database 'default', which begins transactions in "
    'deferred mode: a transaction that reads, then writes fails at once with "database is '
    'locked" when another connection wrote meanwhile, whatever the busy timeout.',
    'Add "transaction_mode": "IMMEDIATE" to DATABASES["default"]["OPTIONS"]: a transaction '
    "then takes the write lock when it begins, waiting on the busy timeout for it.",
)


def test_check_sqlite_locking__clean_with_the_test_settings(db_alias):
    assert checks.check_sqlite_locking() == []


@pytest.mark.parametrize("mode", ["IMMEDIATE", "immediate", "EXCLUSIVE"])
def test_check_sqlite_locking__w002_not_raised_when_transactions_take_the_write_lock(
    sqlite_options, mode
):
    sqlite_options(transaction_mode=mode)

    assert checks.check_sqlite_locking() == []


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="no-options"),
        pytest.param({"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}, id="quickstart"),
        pytest.param({"transaction_mode": "DEFERRED"}, id="deferred"),
        pytest.param({"transaction_mode": None}, id="none"),
    ],
)
def test_check_sqlite_locking__w002_deferred_transactions(sqlite_options, options):
    sqlite_options(**options)

    assert summary(checks.check_sqlite_locking()) == [W002]


@pytest.mark.parametrize(("timeout", "shown"), [(0, "0"), (-1, "-1"), ("20", "'20'")])
def test_check_sqlite_locking__w003_busy_timeout_not_positive(sqlite_options, timeout, shown):
    sqlite_options(transaction_mode="IMMEDIATE", timeout=timeout)

    assert summary(checks.check_sqlite_locking()) == [
        (
            "django_durably.W003",
            f"django-durably stores runs in SQLite database 'default', whose busy timeout is "
            f'{shown}: a writer fails at once with "database is locked" instead of waiting for '
            "the lock.",
            'Set "timeout" in DATABASES["default"]["OPTIONS"] to some seconds, such as 20, or '
            "remove it for the default of 5.",
        )
    ]


def test_check_sqlite_locking__is_registered_with_the_database_tag(sqlite_options):
    sqlite_options()

    assert "django_durably.W002" in [
        message.id for message in django_checks.run_checks(tags=[django_checks.Tags.database])
    ]
