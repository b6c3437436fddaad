"""Step checkpoint throughput: runs of ``bench.steps`` executed in-process by ``process_one()``.

A step costs one commit, so its rate follows the disk's flush latency, which on a shared machine
drifts by a factor of two within minutes. So the ratio to pgbench is measured in rounds: each round
times pgbench with 1 client for a few seconds just before and just after one run of the steps, and
sets the steps against the mean of the two; the figures reported are the medians over the rounds
(each round's figures are in the JSON).

Besides steps per second it counts what a step costs the database: statements (captured on this
thread's connection, which runs the job) and committed transactions (``pg_stat_database``, minus those
of a zero-step run measured the same way).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from bench import jobs, pgbench
from bench.database import close_django_connections, reset_runs, scalar, xact_commits
from django_durably import process_one


def _run_steps(count: int) -> tuple[float, int]:
    """Trigger and process one run of ``count`` steps; return (seconds, transactions committed)."""
    reset_runs()
    run = jobs.steps.trigger({"steps": count})
    close_django_connections()
    before = xact_commits()
    started = time.perf_counter()
    if not process_one("bench-steps"):
        raise RuntimeError("process_one() found no run")
    elapsed = time.perf_counter() - started
    close_django_connections()
    transactions = xact_commits() - before
    status, completed = _state(run.pk)
    if status != "completed" or completed != count:
        raise RuntimeError(f"steps run ended {status} with {completed}/{count} steps")
    return elapsed, transactions


def _state(run_id: Any) -> tuple[str, int]:
    status = scalar("SELECT status FROM durably_run WHERE id = %s", [run_id])
    completed = scalar(
        "SELECT count(*) FROM durably_step WHERE run_id = %s AND status = 'completed'", [run_id]
    )
    return status, completed


def _statements_per_step(count: int = 20) -> float:
    reset_runs()
    jobs.steps.trigger({"steps": 0})
    jobs.steps.trigger({"steps": count})
    with CaptureQueriesContext(connection) as empty:
        process_one("bench-steps")
    with CaptureQueriesContext(connection) as full:
        process_one("bench-steps")
    return (len(full.captured_queries) - len(empty.captured_queries)) / count


def measure(count: int, rounds: int, pgbench_seconds: int) -> dict[str, Any]:
    _run_steps(10)  # warm up
    base_seconds, base_transactions = _run_steps(0)
    measured = []
    with pgbench.scratch() as run_pgbench:
        for _ in range(rounds):
            before = run_pgbench(1, pgbench_seconds)["tps"]
            seconds, transactions = _run_steps(count)
            after = run_pgbench(1, pgbench_seconds)["tps"]
            tps = (before + after) / 2
            measured.append(
                {
                    "pgbench_1c_tps_before": before,
                    "pgbench_1c_tps_after": after,
                    "pgbench_1c_tps": round(tps, 1),
                    "seconds": round(seconds, 3),
                    "steps_per_s": round(count / seconds, 1),
                    "ratio_to_pgbench_1c": round(count / seconds / tps, 3),
                    "transactions": transactions,
                }
            )
    statements = _statements_per_step()
    reset_runs()
    most_transactions = max(r["transactions"] for r in measured)
    return {
        "steps": count,
        "rounds": measured,
        "steps_per_s": statistics.median(r["steps_per_s"] for r in measured),
        "pgbench_1c_tps": statistics.median(r["pgbench_1c_tps"] for r in measured),
        "ratio_to_pgbench_1c": statistics.median(r["ratio_to_pgbench_1c"] for r in measured),
        "transactions_zero_step_run": base_transactions,
        "transactions_per_step": round((most_transactions - base_transactions) / count, 3),
        "statements_per_step": round(statements, 2),
    }
