"""Fail when a relative Markdown link in README.md or docs/ points at a file that does not exist."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")


def broken_links() -> list[str]:
    problems = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).resolve().exists():
                problems.append(f"{page.relative_to(ROOT)}: broken link to {target}")
    return problems


if __name__ == "__main__":
    found = broken_links()
    for problem in found:
        print(problem)  # noqa: T201
    sys.exit(1 if found else 0)
