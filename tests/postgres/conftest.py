"""Fixtures and helpers of the PostgreSQL-only tests (skipped when PostgreSQL is not configured)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings


@pytest.fixture
def alias() -> str:
    if "postgres" not in settings.DATABASES:
        pytest.skip(settings.POSTGRES_SKIP_REASON or "PostgreSQL is not configured")
    return "postgres"


@pytest.fixture
def preparing_restored() -> Iterator[None]:
    """Undo the process-wide switch-off that a lost prepared statement causes."""
    from django_durably import postgres

    yield
    postgres._Preparing.works = True
