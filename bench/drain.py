"""Drain throughput: N no-op runs drained by W real ``durably_worker`` processes, and the bare SQL
queue ceiling with the same processes and connections.

Runs are created before the workers start (``trigger_many`` in batches, then ``ANALYZE``). The clock
starts just before the first worker process is started and stops at the last completion (its
``completed_at``, same machine clock), so worker start-up (Python, Django) is part of the figure.
The steady rate (first to last completion) is reported beside it.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from bench import jobs, sqlqueue
from bench.database import (
    analyze_runs,
    autocommit_psycopg,
    close_django_connections,
    reset_runs,
    scalar,
    server_url,
    xact_commits,
)
from bench.procs import BenchError, CpuMeter, Processes, worker_command
from django_durably import process_one

TRIGGER_BATCH = 1000
POLL = 0.1


def deadline_for(runs: int) -> float:
    """Seconds a drain may take before it is abandoned (a floor of 50 runs/s, at least 60 s)."""
    return max(60.0, runs / 50)


def enqueue_noop(runs: int) -> None:
    for start in range(0, runs, TRIGGER_BATCH):
        jobs.noop.trigger_many([None] * min(TRIGGER_BATCH, runs - start))


def statements_per_run() -> int:
    """Statements one no-op run costs (claim, fetch, complete), executed in-process."""
    reset_runs()
    jobs.noop.trigger()
    jobs.noop.trigger()
    process_one("bench-count")  # warm up
    with CaptureQueriesContext(connection) as captured:
        process_one("bench-count")
    reset_runs()
    return len(captured.captured_queries)


def durably(runs: int, workers: int, concurrency: int) -> dict[str, Any]:
    reset_runs()
    enqueue_noop(runs)
    analyze_runs()
    close_django_connections()
    transactions_before = xact_commits()
    meter = CpuMeter()
    with Processes() as procs:
        started = time.time()
        meter.start()
        for _ in range(workers):
            procs.start(worker_command(concurrency=concurrency, until_idle=True))
        polls = _wait_until(
            lambda: (
                scalar("SELECT count(*) FROM durably_run WHERE status IN ('pending', 'leased')")
                == 0
            ),
            procs,
            deadline_for(runs),
            what=f"{runs} runs to complete",
            meter=meter,
        )
        if not procs.wait(30):
            raise BenchError("workers did not exit after the queue drained")
        procs.check_alive_or_succeeded()
        cpu = meter.stop()
    close_django_connections()
    # Minus this process's own polling statements (one autocommit transaction each).
    transactions = xact_commits() - transactions_before - polls
    row = _one(
        "SELECT count(*) FILTER (WHERE status = 'completed'), count(*),"
        " extract(epoch FROM min(started_at)), extract(epoch FROM min(completed_at)),"
        " extract(epoch FROM max(completed_at)) FROM durably_run"
    )
    completed, total, first_start, first_done, last_done = row
    if completed != runs or total != runs:
        raise BenchError(f"{completed} of {total} runs completed, expected {runs}")
    result = _rates(runs, started, float(first_start), float(first_done), float(last_done))
    result.update(
        workers=workers,
        concurrency=concurrency,
        transactions=transactions,
        transactions_per_run=round(transactions / runs, 2),
        cpu=cpu,
    )
    reset_runs()
    return result


def sql_queue(runs: int, workers: int, threads: int) -> dict[str, Any]:
    with autocommit_psycopg() as conn:
        sqlqueue.setup(conn, runs)
    meter = CpuMeter()
    with Processes() as procs:
        started = time.time()
        meter.start()
        for i in range(workers):
            procs.start(
                [
                    sys.executable,
                    "-m",
                    "bench.sqlqueue",
                    "--dsn",
                    server_url(),
                    "--threads",
                    str(threads),
                    "--name",
                    f"w{i}",
                ]
            )
        _wait_until(
            procs.all_exited, procs, deadline_for(runs), what=f"{runs} jobs done", meter=meter
        )
        procs.check_alive_or_succeeded()
        cpu = meter.stop()
    with autocommit_psycopg() as conn:
        row = conn.execute(
            f"SELECT count(*) FILTER (WHERE status = 'done'), count(*),"
            f" extract(epoch FROM min(claimed_at)), extract(epoch FROM min(done_at)),"
            f" extract(epoch FROM max(done_at)) FROM {sqlqueue.TABLE}"
        ).fetchone()
        assert row is not None  # noqa: S101
        done, total, first_claim, first_done, last_done = row
        if done != runs or total != runs:
            raise BenchError(f"{done} of {total} SQL queue jobs done, expected {runs}")
        conn.execute(f"TRUNCATE {sqlqueue.TABLE}")
    result = _rates(runs, started, float(first_claim), float(first_done), float(last_done))
    result.update(workers=workers, threads=threads, transactions_per_job=2, cpu=cpu)
    return result


def _rates(
    runs: int, started: float, first_start: float, first_done: float, last_done: float
) -> dict[str, Any]:
    wall = last_done - started
    steady = last_done - first_done
    return {
        "runs": runs,
        "seconds": round(wall, 3),
        "runs_per_s": round(runs / wall, 1),
        "startup_s": round(first_start - started, 3),
        "steady_runs_per_s": round((runs - 1) / steady, 1) if steady > 0 else None,
    }


def _one(sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        row = cursor.fetchone()
    if row is None:
        raise BenchError(f"no row from {sql}")
    return tuple(row)


def _wait_until(done: Any, procs: Processes, timeout: float, *, what: str, meter: CpuMeter) -> int:
    """Poll ``done()`` until it is true (sampling CPU); return how many times it was called."""
    deadline = time.monotonic() + timeout
    polls = 1
    while not done():
        meter.sample()
        polls += 1
        procs.check_alive_or_succeeded()
        if procs.all_exited() and not done():
            raise BenchError(f"every worker exited before {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"gave up waiting {timeout:.0f}s for {what}")
        time.sleep(POLL)
    return polls
