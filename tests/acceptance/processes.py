"""Real ``manage.py durably_worker`` subprocesses, and waits that always have a deadline.

A :class:`Workers` pool starts worker processes against the test database the pytest process is
using (see ``tests/worker_settings.py``), sends each one's stdout and stderr to its own log file, and
kills whatever is left at teardown.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections

from tests.concurrency import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_INTERVAL = 0.05


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if pytest dies without its teardown (Linux)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class WorkerProcess:
    """One ``durably_worker`` subprocess with its combined stdout/stderr in ``log_path``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self._log_file = log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "django", "durably_worker", *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal is for pytest, not for the workers
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def __repr__(self) -> str:
        return f"<worker {self.name} pid={self.pid} returncode={self.popen.returncode}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def send(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def kill(self) -> None:
        self.popen.kill()

    def stop(self) -> None:
        """SIGSTOP the process and wait until it is stopped (on Linux, by ``/proc``)."""
        self.send(signal.SIGSTOP)
        stat = Path(f"/proc/{self.pid}/stat")
        if stat.exists():
            # The state follows the parenthesised command name: "pid (name) T ...".
            wait_for(
                lambda: stat.read_text().rpartition(")")[2].split()[0] in ("T", "t"),
                timeout=10,
                what=f"{self.name} to stop",
                interval=0.005,
            )

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit and return its exit code (negative: killed by a signal)."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self!r} did not exit within {timeout}s; its log ends:\n{self.tail()}"
            ) from None

    def wait_for_log(self, text: str, *, timeout: float) -> None:
        """Wait until ``text`` appears in the log (the process may stop or exit meanwhile)."""

        def seen() -> bool:
            if text in self.log():
                return True
            if not self.alive() and text not in self.log():
                raise AssertionError(
                    f"{self!r} exited without logging {text!r}; its log ends:\n{self.tail()}"
                )
            return False

        wait_for(seen, timeout=timeout, what=f"{self.name} to log {text!r}")

    def wait_for_outcome(self, run_id: object, attempt: int, *, timeout: float) -> str:
        """Wait for the worker's outcome line of ``run_id``'s ``attempt`` and return the outcome."""
        pattern = re.compile(rf"run={run_id} job=\S+ attempt={attempt} outcome=(\w+)")

        def outcome() -> str | None:
            match = pattern.search(self.log())
            if match is None and not self.alive():
                raise AssertionError(
                    f"{self!r} exited without an outcome for run {run_id} attempt {attempt}; "
                    f"its log ends:\n{self.tail()}"
                )
            return match.group(1) if match else None

        return wait_for(outcome, timeout=timeout, what=f"{self.name} to finish run {run_id}")

    def close(self) -> None:
        """Kill the process if it is still running (stopped ones too) and close its log."""
        if self.alive():
            for signum in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(self.pid, signum)
                except ProcessLookupError:
                    break
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._log_file.close()


def worker_env(alias: str) -> dict[str, str]:
    """The environment of a worker process: the pytest process's test databases, ``alias`` routed."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.worker_settings",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        DURABLY_WORKER_ALIAS=alias,
        DURABLY_WORKER_SQLITE=str(connections["default"].settings_dict["NAME"]),
    )
    if "postgres" in settings.DATABASES:
        env["DURABLY_WORKER_PG_DB"] = str(connections["postgres"].settings_dict["NAME"])
    return env


class Workers:
    """Starts worker processes on the database under test; :meth:`close` kills leftovers."""

    def __init__(self, alias: str, log_dir: Path) -> None:
        self.alias = alias
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def start(
        self, *args: str, name: str | None = None, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        """Start ``durably_worker *args``; ``env`` adds variables (``DURABLY_WORKER_CONN_MAX_AGE``)."""
        name = name or f"worker-{len(self.started)}"
        # Read now, not in __init__: the test databases exist once the test runs.
        env = {**worker_env(self.alias), **(env or {})}
        process = WorkerProcess(name, list(args), env, self.log_dir / f"{name}.log")
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            process.close()
        # Shown by pytest only when the test failed.
        for process in self.started:
            print(f"--- {process!r} {process.args} log {process.log_path}:\n{process.tail(60)}")


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    workers: Iterable[WorkerProcess] = (),
    interval: float = WAIT_INTERVAL,
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Fails at the deadline, or as soon as one of ``workers`` (expected to keep running) has exited.
    """
    watched = list(workers)

    def all_running() -> None:
        for process in watched:
            if not process.alive():
                raise AssertionError(
                    f"{process!r} exited while waiting for {what}; its log ends:\n{process.tail()}"
                )

    return wait_until(
        predicate, timeout=timeout, interval=interval, what=what, meanwhile=all_running
    )


def completed_by(worker: WorkerProcess, run: Any, *, timeout: float, what: str) -> Any:
    """Wait until ``run`` is completed (failing as soon as ``worker`` exits); return it as
    stored."""
    from django_durably.models import Run

    wait_for(
        lambda: Run.objects.filter(pk=run.pk, status="completed").exists(),
        timeout=timeout,
        what=what,
        workers=[worker],
    )
    return Run.objects.get(pk=run.pk)


def side_effects(folder: Path) -> list[str]:
    """The lines the ``tests.side_effects`` job wrote in ``folder``, one per step run."""
    path = folder / "side-effects.txt"
    return path.read_text().splitlines() if path.exists() else []


def wait_entered(
    worker: WorkerProcess, folder: Path, step: int, attempt: int = 1, *, timeout: float = 30
) -> None:
    """Wait until ``worker`` has entered step ``step`` of attempt ``attempt`` of the
    ``tests.side_effects`` run writing in ``folder`` (failing as soon as the worker exits)."""
    wait_for(
        lambda: (folder / f"entered-{step}-{attempt}").exists(),
        timeout=timeout,
        what=f"{worker!r} to enter step-{step} of attempt {attempt}",
        workers=[worker],
    )
