"""Result rows, the printed table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.database import REPO_ROOT


@dataclass
class Row:
    """One line of the table. ``ratio`` is ``figure`` divided by the figure named in ``ratio_to``."""

    benchmark: str
    params: str
    figure: float | None
    unit: str
    ratio: float | None = None
    ratio_to: str = ""
    target: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def ratio(figure: float | None, ceiling: float | None) -> float | None:
    if figure is None or not ceiling:
        return None
    return round(figure / ceiling, 3)


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def format_table(rows: list[Row]) -> str:
    header = ["benchmark", "parameters", "figure", "unit", "ratio", "ratio to", "target", "met"]
    lines = [
        [
            row.benchmark,
            row.params,
            _figure(row.figure),
            row.unit,
            "-" if row.ratio is None else f"{row.ratio:.2f}",
            row.ratio_to or "-",
            row.target or "-",
            "-" if row.met is None else ("yes" if row.met else "NO"),
        ]
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    right = {2, 4}

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines)])


def git_revision() -> dict[str, Any]:
    git = shutil.which("git")
    if not git:
        return {}
    try:
        head = subprocess.run(
            [git, "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--", "django_durably"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head, "django_durably_modified": bool(dirty)}


def machine(server: dict[str, str]) -> dict[str, Any]:
    import django

    from bench.procs import machine_busy

    return {
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "django": django.get_version(),
        "platform": platform.platform(),
        "postgresql": server,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "cpu_busy_before_start": machine_busy(),
        "git": git_revision(),
    }


def write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def rows_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(row) for row in rows]
