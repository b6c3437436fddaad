"""Backlog scaling: claim time and drain rate with few vs many finished runs in the table.

Each configuration is seeded with SQL (``INSERT ... SELECT generate_series``): ``finished`` completed
runs of the past two days plus ``pending`` due runs, then ``VACUUM ANALYZE``. Then:

* the candidate query of one claim is captured and shown with ``EXPLAIN (ANALYZE, BUFFERS)`` (in a
  rolled-back transaction), and with ``EXPLAIN`` of its generic plan (the statement is prepared, so
  PostgreSQL may switch to that plan after five executions); the claim is index-driven when no plan
  scans ``durably_run`` sequentially;
* ``claims`` single claims (``leases.claim(limit=1)``) are timed one by one in this process (each
  claimed run is completed outside the timing);
* ``drain`` of the pending runs are drained by 4 ``durably_worker`` processes (``--max-runs`` each);
  the rate compared is the steady one (first to last completion), since worker start-up does not
  depend on the table and only adds noise; the rate from the first worker start is kept too.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from django.db import connection, transaction

from bench.database import analyze_runs, close_django_connections, reset_runs, scalar
from bench.procs import BenchError, CpuMeter, Processes, worker_command
from django_durably import leases

SEED = """
INSERT INTO durably_run (
    id, job_name, queue, priority, status, input, output, labels, run_after, attempt,
    failed_attempts, current_step_index, completed_step_count, lease_owner, lease_generation,
    created_at, updated_at, started_at, completed_at
)
SELECT gen_random_uuid(), 'bench.noop', 'default', 0, %(status)s, 'null'::jsonb, NULL, '{}'::jsonb,
       t, %(attempt)s, 0, 0, 0, '', %(attempt)s, t, t,
       CASE WHEN %(finished)s THEN t END, CASE WHEN %(finished)s THEN t + interval '5 ms' END
FROM (
    SELECT now() - %(age)s::interval + g * (%(age)s::interval / (%(count)s + 1)) AS t
    FROM generate_series(1, %(count)s) AS g
) AS s
"""

WORKERS = 4
CONCURRENCY = 4


def seed(finished: int, pending: int) -> dict[str, Any]:
    """Empty the runs table, then fill it with finished and pending runs; return timings."""
    started = time.perf_counter()
    reset_runs()
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        for count, status, age, attempt in (
            (finished, "completed", "2 days", 1),
            (pending, "pending", "1 hour", 0),
        ):
            if count:
                cursor.execute(
                    SEED,
                    {
                        "status": status,
                        "count": count,
                        "age": age,
                        "attempt": attempt,
                        "finished": status == "completed",
                    },
                )
        cursor.execute("SET synchronous_commit = on")
    seeded = time.perf_counter()
    analyze_runs(vacuum=True)
    return {
        "seed_s": round(seeded - started, 1),
        "vacuum_analyze_s": round(time.perf_counter() - seeded, 1),
        "table_size": scalar("SELECT pg_size_pretty(pg_total_relation_size('durably_run'))"),
    }


def explain_claim() -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) the row-locking statements of one claim (rolled back)."""
    executed: list[tuple[str, Any]] = []

    def capture(execute: Any, sql: str, params: Any, many: Any, context: Any) -> Any:
        executed.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        claimed = leases.claim(worker_id="bench-explain", limit=1)
    _complete(claimed)
    statements = [sql for sql, _params in executed]
    # The row-locking candidate queries (a SELECT, or a CTE with an UPDATE), else the first one.
    selects = [(sql, p) for sql, p in executed if "FOR UPDATE" in sql.upper()] or executed[:1]
    plans = []
    for sql, params in selects:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            transaction.set_rollback(True)
        plans.append({"sql": sql, "plan": plan, "generic_plan": _generic_plan(sql, params)})
    index_driven = bool(plans) and all(
        "Seq Scan on durably_run" not in p["plan"] + p["generic_plan"] for p in plans
    )
    return {
        "claim_statements": statements,
        "plans": plans,
        "index_driven": index_driven,
    }


def _generic_plan(sql: str, params: Any) -> str:
    """``EXPLAIN`` of the plan PostgreSQL may settle on for the prepared statement: the one made
    without looking at the parameters (``plan_cache_mode = force_generic_plan``)."""
    parts = sql.split("%s")
    numbered = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
    arguments = ", ".join(["%s"] * len(params or []))
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            cursor.execute(f"PREPARE durably_bench_claim AS {numbered}")
            cursor.execute(f"EXPLAIN EXECUTE durably_bench_claim({arguments})", list(params or []))
            plan = "\n".join(row[0] for row in cursor.fetchall())
            transaction.set_rollback(True)
    finally:  # a prepared statement outlives the transaction it was made in
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM pg_prepared_statements WHERE name = 'durably_bench_claim'"
            )
            if cursor.fetchone():
                cursor.execute("DEALLOCATE durably_bench_claim")
    return plan


def _complete(runs: list[Any]) -> None:
    for run in runs:
        leases.complete(run.pk, run.lease_generation, None)


def time_claims(count: int) -> dict[str, Any]:
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        claimed = leases.claim(worker_id="bench-claim", limit=1)
        timings.append((time.perf_counter() - started) * 1000)
        if len(claimed) != 1:
            raise BenchError("a timed claim found no pending run")
        _complete(claimed)
    ordered = sorted(timings)
    return {
        "claims": count,
        "median_ms": round(statistics.median(timings), 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 3),
        "mean_ms": round(statistics.fmean(timings), 3),
    }


def drain(runs: int) -> dict[str, Any]:
    """Drain ``runs`` of the pending runs with 4 workers: runs/s from the first to the last completion
    (steady) and from the first worker start (wall)."""
    per_worker = -(-runs // WORKERS)
    since = scalar("SELECT clock_timestamp()")
    close_django_connections()
    meter = CpuMeter()
    count_sql = (
        "SELECT count(*), extract(epoch FROM min(completed_at)),"
        " extract(epoch FROM max(completed_at)) FROM durably_run"
        " WHERE status IN ('completed', 'failed') AND completed_at > %s"
    )
    with Processes() as procs:
        started = time.time()
        meter.start()
        for _ in range(WORKERS):
            procs.start(worker_command(concurrency=CONCURRENCY, max_runs=per_worker))
        deadline = time.monotonic() + max(60.0, runs / 50)
        while True:
            with connection.cursor() as cursor:
                cursor.execute(count_sql, [since])
                done, first, last = cursor.fetchone()
            if done >= per_worker * WORKERS:
                break
            meter.sample()
            procs.check_alive_or_succeeded()
            if procs.all_exited():
                raise BenchError(f"workers exited after {done} of {runs} runs")
            if time.monotonic() > deadline:
                raise BenchError(f"backlog drain: {done} of {runs} runs before the deadline")
            time.sleep(0.1)
        procs.wait(30)
        cpu = meter.stop()
    wall = float(last) - started
    steady = float(last) - float(first)
    return {
        "runs": done,
        "workers": WORKERS,
        "concurrency": CONCURRENCY,
        "seconds": round(wall, 3),
        "runs_per_s": round(done / wall, 1),
        "steady_runs_per_s": round((done - 1) / steady, 1) if steady > 0 else None,
        "cpu": cpu,
    }


def measure(finished: int, pending: int, claims: int, drain_runs: int) -> dict[str, Any]:
    result: dict[str, Any] = {"finished": finished, "pending": pending}
    result.update(seed(finished, pending))
    _complete(leases.claim(worker_id="bench-warmup", limit=1))  # warm up connection and caches
    result["explain"] = explain_claim()
    result["claim"] = time_claims(claims)
    result["drain"] = drain(drain_runs)
    return result
