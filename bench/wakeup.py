"""Wake-up latency: trigger committed -> job function entered, with one idle worker.

The worker is a real ``manage.py durably_worker`` subprocess. Each run's job returns the wall-clock
time it was entered; the latency is that minus the time the trigger's commit returned (same machine,
same clock). Runs are triggered one at a time, each after the previous finished, so the worker is
idle (waiting on LISTEN, or polling with ``--no-listen``) whenever a run arrives.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

from bench import jobs
from bench.database import reset_runs, worker_env
from django_durably import wait_for_run
from django_durably.models import Run


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def measure(samples: int, *, listen: bool, poll_interval: float) -> dict[str, Any]:
    reset_runs()
    command = [
        sys.executable,
        "-m",
        "django",
        "durably_worker",
        "--concurrency",
        "1",
        "--poll-interval",
        str(poll_interval),
        "-v",
        "0",
    ]
    if not listen:
        command.append("--no-listen")
    worker = subprocess.Popen(command, env=worker_env())  # noqa: S603
    try:
        warmup = jobs.entered_at.trigger()
        wait_for_run(warmup.pk, timeout=60, poll_interval=0.01)
        latencies = []
        for _ in range(samples):
            time.sleep(0.02)  # let the worker go back to waiting
            run = jobs.entered_at.trigger()
            committed = time.time()
            finished: Run = wait_for_run(run.pk, timeout=30, poll_interval=0.005)
            latencies.append((float(finished.output) - committed) * 1000)
    finally:
        worker.terminate()
        worker.wait(30)
    return {
        "benchmark": "wakeup_latency",
        "listen": listen,
        "poll_interval_s": poll_interval,
        "samples": samples,
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p95_ms": round(percentile(latencies, 0.95), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
        "max_ms": round(max(latencies), 2),
    }
