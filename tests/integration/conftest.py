"""Every integration test runs on SQLite and on PostgreSQL (see ``db_alias``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _on_each_database(db_alias: str) -> str:
    return db_alias
