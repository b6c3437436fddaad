from __future__ import annotations

import os
from collections.abc import Iterator

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
