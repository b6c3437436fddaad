"""A running worker process survives losing its PostgreSQL connections, and a server restart.

Two workers run side by side on separate queues: ``fresh`` with Django's default ``CONN_MAX_AGE=0``
(a new connection per claim and per run) and ``kept`` with persistent, health-checked connections
(the configuration to use with persistent connections: without health checks, the first run a slot
executes on its broken connection stops as lost and waits for its lease to expire). Both must
reconnect and carry on, retrying failed claims with backoff rather than in a hot loop; their lease
keepers must reconnect too, or every run would lose its lease; and a run that was in the middle of a
step when its connection broke completes after a reclaim, its completed steps not repeated.

The restart test restarts the local server (``pg_ctlcluster``), which disturbs anything else using
it: deselect it with ``-m "not pg_restart"`` while other test runs share the server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import DatabaseError, connections

from django_durably.models import Run, Step
from tests import jobs
from tests.acceptance.processes import WorkerProcess, Workers, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.parametrize("db_alias", ["postgres"], indirect=True),
]

QUEUES = ("fresh", "kept")
MAX_CLAIM_FAILURES = 50  # backoff doubles from 0.5s: a hot loop would log thousands


def start_workers(workers: Workers, lease_seconds: int) -> dict[str, WorkerProcess]:
    options = (
        "--concurrency",
        "2",
        "--poll-interval",
        "0.2",
        "--lease-seconds",
        str(lease_seconds),
    )
    return {
        "fresh": workers.start(*options, "--queue", "fresh", "--worker-id", "fresh", name="fresh"),
        "kept": workers.start(
            *options,
            *("--queue", "kept", "--worker-id", "kept"),
            name="kept",
            env={"DURABLY_WORKER_CONN_MAX_AGE": "600", "DURABLY_WORKER_CONN_HEALTH_CHECKS": "1"},
        ),
    }


def trigger_on_each_queue(label: str) -> list[Run]:
    return [jobs.noop.trigger(f"{label} {queue}", queue=queue) for queue in QUEUES]


def wait_completed(
    runs: list[Run], processes: dict[str, WorkerProcess], *, timeout: float
) -> list[Run]:
    ids = [run.pk for run in runs]
    wait_for(
        lambda: Run.objects.filter(pk__in=ids, status="completed").count() == len(ids),
        timeout=timeout,
        what="both workers to complete their runs",
        workers=processes.values(),
    )
    done = list(Run.objects.filter(pk__in=ids))
    for run in done:
        assert run.lease_owner == run.queue  # each worker took its own queue's run
    return done


def block_a_run_on_each_queue(tmp_path: Path, processes: dict[str, WorkerProcess]) -> list[Run]:
    """One ``side_effects`` run per worker, waiting at the gate in its first step."""
    runs = []
    for queue in QUEUES:
        folder = tmp_path / queue
        folder.mkdir()
        runs.append(
            jobs.side_effects.trigger({"dir": str(folder), "steps": 2, "block_at": 0}, queue=queue)
        )
    wait_for(
        lambda: all((tmp_path / queue / "entered-0-1").exists() for queue in QUEUES),
        timeout=30,
        what="both workers to wait at their gates",
        workers=processes.values(),
    )
    return runs


def wait_renewed_after(
    runs: list[Run], moment: datetime, lease_seconds: int, processes: dict[str, WorkerProcess]
) -> None:
    """Wait until each run's lease (same generation) was renewed after ``moment`` (database clock)."""
    renewed = Run.objects.filter(
        pk__in=[run.pk for run in runs],
        status="leased",
        lease_generation=1,
        lease_expires_at__gt=moment + timedelta(seconds=lease_seconds),
    )
    wait_for(
        lambda: renewed.count() == len(runs),
        timeout=lease_seconds * 3,
        what="the lease keepers to renew over new connections",
        workers=processes.values(),
    )


def finish_blocked(
    runs: list[Run], tmp_path: Path, processes: dict[str, WorkerProcess], lease_seconds: int
) -> None:
    """Open the gates; each run completes (after a reclaim if its connection was lost mid-step)."""
    for queue in QUEUES:
        (tmp_path / queue / "gate").touch()
    for run in wait_completed(runs, processes, timeout=lease_seconds + 30):
        names = Step.objects.filter(run_id=run.pk, status="completed").values_list("name")
        assert sorted(names) == [("step-0",), ("step-1",)]
        lines = (tmp_path / run.queue / "side-effects.txt").read_text().splitlines()
        assert lines.count(f"step-1 attempt-{run.attempt}") == 1
        assert len(lines) <= 3  # step-0's body ran at most twice: once per attempt


def database_now() -> datetime:
    with connections["postgres"].cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def trigger_when_reachable(label: str) -> list[Run]:
    """Trigger once the server accepts connections again (the test's own are broken)."""

    def attempt() -> list[Run] | None:
        connections.close_all()
        try:
            return trigger_on_each_queue(label)
        except DatabaseError:
            return None

    return wait_for(attempt, timeout=60, what="PostgreSQL to accept connections", interval=0.2)


def stop_and_check(processes: dict[str, WorkerProcess]) -> None:
    for process in processes.values():
        failures = process.log().count("Claim failed")
        assert failures < MAX_CLAIM_FAILURES, f"{process.name} retried claims {failures} times"
    for process in processes.values():
        process.send(signal.SIGTERM)
    for process in processes.values():
        assert process.wait_exit(20) == 0


def test_postgres__workers_reconnect_after_their_connections_are_terminated(
    workers: Workers, tmp_path: Path
):
    lease_seconds = 6  # a renewal may fail once, while the keeper reconnects
    processes = start_workers(workers, lease_seconds)
    wait_completed(trigger_on_each_queue("warm-up"), processes, timeout=30)
    blocked = block_a_run_on_each_queue(tmp_path, processes)
    # Each lease keeper has renewed once, so it holds a connection the termination will break.
    wait_renewed_after(blocked, database_now(), lease_seconds, processes)

    with connections["postgres"].cursor() as cursor:
        cursor.execute(
            "SELECT now(), count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        terminated_at, terminated = cursor.fetchone()
    assert terminated >= 4  # at least each worker's listener and lease keeper

    # A renewal racing the termination could end a little after it: allow half a second.
    wait_renewed_after(blocked, terminated_at + timedelta(seconds=0.5), lease_seconds, processes)
    wait_completed(trigger_on_each_queue("after"), processes, timeout=30)
    finish_blocked(blocked, tmp_path, processes, lease_seconds)
    assert all(process.alive() for process in processes.values())
    stop_and_check(processes)


def postgres_cluster() -> tuple[str, str, str]:
    """``(pg_ctlcluster, version, name)`` to restart the local cluster, or skip with the reason."""
    command = shutil.which("pg_ctlcluster")
    if command is None:
        pytest.skip("pg_ctlcluster is not installed")
    if os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root")
    if settings.DATABASES["postgres"]["HOST"] not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip("the PostgreSQL server under test is not local")
    versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
    if len(versions) != 1 or not Path("/etc/postgresql", versions[0], "main").is_dir():
        pytest.skip(f"expected one local cluster '<version>/main' in /etc/postgresql: {versions}")
    return command, versions[0], "main"


def server_started_at() -> datetime:
    with connections["postgres"].cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()")
        return cursor.fetchone()[0]


@pytest.mark.pg_restart
def test_postgres__workers_survive_a_server_restart(workers: Workers, tmp_path: Path):
    command, version, cluster = postgres_cluster()
    lease_seconds = 15  # outlives the restart, and a failed renewal or two
    processes = start_workers(workers, lease_seconds)
    wait_completed(trigger_on_each_queue("warm-up"), processes, timeout=30)
    blocked = block_a_run_on_each_queue(tmp_path, processes)
    wait_renewed_after(blocked, database_now(), lease_seconds, processes)  # keepers connected
    started_at = server_started_at()

    restart = subprocess.run(
        [command, "--skip-systemctl-redirect", version, cluster, "restart"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert restart.returncode == 0, restart.stderr or restart.stdout

    runs = trigger_when_reachable("after the restart")
    restarted_at = server_started_at()
    assert restarted_at > started_at
    # The claim backoff is at most a few seconds after a short outage.
    wait_completed(runs, processes, timeout=45)
    wait_renewed_after(blocked, restarted_at, lease_seconds, processes)
    finish_blocked(blocked, tmp_path, processes, lease_seconds)
    assert all(process.alive() for process in processes.values())
    stop_and_check(processes)
