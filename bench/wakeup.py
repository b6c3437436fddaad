"""Wake-up latency: trigger committed -> job function entered (its first step starts), with one idle
worker; and the same for the two wake-ups of durable waits that a notification carries:
``send_signal`` returned -> the waiting run's wait returned (:func:`signal`), and a child run's end
-> its parent's wait returned (:func:`children`).

The worker is a real ``durably_worker`` subprocess (concurrency 1). Each run's job returns the
wall-clock time it was entered; the latency is that minus the time the trigger's commit returned
(same machine, same clock). Runs are triggered one at a time, each after the previous finished and
a short pause, so the worker is idle (waiting on LISTEN, or polling with ``--no-listen``) whenever a
run arrives; when polling, the pause is random within the poll interval, so runs arrive at random
points of the worker's poll cycle. The measuring process waits a little before it starts polling for the outcome, so its
own queries stay out of the measured window.

A signal's sample: a run of ``bench.awaits_signal`` is triggered and, once it is ``waiting`` (its
attempt over, the worker idle again), a short pause, then ``send_signal(run, "go")``; the latency is
the time the job's wait returned minus the time ``send_signal`` returned (it commits the signal and
the wake-up, whose notification reaches the worker). The job also stamps when it was entered again
(the run claimed, before its replay), reported beside it.

A child's sample: a run of ``bench.fan_in`` triggers one child run (``bench.ended_at``, which
returns the time its function returned) and waits for it; the latency is the time the parent's wait
returned minus the child's stamp, so it covers writing the child's end, waking the parent, its
notification, the claim, the replay and the wait's own write. The measuring process only polls for
the parent's end (every 10 ms): it has nothing to send.

The floor is the same measurement for the bare SQL queue: a psycopg process waiting on LISTEN that
claims the job (``SKIP LOCKED``) and stamps the time, after an INSERT + NOTIFY transaction commits.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from typing import Any

from bench import jobs, sqlqueue
from bench.database import autocommit_psycopg, reset_runs, scalar, server_url
from bench.procs import BenchError, Processes, worker_command
from django_durably import send_signal

PAUSE = 0.02  # before each trigger: the worker goes back to waiting
SETTLE = 0.02  # after each trigger, before polling for the outcome


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "samples": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p95_ms": round(percentile(latencies, 0.95), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "max_ms": round(max(latencies), 3),
    }


def _entered_at(run_id: Any, timeout: float, procs: Processes) -> float:
    deadline = time.monotonic() + timeout
    while True:
        row = scalar(
            "SELECT CASE WHEN status = 'completed' THEN output::text ELSE status END"
            " FROM durably_run WHERE id = %s",
            [run_id],
        )
        if row not in ("pending", "leased"):
            if row in ("failed", "cancelled", None):
                raise BenchError(f"wake-up run {run_id} ended {row}")
            return float(row)
        procs.check_alive_or_succeeded()
        if time.monotonic() > deadline:
            raise BenchError(f"wake-up run {run_id} not done within {timeout}s")
        time.sleep(0.005)


def durably(samples: int, *, listen: bool, poll_interval: float) -> dict[str, Any]:
    reset_runs()
    with Processes() as procs:
        procs.start(worker_command(concurrency=1, poll_interval=poll_interval, listen=listen))
        for _ in range(3):  # warm up: start-up, imports, connections
            _entered_at(jobs.entered_at.trigger().pk, 60, procs)
        latencies = []
        for _ in range(samples):
            # Polling: arrive at a random point of the worker's poll cycle.
            time.sleep(PAUSE if listen else random.uniform(PAUSE, poll_interval))  # noqa: S311
            run = jobs.entered_at.trigger()
            committed = time.time()
            time.sleep(SETTLE)
            latencies.append((_entered_at(run.pk, 30, procs) - committed) * 1000)
    reset_runs()
    return {"listen": listen, "poll_interval_s": poll_interval, **summary(latencies)}


def _reached(
    run_id: Any, status: str, timeout: float, procs: Processes, *, every: float = 0.005
) -> Any:
    """Wait for the run to reach ``status``; return its output (decoded JSON)."""
    deadline = time.monotonic() + timeout
    while True:
        row = scalar(
            "SELECT json_build_array(status, output)::text FROM durably_run WHERE id = %s",
            [run_id],
        )
        current, output = json.loads(row) if row is not None else (None, None)
        if current == status:
            return output
        if current in ("completed", "failed", "cancelled", None):
            raise BenchError(f"wake-up run {run_id} is {current}, not {status}")
        procs.check_alive_or_succeeded()
        if time.monotonic() > deadline:
            raise BenchError(f"wake-up run {run_id} not {status} within {timeout}s")
        time.sleep(every)


def _wait_summary(continued: list[float], entered: list[float]) -> dict[str, Any]:
    return {"continued": summary(continued), "entered": summary(entered)}


def signal(samples: int, *, poll_interval: float = 1.0) -> dict[str, Any]:
    """``send_signal`` returned -> the waiting run's wait returned; one idle worker (LISTEN)."""
    reset_runs()
    continued, entered = [], []
    with Processes() as procs:
        procs.start(worker_command(concurrency=1, poll_interval=poll_interval))
        for sample in range(samples + 3):  # 3 to warm up: start-up, imports, connections
            run = jobs.awaits_signal.trigger()
            _reached(run.pk, "waiting", 60, procs)
            time.sleep(PAUSE)
            sent = send_signal(run.pk, "go")
            returned = time.time()
            if not sent.woke:
                raise BenchError(f"send_signal did not wake run {run.pk} ({sent.run_status})")
            time.sleep(SETTLE)
            output = _reached(run.pk, "completed", 30, procs)
            if sample >= 3:
                continued.append((output["continued"] - returned) * 1000)
                entered.append((output["entered"] - returned) * 1000)
    reset_runs()
    return {"poll_interval_s": poll_interval, **_wait_summary(continued, entered)}


def children(samples: int, *, poll_interval: float = 1.0) -> dict[str, Any]:
    """A child run's end -> its parent's wait returned, with one idle worker (LISTEN)."""
    reset_runs()
    continued, entered = [], []
    with Processes() as procs:
        procs.start(worker_command(concurrency=1, poll_interval=poll_interval))
        for sample in range(samples + 3):  # 3 to warm up
            time.sleep(PAUSE)
            run = jobs.fan_in.trigger()
            output = _reached(run.pk, "completed", 60, procs, every=0.01)
            if sample >= 3:
                continued.append((output["continued"] - output["child_ended"]) * 1000)
                entered.append((output["entered"] - output["child_ended"]) * 1000)
    reset_runs()
    return {"poll_interval_s": poll_interval, **_wait_summary(continued, entered)}


def floor(samples: int) -> dict[str, Any]:
    """The bare SQL queue's wake-up latency (LISTEN, SKIP LOCKED claim)."""
    with autocommit_psycopg() as conn:
        sqlqueue.setup(conn, 0)
    insert = f"INSERT INTO {sqlqueue.TABLE} (payload) VALUES (NULL) RETURNING id"
    stamped = f"SELECT claimed_wall FROM {sqlqueue.TABLE} WHERE id = %s"
    with Processes() as procs, autocommit_psycopg() as conn:
        command = [sys.executable, "-m", "bench.sqlqueue", "--listen", "--dsn", server_url()]
        procs.start(command)
        time.sleep(0.5)
        latencies = []
        for sample in range(samples + 3):
            time.sleep(PAUSE)
            with conn.transaction():
                row = conn.execute(insert).fetchone()
                conn.execute("SELECT pg_notify(%s, '')", [sqlqueue.CHANNEL])
            committed = time.time()
            assert row is not None  # noqa: S101
            time.sleep(SETTLE / 4)
            deadline = time.monotonic() + 30
            while (claimed := conn.execute(stamped, [row[0]]).fetchone()[0]) is None:  # type: ignore[index]
                procs.check_alive_or_succeeded()
                if time.monotonic() > deadline:
                    raise BenchError("the SQL queue listener did not claim its job")
                time.sleep(0.002)
            if sample >= 3:
                latencies.append((claimed - committed) * 1000)
        conn.execute(f"TRUNCATE {sqlqueue.TABLE}")
    return summary(latencies)
