"""System checks: exact messages for settings that cannot work, and the database vendor."""

from __future__ import annotations

import math

import pytest
from django.core import checks as django_checks
from django.core.management import call_command

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
