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


def test_python_m_bench__runs_every_benchmark_and_writes_json(bench_database, tmp_path):
    db = settings.DATABASES["postgres"]
    env = {
        **os.environ,
        "DURABLY_BENCH_DB": bench_database,
        "DURABLY_BENCH_HOST": db["HOST"],
        "DURABLY_BENCH_PORT": str(db["PORT"]),
        "DURABLY_BENCH_USER": db["USER"],
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)

    done = subprocess.run(
        [sys.executable, "-m", "bench", *TINY, f"--output-dir={tmp_path}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "latest.json").read_text())
    assert result["errors"] == {}
    benchmarks = {row["benchmark"] for row in result["rows"]}
    assert {"pgbench ceiling", "step checkpoints", "drain no-op runs"} <= benchmarks, benchmarks
