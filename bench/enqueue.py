"""Enqueue throughput: single ``trigger()`` calls, and ``trigger_many()`` in batches."""

from __future__ import annotations

import time
from typing import Any

from bench import jobs
from bench.database import reset_runs, scalar

MAX_SECONDS = 60.0


def single(count: int) -> dict[str, Any]:
    """``count`` calls of ``trigger()`` one after another (each its own transaction)."""
    reset_runs()
    jobs.noop.trigger()  # warm up: connection, imports
    reset_runs()
    done = 0
    started = time.perf_counter()
    while done < count and time.perf_counter() - started < MAX_SECONDS:
        jobs.noop.trigger()
        done += 1
    elapsed = time.perf_counter() - started
    _check(done)
    return {"runs": done, "seconds": round(elapsed, 3), "runs_per_s": round(done / elapsed, 1)}


def many(total: int, batch: int) -> dict[str, Any]:
    """``total`` runs created by ``trigger_many()`` calls of ``batch`` inputs each."""
    reset_runs()
    jobs.noop.trigger_many([None] * min(batch, 10))  # warm up
    reset_runs()
    done = 0
    started = time.perf_counter()
    while done < total and time.perf_counter() - started < MAX_SECONDS:
        size = min(batch, total - done)
        jobs.noop.trigger_many([None] * size)
        done += size
    elapsed = time.perf_counter() - started
    _check(done)
    return {
        "runs": done,
        "batch": batch,
        "seconds": round(elapsed, 3),
        "runs_per_s": round(done / elapsed, 1),
        "batches_per_s": round(done / batch / elapsed, 1),
    }


def _check(expected: int) -> None:
    found = scalar("SELECT count(*) FROM durably_run WHERE status = 'pending'")
    if found != expected:
        raise RuntimeError(f"expected {expected} pending runs, found {found}")
