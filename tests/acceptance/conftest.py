"""Acceptance tests run real ``durably_worker`` subprocesses on each database (see ``db_alias``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.processes import Workers


@pytest.fixture
def workers(db_alias: str, tmp_path: Path) -> Iterator[Workers]:
    """Start worker processes with ``workers.start(*options)``; leftovers are killed at teardown.

    Set up after the test databases, so it is torn down (processes killed) before they are flushed.
    """
    log_dir = tmp_path / "worker-logs"
    log_dir.mkdir()
    pool = Workers(db_alias, log_dir)
    yield pool
    pool.close()
