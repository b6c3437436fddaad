from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings

from tests import jobs, routers


@pytest.fixture(autouse=True)
def _reset_job_state() -> Iterator[None]:
    jobs.CALLS.clear()
    jobs.FLAGS.clear()
    yield
    jobs.CALLS.clear()
    jobs.FLAGS.clear()


@pytest.fixture(params=["sqlite", "postgres"])
def db_alias(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per database: the durably app is routed to it for the test's duration."""
    alias = "default" if request.param == "sqlite" else "postgres"
    wanted = os.environ.get("DURABLY_TEST_DATABASES", "sqlite,postgres").split(",")
    if request.param not in wanted:
        pytest.skip(f"{request.param} is not in DURABLY_TEST_DATABASES")
    if alias not in settings.DATABASES:
        pytest.skip(settings.POSTGRES_SKIP_REASON or "PostgreSQL is not configured")
    routers.use(alias)
    yield alias
    routers.use("default")


# -- HTTP API ----------------------------------------------------------------------------------

RUN_PERMISSIONS = (
    "view_run",
    "add_run",
    "cancel_run",
    "resume_run",
    "retrigger_run",
    "delete_run",
)


@pytest.fixture
def make_user(django_user_model: Any) -> Callable[..., Any]:
    """``make_user("acme-ops", "view_run", ...)``: a staff user with those ``durably`` permissions
    (``is_staff=False`` or ``is_superuser=True`` as keyword arguments)."""
    from django.contrib.auth.models import Permission

    def make(username: str, *codenames: str, **fields: Any) -> Any:
        fields.setdefault("is_staff", True)
        # No password: hashing one is slow, and tests log in with force_login.
        user = django_user_model.objects.create_user(username=username, **fields)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="durably", codename__in=codenames)
        )
        return django_user_model.objects.get(pk=user.pk)  # a fresh copy: no permission cache

    return make


@pytest.fixture
def operator(make_user: Callable[..., Any]) -> Any:
    """A staff user holding every run permission."""
    return make_user("operator", *RUN_PERMISSIONS)


@pytest.fixture
def api() -> Any:
    """ninja's test client for the durably router (pass ``user=`` to each request)."""
    from ninja.testing import TestClient

    from django_durably.api import router

    return TestClient(router)
