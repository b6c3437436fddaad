"""The ``durably_worker`` processes of a chaos run: one per slot, replaced when one goes away.

Every process is recorded as a :class:`~chaos.records.WorkerLife` (start, SIGSTOP intervals,
SIGTERM, how and when it ended), which the checker reads. All methods are thread-safe.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chaos.records import WorkerEnd, WorkerLife

REPO_ROOT = Path(__file__).resolve().parent.parent
TERM_ESCALATION = 30.0  # seconds past the grace period after which a draining worker is killed


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the harness dies without cleaning up (Linux).

    The signal comes when the *thread* that started the child ends, so every worker is started by
    the pool's one spawning thread, which lives as long as the pool.
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


READY_LINE = b" starting: queues="  # the worker's first log line, once its signal handlers are set
READY_FALLBACK = 20.0  # seconds


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    life: WorkerLife | None = None
    stopped_since: float | None = None
    log_offset: int = 0  # where this process's lines begin in the slot's log
    ready: bool = False


class WorkerPool:
    """``count`` worker processes started with ``options`` and ``env``; logs go to ``log_dir``."""

    def __init__(
        self,
        count: int,
        options: list[str],
        env: dict[str, str],
        log_dir: Path,
        grace_period: float,
    ) -> None:
        self.options = options
        self.env = env
        self.log_dir = log_dir
        self.grace_period = grace_period
        self.slots = [_Slot(index) for index in range(count)]
        self.lives: list[WorkerLife] = []
        self.lock = threading.RLock()
        self._logs: dict[int, IO[bytes]] = {}
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="chaos-spawner")

    # -- starting and watching -------------------------------------------------------------------

    def start_all(self) -> None:
        with self.lock:
            for slot in self.slots:
                if slot.process is None:
                    self._start(slot)

    def _start(self, slot: _Slot) -> None:
        log = self._logs.get(slot.index)
        if log is None:
            log = self._logs[slot.index] = (self.log_dir / f"worker-{slot.index}.log").open("ab")
        log.write(f"\n=== chaos: starting worker {slot.index} at {time.time():.3f}\n".encode())
        log.flush()
        slot.log_offset, slot.ready = log.tell(), False
        slot.process = self._spawner.submit(
            subprocess.Popen,
            [sys.executable, "-m", "django", "durably_worker", *self.options],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        ).result()
        slot.life = WorkerLife(slot=slot.index, pid=slot.process.pid, started_at=time.time())
        slot.stopped_since = None
        self.lives.append(slot.life)

    def _ended(self, slot: _Slot, end: WorkerEnd, exit_code: int | None) -> None:
        life = slot.life
        if life is not None:
            now = time.time()
            if slot.stopped_since is not None:
                life.stops.append((slot.stopped_since, now))
            life.ended_at, life.end, life.exit_code = now, end, exit_code
        slot.process, slot.life, slot.stopped_since = None, None, None

    def reap(self, *, restart: bool = True) -> list[str]:
        """Record processes that exited and start their replacements; kill a drain that takes too
        long. Returns what happened, for the progress log."""
        happened = []
        with self.lock:
            for slot in self.slots:
                process, life = slot.process, slot.life
                if process is None or life is None:
                    continue
                code = process.poll()
                if code is None:
                    if (
                        life.term_at is not None
                        and time.time() - life.term_at > self.grace_period + TERM_ESCALATION
                    ):
                        process.kill()
                        process.wait()
                        self._ended(slot, "killed", None)
                        happened.append(f"worker {slot.index} ignored SIGTERM: killed")
                    else:
                        continue
                elif life.term_at is not None:
                    self._ended(slot, "terminated", code)
                else:
                    self._ended(slot, "crashed", code)
                    happened.append(f"worker {slot.index} pid {life.pid} exited on its own: {code}")
                if restart:
                    self._start(slot)
        return happened

    def _ready(self, slot: _Slot) -> bool:
        """Whether the slot's worker has started its loop (its SIGTERM handler is set by then: a
        SIGTERM before it would just end the process, which has nothing to drain yet)."""
        if not slot.ready and slot.life is not None:
            with (self.log_dir / f"worker-{slot.index}.log").open("rb") as log:
                log.seek(slot.log_offset)
                seen = READY_LINE in log.read()
            # Should the line ever change, a worker is taken as started after a while all the
            # same, rather than spared every fault from then on.
            if seen or time.time() - slot.life.started_at > READY_FALLBACK:
                slot.ready = True
                slot.life.ready_at = time.time()
        return slot.ready

    def wait_ready(self, timeout: float) -> None:
        """Wait until every running worker has started its loop (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(self._ready(s) for s in self.slots if s.process is not None):
                    return
            time.sleep(0.1)

    def alive(self) -> list[int]:
        """Pids of the running workers."""
        with self.lock:
            return [s.life.pid for s in self.slots if s.life is not None and s.process is not None]

    def active_slots(self) -> list[int]:
        """Slots whose worker runs its loop normally: started, not stopped, not draining."""
        with self.lock:
            return [
                s.index
                for s in self.slots
                if s.process is not None
                and s.life is not None
                and s.stopped_since is None
                and s.life.term_at is None
                and s.process.poll() is None
                and self._ready(s)
            ]

    # -- faults ------------------------------------------------------------------------------------

    def kill(self, index: int) -> int | None:
        """SIGKILL the slot's worker and start a new one; return the killed pid."""
        with self.lock:
            slot = self.slots[index]
            if slot.process is None or slot.life is None:
                return None
            pid = slot.life.pid
            slot.process.kill()
            slot.process.wait()
            self._ended(slot, "killed", None)
            self._start(slot)
            return pid

    def stop(self, index: int) -> int | None:
        """SIGSTOP the slot's worker (``cont`` resumes it); return its pid."""
        with self.lock:
            slot = self.slots[index]
            if slot.process is None or slot.life is None or slot.stopped_since is not None:
                return None
            slot.process.send_signal(signal.SIGSTOP)
            slot.stopped_since = time.time()
            return slot.life.pid

    def cont(self, index: int, pid: int) -> None:
        with self.lock:
            slot = self.slots[index]
            if slot.life is None or slot.life.pid != pid or slot.stopped_since is None:
                return  # killed meanwhile: its stop interval was closed then
            assert slot.process is not None
            slot.process.send_signal(signal.SIGCONT)
            slot.life.stops.append((slot.stopped_since, time.time()))
            slot.stopped_since = None

    def cont_all(self) -> None:
        with self.lock:
            for slot in self.slots:
                if slot.life is not None and slot.stopped_since is not None:
                    self.cont(slot.index, slot.life.pid)

    def term(self, index: int) -> int | None:
        """SIGTERM the slot's worker (it drains; ``reap`` replaces it once it exited)."""
        with self.lock:
            slot = self.slots[index]
            if slot.process is None or slot.life is None or slot.life.term_at is not None:
                return None
            slot.process.send_signal(signal.SIGTERM)
            slot.life.term_at = time.time()
            return slot.life.pid

    # -- the end -----------------------------------------------------------------------------------

    def wait_drained(self, timeout: float) -> None:
        """Replace workers until none is draining (SIGTERM sent before the fault phase ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reap()
            with self.lock:
                if not any(s.life is not None and s.life.term_at is not None for s in self.slots):
                    return
            time.sleep(0.2)

    def shutdown(self) -> None:
        """SIGTERM every worker and wait for it to drain (SIGKILL after grace + a margin)."""
        self.cont_all()
        self.wait_ready(60)
        with self.lock:
            for slot in self.slots:
                if slot.process is not None and slot.life is not None:
                    slot.process.send_signal(signal.SIGTERM)
                    slot.life.term_at = time.time()
        deadline = time.monotonic() + self.grace_period + TERM_ESCALATION
        for slot in self.slots:
            with self.lock:
                process = slot.process
            if process is None:
                continue
            try:
                code: int | None = process.wait(max(0.1, deadline - time.monotonic()))
                end: WorkerEnd = "stopped"
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code, end = None, "killed"
            with self.lock:
                self._ended(slot, end, code)

    def kill_all(self) -> None:
        """Last resort (an error or Ctrl-C in the harness): SIGKILL whatever still runs."""
        with self.lock:
            for slot in self.slots:
                if slot.process is not None:
                    for signum in (signal.SIGCONT, signal.SIGKILL):
                        try:
                            os.kill(slot.process.pid, signum)
                        except ProcessLookupError:
                            break
                    slot.process.wait()
                    self._ended(slot, "killed", None)
            for log in self._logs.values():
                log.close()
            self._logs.clear()
        self._spawner.shutdown(wait=True)
