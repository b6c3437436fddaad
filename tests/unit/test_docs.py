"""What the docs tell users to copy agrees with itself (the quickstart itself is followed by
tests/acceptance/test_quickstart.py)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def sqlite_options_in(page: str) -> list[dict[str, Any]]:
    """The SQLite ``OPTIONS`` of each Python block of ``docs/<page>`` that sets ``DATABASES``."""
    found = []
    for block in PYTHON_BLOCK.findall((REPO_ROOT / "docs" / page).read_text(encoding="utf-8")):
        if "DATABASES" not in block:
            continue
        namespace: dict[str, Any] = {"BASE_DIR": Path("/project"), "DATABASES": {"default": {}}}
        exec(block, namespace)  # noqa: S102 - our own docs
        found.append(namespace["DATABASES"]["default"]["OPTIONS"])
    return found


@pytest.mark.parametrize(
    "page", ["quickstart.md", "howto/run-workers.md", "howto/test-your-jobs.md"]
)
def test_docs__every_page_gives_the_same_sqlite_options(page):
    example = runpy.run_path(str(REPO_ROOT / "example_project" / "example_project" / "settings.py"))
    expected = example["DATABASES"]["default"]["OPTIONS"]

    options = sqlite_options_in(page)

    assert options == [expected]
    assert expected == {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
