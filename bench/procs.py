"""Subprocesses the benchmarks start (always stopped in ``finally``), and CPU accounting."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any, cast

from bench.database import REPO_ROOT, worker_env


class BenchError(RuntimeError):
    """A benchmark could not produce its figure (a worker died, a deadline passed, ...)."""


def worker_command(
    *,
    concurrency: int,
    until_idle: bool = False,
    max_runs: int | None = None,
    poll_interval: float | None = None,
    listen: bool = True,
) -> list[str]:
    """The project's own ``durably_worker`` command, run with the bench settings."""
    command = [
        sys.executable,
        "-m",
        "django",
        "durably_worker",
        "--concurrency",
        str(concurrency),
        "--grace-period",
        "5",
        "-v",
        "0",
    ]
    if until_idle:
        command.append("--until-idle")
    if max_runs is not None:
        command += ["--max-runs", str(max_runs)]
    if poll_interval is not None:
        command += ["--poll-interval", str(poll_interval)]
    if not listen:
        command.append("--no-listen")
    return command


@dataclass
class Processes:
    """Started subprocesses; leaving the ``with`` block stops whatever still runs.

    Stopping sends SIGTERM (a worker's graceful stop), then SIGTERM again (a worker's hard stop),
    then SIGKILL, each after a short wait. Each process's stderr goes to a temporary file so that a
    failure can be reported with its last lines.
    """

    started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, command: list[str]) -> subprocess.Popen[bytes]:
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=worker_env(), stdout=subprocess.DEVNULL, stderr=stderr
        )
        self.started.append((process, stderr))
        return process

    def check_alive_or_succeeded(self) -> None:
        """Raise if a process exited with an error."""
        for process, stderr in self.started:
            code = process.poll()
            if code not in (None, 0):
                raise BenchError(
                    f"{' '.join(cast(list[str], process.args)[1:5])} exited with {code}: {_tail(stderr)}"
                )

    def all_exited(self) -> bool:
        return all(process.poll() is not None for process, _ in self.started)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every process to exit; True if they all did."""
        deadline = time.monotonic() + timeout
        for process, _stderr in self.started:
            remaining = deadline - time.monotonic()
            try:
                process.wait(max(0.0, remaining))
            except subprocess.TimeoutExpired:
                return False
        return True

    def stop(self) -> None:
        for signum, wait in ((signal.SIGTERM, 3.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            running = [p for p, _ in self.started if p.poll() is None]
            if not running:
                break
            for process in running:
                try:
                    process.send_signal(signum)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            for process in running:
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for _process, stderr in self.started:
            stderr.close()
        self.started.clear()


def _tail(stderr: IO[bytes], lines: int = 8) -> str:
    stderr.seek(0)
    text = stderr.read().decode(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])


# -- CPU -----------------------------------------------------------------------------------------


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def machine_busy(seconds: float = 2.0) -> float | None:
    """Share of all CPUs busy over ``seconds`` (other users of the machine: noise)."""
    try:
        busy, total = _machine_jiffies()
        time.sleep(seconds)
        busy_after, total_after = _machine_jiffies()
    except OSError:
        return None
    return round((busy_after - busy) / max(1, total_after - total), 3)


def _postgres_cpu_seconds() -> float:
    """CPU seconds used by postgres processes (the postmaster's reaped children included)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat:
                raw = stat.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        if comm != "postgres" and not comm.startswith("postgres"):
            continue
        rest = raw[raw.rindex(")") + 2 :].split()
        # utime, stime, cutime, cstime are fields 14-17 (1-based); rest starts at field 3.
        total += sum(int(v) for v in rest[11:15])
    return total / ticks


def _backend_cpu_seconds(database: str) -> dict[int, float]:
    """CPU seconds so far of each live backend connected to ``database``, by pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                title = cmdline.read().decode(errors="replace")
            if not title.startswith("postgres:") or f" {database} " not in title:
                continue
            with open(f"/proc/{pid}/stat") as stat:
                raw = stat.read()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2 :].split()
        found[int(pid)] = (int(rest[11]) + int(rest[12])) / ticks
    return found


@dataclass
class CpuMeter:
    """CPU used between :meth:`start` and :meth:`stop`: the machine, child processes, postgres.

    ``postgres_cpu_s`` counts every postgres process on the machine (other databases' load too);
    ``bench_backends_cpu_s`` only the backends connected to the benchmark database, as last seen by
    :meth:`sample` (call it while the measured processes run: a backend's CPU is read from /proc,
    so what it uses after its last sample, just before it exits, is missed).
    """

    database: str = ""
    started_at: float = 0.0
    machine: tuple[int, int] = (0, 0)
    children: float = 0.0
    postgres: float = 0.0
    backends_base: dict[int, float] = field(default_factory=dict)
    backends_last: dict[int, float] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    def start(self) -> CpuMeter:
        if not self.database:
            from django.conf import settings

            self.database = str(settings.DATABASES["default"]["NAME"])
        try:
            self.machine = _machine_jiffies()
            self.postgres = _postgres_cpu_seconds()
            self.backends_base = _backend_cpu_seconds(self.database)
        except OSError:
            self.machine = (0, 0)
        self.backends_last = dict(self.backends_base)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children = usage.ru_utime + usage.ru_stime
        self.started_at = time.monotonic()
        return self

    def sample(self) -> None:
        if self.machine != (0, 0):
            self.backends_last.update(_backend_cpu_seconds(self.database))

    def stop(self) -> dict[str, Any]:
        """Machine busy share, and CPU seconds of waited-for children and of postgres."""
        elapsed = time.monotonic() - self.started_at
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        result: dict[str, Any] = {
            "elapsed_s": round(elapsed, 3),
            "children_cpu_s": round(usage.ru_utime + usage.ru_stime - self.children, 3),
        }
        if self.machine != (0, 0):
            self.sample()
            busy, total = _machine_jiffies()
            share = (busy - self.machine[0]) / max(1, total - self.machine[1])
            result["machine_busy"] = round(share, 3)
            result["postgres_cpu_s"] = round(_postgres_cpu_seconds() - self.postgres, 3)
            result["bench_backends_cpu_s"] = round(
                sum(
                    cpu - self.backends_base.get(pid, 0.0)
                    for pid, cpu in self.backends_last.items()
                ),
                3,
            )
        result["cores"] = os.cpu_count()
        self.result = result
        return result
