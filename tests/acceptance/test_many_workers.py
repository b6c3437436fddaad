"""Several worker processes with several threads each drain a few thousand runs: every run executes
exactly once, no lease generation has two owners, and runs sharing a concurrency key never overlap.

The recording jobs (``tests.recorded`` and ``tests.recorded_too``) log ``enter`` with the lease they
read from their own row and ``exit`` at the end; ``RunLog.created_at`` is the database clock.

Half the runs have no key and are triggered up front. The other half share five keys over two job
names; since only one run per (job, key) may be pending, a feeder in the test triggers the next one
as soon as a key's pending run is claimed. Keyed runs have a higher priority, so they are claimed
alongside the unkeyed ones, and each claim must skip the keys that are busy.
"""

from __future__ import annotations

import re
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from django_durably import TriggerItem
from django_durably.models import Run, RunLog, Step
from tests import jobs
from tests.acceptance.processes import Workers, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, databases="__all__")]

RUNS = {"default": 300, "postgres": 2000}  # SQLite serialises every write: fewer runs
PROCESSES = 4
THREADS = 3
KEYS = [f"key-{i}" for i in range(5)]
KEYED_JOBS = [jobs.recorded, jobs.recorded_too]  # two jobs: two pending runs per key at a time
PAUSE = 0.002  # inside the step, so runs of one key would overlap if serialisation failed


class KeyedFeeder:
    """Triggers keyed runs as fast as the one-pending-run-per-(job, key) rule allows."""

    def __init__(self, seqs: range) -> None:
        self.seqs: Iterator[int] = iter(seqs)
        self.remaining = len(seqs)

    def feed(self) -> None:
        if not self.remaining:
            return
        pending = set(
            Run.objects.filter(status="pending", concurrency_key__isnull=False).values_list(
                "job_name", "concurrency_key"
            )
        )
        for job in KEYED_JOBS:
            items = []
            for key in KEYS:
                if (job.name, key) in pending or not self.remaining:
                    continue
                items.append(
                    TriggerItem(
                        input={"seq": next(self.seqs), "pause": PAUSE},
                        concurrency_key=key,
                        priority=1,  # ahead of the unkeyed runs: both kinds run side by side
                    )
                )
                self.remaining -= 1
            if items:
                runs = job.trigger_many(items)
                assert {run.disposition for run in runs} == {"created"}


def claimed_by(log: str) -> int:
    match = re.search(r"exiting: (\d+) claimed", log)
    assert match, f"no exit summary in the worker log:\n{log[-2000:]}"
    return int(match.group(1))


def test_many_workers__every_run_once_and_keyed_runs_never_overlap(db_alias: str, workers: Workers):
    total = RUNS[db_alias]
    unkeyed = total // 2
    jobs.recorded.trigger_many([{"seq": seq, "pause": PAUSE} for seq in range(unkeyed)])
    feeder = KeyedFeeder(range(unkeyed, total))
    feeder.feed()

    started = time.monotonic()
    pool = [
        workers.start(
            *("--concurrency", str(THREADS), "--lease-seconds", "30", "--poll-interval", "0.1"),
            *("--worker-id", f"many-{number}"),
            name=f"many-{number}",
            env={"DURABLY_WORKER_CONN_MAX_AGE": "600"},  # as a busy deployment would
        )
        for number in range(PROCESSES)
    ]

    def drained() -> bool:
        feeder.feed()
        failed = Run.objects.filter(status="failed").first()
        assert failed is None, f"run {failed.pk} failed: {failed.error}"
        return not feeder.remaining and not Run.objects.exclude(status="completed").exists()

    wait_for(drained, timeout=150, what=f"{total} runs to complete", workers=pool, interval=0.02)
    elapsed = time.monotonic() - started
    for process in pool:
        process.send(signal.SIGTERM)
    for process in pool:
        assert process.wait_exit(30) == 0
    print(f"{total} runs on {db_alias} in {elapsed:.1f}s ({total / elapsed:.0f} runs/s)")

    runs = {
        run_id: (status, attempt, generation, owner, key)
        for run_id, status, attempt, generation, owner, key in Run.objects.values_list(
            "id", "status", "attempt", "lease_generation", "lease_owner", "concurrency_key"
        )
    }
    assert len(runs) == total
    # No worker died, so no lease was lost: every run was claimed once and completed.
    assert {run[:3] for run in runs.values()} == {("completed", 1, 1)}
    assert Step.objects.count() == total
    assert Step.objects.filter(status="completed", name="work").count() == total

    records: dict[str, dict[Any, list[tuple[datetime, dict[str, Any]]]]] = {
        "enter": defaultdict(list),
        "exit": defaultdict(list),
    }
    logs = RunLog.objects.filter(message__in=records)
    for run_id, message, data, created_at in logs.values_list(
        "run_id", "message", "data", "created_at"
    ):
        records[message][run_id].append((created_at, data))
    assert {run_id: len(seen) for run_id, seen in records["enter"].items()} == dict.fromkeys(
        runs, 1
    )
    assert {run_id: len(seen) for run_id, seen in records["exit"].items()} == dict.fromkeys(runs, 1)

    owners: dict[tuple[Any, int], set[str]] = defaultdict(set)
    for run_id, seen in records["enter"].items():
        for _created_at, data in seen:
            owners[run_id, data["generation"]].add(data["owner"])
    assert all(len(names) == 1 for names in owners.values())
    for run_id, seen in records["enter"].items():
        assert seen[0][1]["owner"] == runs[run_id][3]  # the owner that completed it
    assert len({owner for _status, _a, _g, owner, _k in runs.values()}) > 1

    intervals: dict[str, list[tuple[datetime, datetime, Any]]] = defaultdict(list)
    for run_id, (_status, _a, _g, _owner, key) in runs.items():
        if key is not None:
            entered = records["enter"][run_id][0][0]
            exited = records["exit"][run_id][0][0]
            assert entered <= exited
            intervals[key].append((entered, exited, run_id))
    assert sorted(intervals) == KEYS
    assert sum(len(spans) for spans in intervals.values()) == total - unkeyed
    for key, spans in intervals.items():
        spans.sort()
        for before, after in zip(spans, spans[1:], strict=False):
            assert after[0] >= before[1], f"runs {before[2]} and {after[2]} of {key} overlap"

    assert sum(claimed_by(process.log()) for process in pool) == total
