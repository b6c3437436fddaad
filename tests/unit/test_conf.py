"""Settings: defaults, and overrides that take effect at once."""

from __future__ import annotations

import pytest
from django.test import override_settings

from django_durably import conf
from django_durably.conf import durably_settings

ALL_SETTINGS = (
    "DEFAULT_QUEUE",
    "DEFAULT_PRIORITY",
    "LEASE_SECONDS",
    "RENEW_INTERVAL",
    "POLL_INTERVAL",
    "WAIT_POLL_INTERVAL",
    "JOBS_MODULE",
    "MAX_INPUT_BYTES",
)


@pytest.fixture
def defaults(settings):
    """No DURABLY_* setting at all (the test settings set a few)."""
    for name in ALL_SETTINGS:
        if hasattr(settings, f"DURABLY_{name}"):
            delattr(settings, f"DURABLY_{name}")
    return settings


def test_conf__defaults(defaults):
    assert durably_settings.DEFAULT_QUEUE == "default"
    assert durably_settings.DEFAULT_PRIORITY == 0
    assert durably_settings.LEASE_SECONDS == 60.0
    assert durably_settings.RENEW_INTERVAL == 20.0
    assert durably_settings.POLL_INTERVAL == 1.0
    assert durably_settings.WAIT_POLL_INTERVAL == 0.1
    assert durably_settings.JOBS_MODULE == "jobs"
    assert durably_settings.MAX_INPUT_BYTES == 1024 * 1024


def test_conf__defaults_are_named_constants(defaults):
    assert durably_settings.DEFAULT_QUEUE == conf.DEFAULT_QUEUE
    assert durably_settings.DEFAULT_PRIORITY == conf.DEFAULT_PRIORITY
    assert durably_settings.LEASE_SECONDS == conf.DEFAULT_LEASE_SECONDS
    assert durably_settings.POLL_INTERVAL == conf.DEFAULT_POLL_INTERVAL
    assert durably_settings.WAIT_POLL_INTERVAL == conf.DEFAULT_WAIT_POLL_INTERVAL
    assert durably_settings.JOBS_MODULE == conf.DEFAULT_JOBS_MODULE
    assert durably_settings.MAX_INPUT_BYTES == conf.DEFAULT_MAX_INPUT_BYTES


def test_conf__test_settings_are_read():
    # tests/settings.py sets this one; the default is 0.1.
    assert durably_settings.WAIT_POLL_INTERVAL == 0.02


def test_conf__overrides_take_effect_at_once(settings):
    settings.DURABLY_DEFAULT_QUEUE = "emails"
    settings.DURABLY_DEFAULT_PRIORITY = 7
    settings.DURABLY_LEASE_SECONDS = 30
    settings.DURABLY_POLL_INTERVAL = 0.5
    settings.DURABLY_WAIT_POLL_INTERVAL = 0.25
    settings.DURABLY_JOBS_MODULE = "tasks"
    settings.DURABLY_MAX_INPUT_BYTES = 2048
    assert durably_settings.DEFAULT_QUEUE == "emails"
    assert durably_settings.DEFAULT_PRIORITY == 7
    assert durably_settings.LEASE_SECONDS == 30.0
    assert isinstance(durably_settings.LEASE_SECONDS, float)
    assert durably_settings.POLL_INTERVAL == 0.5
    assert durably_settings.WAIT_POLL_INTERVAL == 0.25
    assert durably_settings.JOBS_MODULE == "tasks"
    assert durably_settings.MAX_INPUT_BYTES == 2048


def test_conf__renew_interval_defaults_to_a_third_of_the_lease(defaults):
    defaults.DURABLY_LEASE_SECONDS = 9
    assert durably_settings.RENEW_INTERVAL == 3.0


def test_conf__renew_interval_can_be_set(settings):
    settings.DURABLY_LEASE_SECONDS = 9
    settings.DURABLY_RENEW_INTERVAL = 2
    assert durably_settings.RENEW_INTERVAL == 2.0


def test_conf__override_settings_is_undone_afterwards(defaults):
    with override_settings(DURABLY_LEASE_SECONDS=12):
        assert durably_settings.LEASE_SECONDS == 12.0
        assert durably_settings.RENEW_INTERVAL == 4.0
    assert durably_settings.LEASE_SECONDS == 60.0


def test_conf__raw_is_none_when_unset(defaults):
    assert durably_settings.raw("LEASE_SECONDS") is None
    defaults.DURABLY_LEASE_SECONDS = "soon"
    assert durably_settings.raw("LEASE_SECONDS") == "soon"
