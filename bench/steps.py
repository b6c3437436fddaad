"""Step checkpoint throughput: runs of ``bench.steps`` executed by a worker in this process, and by
``process_one()``.

Two modes, because they differ in what a step boundary costs. A PostgreSQL **worker** learns of
cancels from notifications, so a step is its checkpoint alone; that is how production runs jobs, and
what the target applies to. **In-process** (``process_one()``), no listener delivers cancels, so
each step boundary also reads the run (a prepared statement, its own transaction).

A step costs one commit, so its rate follows the disk's flush latency, which on a shared machine
drifts by a factor of two within minutes. So the ratio to pgbench is measured in rounds: each round
times pgbench with 1 client for a few seconds just before and just after one run of the steps in each
mode, and sets the steps against the mean of the two; the figures reported are the medians over the
rounds (each round's figures are in the JSON).

Besides steps per second it counts what a step costs the database: statements (captured on the
connection that runs the job) and committed transactions (``pg_stat_database``, minus those of a
zero-step run measured the same way).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from bench import jobs, pgbench
from bench.database import close_django_connections, reset_runs, scalar, xact_commits
from django_durably import process_one, signals
from django_durably.worker import Worker

Mode = Literal["worker", "in-process"]
MODES: tuple[Mode, ...] = ("worker", "in-process")
LISTEN_TIMEOUT = 10.0


def _in_process(run_id: Any) -> None:
    if not process_one("bench-steps"):
        raise RuntimeError("process_one() found no run")


class _ListeningWorker:
    """A one-run ``Worker`` in a thread of this process, started and listening before the run is
    triggered, so the measured time is the run's (plus one wake-up, well under a millisecond)."""

    def __init__(self, on_slot: Callable[[], Any] | None = None) -> None:
        self.worker = Worker(concurrency=1, max_runs=1, poll_interval=5.0, worker_id="bench-steps")
        if on_slot is not None:
            run_job = self.worker._run_job

            def wrapped(run: Any, lease: Any) -> Any:
                with on_slot():
                    return run_job(run, lease)

            self.worker._run_job = wrapped  # type: ignore[method-assign,assignment]
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> _ListeningWorker:
        self.thread.start()
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while (feed := self.worker.keeper.feed) is None or feed.live_since is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the benchmark worker's listener did not connect")
            time.sleep(0.001)
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(60)


def _run_steps(count: int, mode: Mode) -> tuple[float, int]:
    """Trigger and process one run of ``count`` steps; return (seconds, transactions committed)."""
    reset_runs()
    close_django_connections()
    if mode == "in-process":
        run = jobs.steps.trigger({"steps": count})
        close_django_connections()
        before = xact_commits()
        started = time.perf_counter()
        _in_process(run.pk)
        elapsed = time.perf_counter() - started
    else:
        # Timed to the commit of the run's end (its signal), not to the worker's exit: stopping
        # waits for the listener's next check (up to a quarter of a second), which is not the run's.
        ended: list[float] = []

        def on_completed(**_: Any) -> None:
            ended.append(time.perf_counter())

        signals.run_completed.connect(on_completed, dispatch_uid="bench-steps")
        try:
            with _ListeningWorker() as worker:
                before = xact_commits()
                started = time.perf_counter()
                run = jobs.steps.trigger({"steps": count})
                worker.thread.join(60)
        finally:
            signals.run_completed.disconnect(dispatch_uid="bench-steps")
        if not ended:
            raise RuntimeError("the steps run did not complete")
        elapsed = ended[0] - started
    close_django_connections()
    transactions = xact_commits() - before
    status, completed = _state(run.pk)
    if status != "completed" or completed != count:
        raise RuntimeError(f"steps run ({mode}) ended {status} with {completed}/{count} steps")
    return elapsed, transactions


def _state(run_id: Any) -> tuple[str, int]:
    status = scalar("SELECT status FROM durably_run WHERE id = %s", [run_id])
    completed = scalar(
        "SELECT count(*) FROM durably_step WHERE run_id = %s AND status = 'completed'", [run_id]
    )
    return status, completed


def _statements_per_step(mode: Mode, count: int = 20) -> float:
    """Statements sent by the connection that runs the job, per step (a run of ``count`` steps
    minus a run of none)."""
    sent: list[int] = []
    for steps in (0, count):
        reset_runs()
        if mode == "in-process":
            jobs.steps.trigger({"steps": steps})
            with CaptureQueriesContext(connection) as captured:
                process_one("bench-steps")
            sent.append(len(captured.captured_queries))
            continue
        slot: dict[str, CaptureQueriesContext] = {}

        def capture(slot: dict[str, CaptureQueriesContext] = slot) -> CaptureQueriesContext:
            # In the slot's thread: its own connection.
            slot["queries"] = CaptureQueriesContext(connections["default"])
            return slot["queries"]

        with _ListeningWorker(on_slot=capture) as worker:
            jobs.steps.trigger({"steps": steps})
            worker.thread.join(60)
        sent.append(len(slot["queries"].captured_queries))
    return (sent[1] - sent[0]) / count


def measure(count: int, rounds: int, pgbench_seconds: int) -> dict[str, Any]:
    """Both modes, in the same rounds: ``{"worker": {...}, "in-process": {...}}``."""
    base: dict[Mode, int] = {}
    for mode in MODES:
        _run_steps(10, mode)  # warm up
        base[mode] = _run_steps(0, mode)[1]
    measured: dict[Mode, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with pgbench.scratch() as run_pgbench:
        for _ in range(rounds):
            before = run_pgbench(1, pgbench_seconds)["tps"]
            timed = {mode: _run_steps(count, mode) for mode in MODES}
            after = run_pgbench(1, pgbench_seconds)["tps"]
            tps = (before + after) / 2
            for mode, (seconds, transactions) in timed.items():
                measured[mode].append(
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
    result: dict[str, Any] = {}
    for mode in MODES:
        rounds_of_mode = measured[mode]
        statements = _statements_per_step(mode)
        most_transactions = max(r["transactions"] for r in rounds_of_mode)
        result[mode] = {
            "steps": count,
            "mode": mode,
            "rounds": rounds_of_mode,
            "steps_per_s": statistics.median(r["steps_per_s"] for r in rounds_of_mode),
            "pgbench_1c_tps": statistics.median(r["pgbench_1c_tps"] for r in rounds_of_mode),
            "ratio_to_pgbench_1c": statistics.median(
                r["ratio_to_pgbench_1c"] for r in rounds_of_mode
            ),
            "transactions_zero_step_run": base[mode],
            "transactions_per_step": round((most_transactions - base[mode]) / count, 3),
            "statements_per_step": round(statements, 2),
        }
    reset_runs()
    return result
