"""The benchmark suite itself still runs: every benchmark, with tiny figures, on a database of its
own. (The figures are not checked here: speed targets live in the benchmarks, never in tests.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "--quick",
    "--runs=200",
    "--workers=1,2",
    "--steps=20",
    "--step-rounds=2",
    "--step-pgbench-seconds=1",
    "--pgbench-seconds=1",
    "--enqueue-single=20",
    "--enqueue-many=200",
    "--samples=5",
    "--poll-samples=2",
    "--backlog=2000",
    "--backlog-small=100",
    "--pending=300",
    "--backlog-drain=100",
    "--claims=5",
    "--waiting=500",
]


@pytest.fixture
def bench_database() -> Iterator[str]:
    if "postgres" not in settings.DATABASES:
        pytest.skip(settings.POSTGRES_SKIP_REASON or "PostgreSQL is not configured")
    name = f"durably_bench_smoke_{os.getpid()}"
    yield name
    db = settings.DATABASES["postgres"]
    url = f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/postgres"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run_bench(
    database: str, output: Path, extra: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m bench`` with the tiny figures (and ``extra``, which win) on ``database``."""
    db = settings.DATABASES["postgres"]
    env: dict[str, str] = {
        **os.environ,
        "DURABLY_BENCH_DB": database,
        "DURABLY_BENCH_HOST": str(db["HOST"]),
        "DURABLY_BENCH_PORT": str(db["PORT"]),
        "DURABLY_BENCH_USER": str(db["USER"]),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "-m", "bench", *TINY, *(extra or []), f"--output-dir={output}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_python_m_bench__runs_every_benchmark_and_writes_json(bench_database, tmp_path):
    done = _run_bench(bench_database, tmp_path)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "latest.json").read_text())
    assert result["errors"] == {}
    benchmarks = {row["benchmark"] for row in result["rows"]}
    assert {
        "pgbench ceiling",
        "step checkpoints",
        "drain no-op runs",
        "wake-up LISTEN",
        "wake-up signal",
        "wake-up child end",
        "backlog claim plan",
        "backlog wake-due (median)",
        "backlog wake-due plan",
    } <= benchmarks, benchmarks

    # Durable waits: the wake-ups of a signal and of a child's end were sampled, and the backlog
    # measured again with waiting runs, the wake-up of due timers explained and timed with nothing
    # due and with a few due, without and with them.
    wakeup = result["details"]["wakeup"]
    for kind in ("signal", "children"):
        assert wakeup[kind]["continued"]["samples"] == wakeup[kind]["entered"]["samples"] == 5
    tables = result["details"]["backlog"]
    assert [table["waiting"] for table in tables] == [0, 0, 500]
    assert "wake" not in tables[0]
    for table in tables[1:]:
        wake = table["wake"]
        assert wake["nothing_due"]["calls"] == wake["few_due"]["calls"] == 5
        # Explained: the look for due runs, and (with some due) the write that wakes them. Which
        # index a plan reads is not checked: on tables this small the planner may choose others.
        assert wake["nothing_due"]["plans"], wake["nothing_due"]["statements"]
        assert len(wake["few_due"]["plans"]) >= len(wake["nothing_due"]["plans"])
        assert all(plan["plan"] and plan["generic_plan"] for plan in wake["few_due"]["plans"])
