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

Durable waits: the big table seeded again (from scratch, so that the waiting runs are the only
difference) with ``waiting`` waiting runs too (most of them sleeping until a time between one and
31 days ahead, one in four waiting for a signal with no deadline: ``wake_at`` NULL), then the same
measurements, to compare with those of the big table without them. In both of these tables, the
wake-up of due timers (``waits.wake_due_runs()``, what every worker calls at least once per poll
interval) is measured too (:func:`measure_wake`): the statements it runs on ``durably_run`` are
explained like the claim's (custom and generic plans; with waiting runs in the table, its look for
due runs should read ``durably_run_waking_idx``) and it is timed, with nothing due and with a few
due.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from typing import Any

from django.db import connection, transaction

from bench.database import analyze_runs, close_django_connections, reset_runs, scalar
from bench.procs import BenchError, CpuMeter, Processes, worker_command
from django_durably import leases, waits

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

# Waiting runs: sleeps due one to 31 days ahead (so none falls due while the benchmark runs), and
# every ``every``-th a signal wait without a deadline (``wake_at`` NULL). Created an hour ago.
SEED_WAITING = """
INSERT INTO durably_run (
    id, job_name, queue, priority, status, input, output, labels, run_after, attempt,
    failed_attempts, current_step_index, completed_step_count, lease_owner, lease_generation,
    created_at, updated_at, started_at, completed_at, wake_at, waiting_for
)
SELECT gen_random_uuid(), 'bench.noop', 'default', 0, 'waiting', 'null'::jsonb, NULL, '{}'::jsonb,
       t, 1, 0, 0, 0, '', 1, t, t, t, NULL, w,
       CASE WHEN w IS NULL
            THEN jsonb_build_object(
                'kind', 'signal', 'step', 'approval', 'signal', 'approval', 'until', NULL)
            ELSE jsonb_build_object('kind', 'sleep', 'step', 'nap', 'until', w) END
FROM (
    SELECT now() - interval '1 hour' + g * (interval '1 hour' / (%(count)s + 1)) AS t,
           CASE WHEN g %% %(every)s = 0 THEN NULL
                ELSE now() + interval '1 day' + random() * interval '30 days' END AS w
    FROM generate_series(1, %(count)s) AS g
) AS s
"""
SIGNAL_WAIT_EVERY = 4

# A few waiting runs whose timer is due: inserted for the wake-up's measurement "a few due", made
# due again (outside the timing) before each timed wake-up, and deleted afterwards.
DUE = 10
INSERT_DUE = """
INSERT INTO durably_run (
    id, job_name, queue, priority, status, input, output, labels, run_after, attempt,
    failed_attempts, current_step_index, completed_step_count, lease_owner, lease_generation,
    created_at, updated_at, started_at, completed_at, wake_at, waiting_for
)
SELECT gen_random_uuid(), 'bench.noop', 'default', 0, 'waiting', 'null'::jsonb, NULL, '{}'::jsonb,
       now(), 1, 0, 0, 0, '', 1, now(), now(), now(), NULL, now() - interval '1 second',
       jsonb_build_object('kind', 'sleep', 'step', 'nap', 'until', now() - interval '1 second')
FROM generate_series(1, %(count)s)
RETURNING id
"""
MAKE_DUE = """
UPDATE durably_run SET status = 'waiting', wake_at = now() - interval '1 second', run_after = now()
WHERE id = ANY(%s)
"""
WAKE_LIMIT = 100  # ``waits.wake_due_runs()``'s default, as the worker calls it

WORKERS = 4
CONCURRENCY = 4


def seed(finished: int, pending: int, waiting: int = 0) -> dict[str, Any]:
    """Empty the runs table, then fill it with finished, pending and waiting runs (see
    ``SEED_WAITING``); return timings."""
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
        if waiting:
            cursor.execute(SEED_WAITING, {"count": waiting, "every": SIGNAL_WAIT_EVERY})
        cursor.execute("SET synchronous_commit = on")
    seeded = time.perf_counter()
    analyze_runs(vacuum=True)
    return {
        "seed_s": round(seeded - started, 1),
        "vacuum_analyze_s": round(time.perf_counter() - seeded, 1),
        "table_size": scalar("SELECT pg_size_pretty(pg_total_relation_size('durably_run'))"),
        "waking_index_size": scalar(
            "SELECT pg_size_pretty(pg_relation_size('durably_run_waking_idx'))"
        ),
    }


def _capture(action: Callable[[], Any]) -> tuple[Any, list[tuple[str, Any]]]:
    """Run ``action``; return its result and the statements it executed on this connection."""
    executed: list[tuple[str, Any]] = []

    def capture(execute: Any, sql: str, params: Any, many: Any, context: Any) -> Any:
        executed.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        result = action()
    return result, executed


def _row_locking(executed: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The row-locking candidate queries (a SELECT, or a CTE with an UPDATE), else the first one."""
    return [(sql, p) for sql, p in executed if "FOR UPDATE" in sql.upper()] or executed[:1]


def _plans(statements: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of each statement (rolled back), and its generic plan."""
    plans = []
    for sql, params in statements:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params or None)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            transaction.set_rollback(True)
        plans.append({"sql": sql, "plan": plan, "generic_plan": _generic_plan(sql, params)})
    return plans


def _no_seq_scan(plans: list[dict[str, Any]]) -> bool:
    return bool(plans) and all(
        "Seq Scan on durably_run" not in p["plan"] + p["generic_plan"] for p in plans
    )


def explain_claim() -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) the row-locking statements of one claim (rolled back)."""
    claimed, executed = _capture(lambda: leases.claim(worker_id="bench-explain", limit=1))
    _complete(claimed)
    plans = _plans(_row_locking(executed))
    return {
        "claim_statements": [sql for sql, _params in executed],
        "plans": plans,
        "index_driven": _no_seq_scan(plans),
    }


def _generic_plan(sql: str, params: Any) -> str:
    """``EXPLAIN`` of the plan PostgreSQL may settle on for the prepared statement: the one made
    without looking at the parameters (``plan_cache_mode = force_generic_plan``)."""
    parts = sql.split("%s")
    numbered = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
    arguments = f"({', '.join(['%s'] * len(params))})" if params else ""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            cursor.execute(f"PREPARE durably_bench_claim AS {numbered}")
            cursor.execute(
                f"EXPLAIN EXECUTE durably_bench_claim{arguments}", list(params or []) or None
            )
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
    return {"claims": count, **_timings(timings)}


def _timings(timings: list[float]) -> dict[str, Any]:
    ordered = sorted(timings)
    return {
        "median_ms": round(statistics.median(timings), 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 3),
        "mean_ms": round(statistics.fmean(timings), 3),
    }


def _make_due(ids: list[Any]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(MAKE_DUE, [ids])


def time_wake_due(calls: int, due: list[Any]) -> dict[str, Any]:
    """``calls`` timed ``waits.wake_due_runs()``, each after the ``due`` runs were made due again
    (outside the timing); each must wake exactly those."""
    timings = []
    for _ in range(calls):
        if due:
            _make_due(due)
        started = time.perf_counter()
        woken = waits.wake_due_runs(WAKE_LIMIT)
        timings.append((time.perf_counter() - started) * 1000)
        if woken != len(due):
            raise BenchError(f"a timed wake-up woke {woken} runs, not the {len(due)} due")
    return {"calls": calls, **_timings(timings)}


def _on_runs(executed: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The statements that read or write ``durably_run`` (not transaction control)."""
    verbs = ("SELECT", "UPDATE", "WITH", "INSERT", "DELETE")
    return [
        (sql, params)
        for sql, params in executed
        if sql.lstrip().upper().startswith(verbs) and "durably_run" in sql
    ]


INDEX_USED = r"(?:Index (?:Only )?Scan using|Bitmap Index Scan on) (\w+)"


def _plan_verdict(plans: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the custom and the generic plans scan ``durably_run`` sequentially, and which
    indexes of it the custom plans read."""
    custom = "\n".join(p["plan"] for p in plans)
    generic = "\n".join(p["generic_plan"] for p in plans)
    return {
        "custom_index_driven": bool(plans) and "Seq Scan on durably_run" not in custom,
        "generic_index_driven": bool(plans) and "Seq Scan on durably_run" not in generic,
        "custom_indexes": sorted(set(re.findall(INDEX_USED, custom))),
        "generic_indexes": sorted(set(re.findall(INDEX_USED, generic))),
    }


def measure_wake(calls: int) -> dict[str, Any]:
    """The wake-up of due timers (``waits.wake_due_runs()``) with nothing due, then with ``DUE``
    runs due: the statements it runs on ``durably_run``, their plans (custom, rolled back, and
    generic) and ``calls`` timed calls each."""
    woken, executed = _capture(lambda: waits.wake_due_runs(WAKE_LIMIT))
    if woken:
        raise BenchError(f"{woken} waiting runs were due before the wake-up's measurement")
    idle_plans = _plans(_on_runs(executed))
    idle = time_wake_due(calls, [])
    with connection.cursor() as cursor:
        cursor.execute(INSERT_DUE, {"count": DUE})
        due = [row[0] for row in cursor.fetchall()]
    try:
        woken, due_executed = _capture(lambda: waits.wake_due_runs(WAKE_LIMIT))
        if woken != DUE:
            raise BenchError(f"the wake-up woke {woken} runs, not the {DUE} due")
        _make_due(due)
        due_plans = _plans(_on_runs(due_executed))  # rolled back: the runs stay due
        few = time_wake_due(calls, due)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM durably_run WHERE id = ANY(%s)", [due])
    verdict = _plan_verdict(idle_plans + due_plans)
    return {
        "nothing_due": {
            **idle,
            "statements": [sql for sql, _params in executed],
            "plans": idle_plans,
        },
        "few_due": {
            **few,
            "due": DUE,
            "statements": [sql for sql, _params in due_executed],
            "plans": due_plans,
        },
        **verdict,
        "reads_waking_idx": "durably_run_waking_idx" in verdict["custom_indexes"],
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


def measure(
    finished: int,
    pending: int,
    claims: int,
    drain_runs: int,
    *,
    waiting: int = 0,
    wake: bool = False,
) -> dict[str, Any]:
    """A table of ``finished``, ``pending`` and ``waiting`` runs: the claim (plans, timed), the
    wake-up of due timers with ``wake`` (:func:`measure_wake`), and the drain."""
    result: dict[str, Any] = {"finished": finished, "pending": pending, "waiting": waiting}
    result.update(seed(finished, pending, waiting))
    return _measure(result, claims, drain_runs, wake=wake)


def _measure(result: dict[str, Any], claims: int, drain_runs: int, *, wake: bool) -> dict[str, Any]:
    _complete(leases.claim(worker_id="bench-warmup", limit=1))  # warm up connection and caches
    result["explain"] = explain_claim()
    result["claim"] = time_claims(claims)
    if wake:
        result["wake"] = measure_wake(claims)
    result["drain"] = drain(drain_runs)
    return result
