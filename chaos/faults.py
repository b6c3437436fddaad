"""The fault injector: random, seeded, at given rates, until stopped.

Process faults act on the worker pool at once (SIGKILL and restart; SIGSTOP for longer than the
lease, then SIGCONT; SIGTERM, and a new worker once the old one drained). Database faults (a
PostgreSQL restart, fast or immediate; ``pg_terminate_backend`` of worker connections) run one at a
time on a thread of their own, so a restart never delays a SIGCONT.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg

from chaos.cluster import Server
from chaos.journal import connect
from chaos.records import Restart, Termination
from chaos.workers import WorkerPool

PROCESS_FAULTS = ("sigkill", "sigstop", "sigterm")
DATABASE_FAULTS = ("restart_fast", "restart_immediate", "terminate")
FAULT_KINDS = PROCESS_FAULTS + DATABASE_FAULTS

# Per minute; ``--rate KIND=N`` changes one.
DEFAULT_RATES: dict[str, float] = {
    "sigkill": 2.0,
    "sigstop": 3.0,
    "sigterm": 1.5,
    "restart_fast": 0.5,
    "restart_immediate": 0.5,
    "terminate": 1.5,
}

_TERMINATE_SQL = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND ({where})
"""


class Injector(threading.Thread):
    def __init__(
        self,
        rng: random.Random,
        pool: WorkerPool,
        server: Server,
        *,
        rates: dict[str, float],
        stop_seconds: tuple[float, float],
        restarts_until: float,
        log: Callable[[str], None],
    ) -> None:
        super().__init__(name="chaos-injector", daemon=True)
        self.rng = rng
        self.pool = pool
        self.server = server
        self.rates = {kind: rate for kind, rate in rates.items() if rate > 0}
        self.stop_seconds = stop_seconds
        self.restarts_until = restarts_until  # time.monotonic(): no restart after it
        self.log = log
        self.stopping = threading.Event()
        self.counts: dict[str, int] = defaultdict(int)
        self.restarts: list[Restart] = []
        self.terminations: list[Termination] = []
        self.errors: list[str] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = 0
        self._database = ThreadPoolExecutor(1, thread_name_prefix="chaos-db-fault")
        self._database_busy: Future[Any] | None = None

    def run(self) -> None:
        try:
            next_fault = time.monotonic() + self._interval()
            while not self.stopping.is_set():
                for event in self.pool.reap():
                    self.log(event)
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    heapq.heappop(self._timers)[2]()
                if self.rates and now >= next_fault:
                    self._inject(self._pick())
                    next_fault = time.monotonic() + self._interval()
                self.stopping.wait(0.05)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            raise

    def stop(self) -> None:
        """Stop injecting: SIGCONT whatever is stopped, let a database fault in progress end."""
        self.stopping.set()
        self.join()
        while self._timers:
            heapq.heappop(self._timers)[2]()
        self._database.shutdown(wait=True)
        self.pool.cont_all()

    def _interval(self) -> float:
        total = sum(self.rates.values()) / 60.0
        return self.rng.expovariate(total) if total > 0 else 3600.0

    def _pick(self) -> str:
        kinds = sorted(self.rates)
        return self.rng.choices(kinds, weights=[self.rates[k] for k in kinds])[0]

    def _later(self, seconds: float, action: Callable[[], None]) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (time.monotonic() + seconds, self._timer_seq, action))

    def _inject(self, kind: str) -> None:
        if kind in DATABASE_FAULTS:
            if kind.startswith("restart") and time.monotonic() > self.restarts_until:
                self.counts[f"{kind}_skipped_late"] += 1
                return
            if self._database_busy is not None and not self._database_busy.done():
                self.counts[f"{kind}_skipped_busy"] += 1
                return
            self._database_busy = self._database.submit(self._database_fault, kind)
            return
        active = self.pool.active_slots()
        # Keep one worker working, so faults do not stall the run altogether.
        if len(active) < (1 if kind == "sigkill" else 2):
            self.counts[f"{kind}_skipped_no_worker"] += 1
            return
        slot = self.rng.choice(active)
        if kind == "sigkill":
            pid = self.pool.kill(slot)
        elif kind == "sigterm":
            pid = self.pool.term(slot)
        else:
            pid = self.pool.stop(slot)
            if pid is not None:
                seconds = self.rng.uniform(*self.stop_seconds)
                stopped = pid
                self._later(seconds, lambda: self.pool.cont(slot, stopped))
        if pid is not None:
            self.counts[kind] += 1
            self.log(f"{kind} worker {slot} (pid {pid})")

    def _database_fault(self, kind: str) -> None:
        try:
            if kind == "terminate":
                self._terminate()
            else:
                mode = kind.removeprefix("restart_")
                self.log(f"restart PostgreSQL -m {mode} ...")
                restart = self.server.restart(mode)
                self.restarts.append(restart)
                self.counts[kind] += 1
                down = (
                    "never up again"
                    if restart.up_at is None
                    else (f"up after {restart.up_at - restart.started_at:.1f}s")
                )
                self.log(f"restart PostgreSQL -m {mode}: {down}")
        except Exception as exc:
            self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            self.log(f"{kind} failed: {exc}")

    def _terminate(self) -> None:
        alive = self.pool.alive()
        if self.rng.random() < 0.5 and alive:
            pid = self.rng.choice(alive)
            target = str(pid)
            where = f"application_name IN ('chaos-worker-{pid}', 'chaos-journal-{pid}')"
        else:
            target = "all"
            where = (
                "application_name LIKE 'chaos-worker-%' OR application_name LIKE 'chaos-journal-%'"
            )
        try:
            with connect(self.server.url, "harness") as admin:
                row = admin.execute(_TERMINATE_SQL.format(where=where)).fetchone()
        except psycopg.Error as exc:
            self.counts["terminate_failed"] += 1
            self.log(f"terminate failed: {exc}")
            return
        terminated = int(row[0]) if row else 0
        self.terminations.append(Termination(at=time.time(), target=target, terminated=terminated))
        self.counts["terminate"] += 1
        self.counts["backends_terminated"] += terminated
        self.log(f"pg_terminate_backend of {target} worker connections: {terminated}")
