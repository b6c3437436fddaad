"""One chaos run, phase by phase: set up, faults with traffic, settle, stop, check.

Needs Django set up with ``chaos.settings`` (``python -m chaos`` does it).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from django.core.management import call_command
from django.db import connections

from chaos import journal
from chaos.checker import check
from chaos.cluster import Server
from chaos.faults import Injector
from chaos.records import Evidence
from chaos.report import summary
from chaos.settings import DURABLY_MAX_RECLAIMS as MAX_RECLAIMS
from chaos.traffic import Feeder, Operator, count_unfinished, retry_db
from chaos.workers import REPO_ROOT, WorkerPool

PROGRESS_EVERY = 30.0


class Log(Protocol):
    def log(self, message: str) -> None: ...


class ChaosRun:
    def __init__(self, args: argparse.Namespace, server: Server, clock: Log, log_dir: Path):
        self.args = args
        self.server = server
        self.clock = clock
        self.log_dir = log_dir
        self.rng = random.Random(args.seed)
        self.pool: WorkerPool | None = None

    def _worker_env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "chaos.settings",
            "DURABLY_CHAOS_URL": self.server.url,
            "DURABLY_CHAOS_ROLE": "worker",
            "DURABLY_CHAOS_LEASE_SECONDS": str(self.args.lease_seconds),
            "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }

    def execute(self, config: dict[str, Any]) -> dict[str, Any]:
        args, log = self.args, self.clock.log
        call_command("migrate", verbosity=0)
        journal.create_table(self.server.url)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        options = [
            *("--concurrency", str(args.concurrency)),
            *("--lease-seconds", str(args.lease_seconds)),
            *("--grace-period", str(args.grace_period)),
            *("--poll-interval", "1"),
            *("-v", "1"),
        ]
        pool = self.pool = WorkerPool(
            args.workers, options, self._worker_env(), self.log_dir, args.grace_period
        )
        pool.start_all()
        pool.wait_ready(60)
        log(f"{args.workers} workers started; faults for {args.minutes:g} min")

        # Each thread draws from its own generator, seeded from the run's seed.
        feeder = Feeder(
            random.Random(self.rng.random()),
            backlog=args.backlog,
            max_runs=args.runs,
            keyed_share=args.keyed_share,
            runs_per_key=args.runs_per_key,
            idempotent_share=args.idempotent_share,
            idempotent_triggers=args.idempotent_triggers,
            timing={
                "step": list(args.step_seconds),
                "long": list(args.long_step_seconds),
                "long_share": args.long_steps,
                "pause": list(args.pause_seconds),
            },
        )
        operator = Operator(
            random.Random(self.rng.random()),
            cancels_per_minute=args.rates["cancel"],
            resume_share=args.resume_share,
        )
        fault_seconds = args.minutes * 60
        injector = Injector(
            random.Random(self.rng.random()),
            pool,
            self.server,
            rates={k: v for k, v in args.rates.items() if k != "cancel"},
            stop_seconds=args.stop_seconds,
            # A restart takes a few seconds, then its recovery window must end before the backlog.
            restarts_until=time.monotonic() + fault_seconds - args.recovery_deadline - 15,
            log=log,
        )
        feeder.start()
        operator.start()
        injector.start()
        end = time.monotonic() + fault_seconds
        next_progress = time.monotonic() + PROGRESS_EVERY
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_EVERY
                self._progress(feeder, injector, operator)
            if not (feeder.is_alive() and operator.is_alive() and injector.is_alive()):
                log("a harness thread died; ending the fault phase")
                break

        log("faults stop")
        injector.stop()
        operator.stop()
        feeder.stop()
        pool.cont_all()
        pool.wait_drained(args.grace_period + 40)
        pool.start_all()
        self._settle()
        log("stopping workers")
        pool.shutdown()
        evidence = self._evidence(feeder, injector, operator, pool)
        log("checking")
        result = check(evidence)
        faults: dict[str, int] = defaultdict(int)
        for counts in (injector.counts, operator.counts):
            for kind, count in counts.items():
                faults[kind] += count
        document = summary(config, dict(faults), result)
        document["config"]["runs_triggered"] = feeder.triggered
        document["harness_errors"] = feeder.errors + operator.errors + injector.errors
        document["worker_processes"] = [asdict(life) for life in pool.lives]
        document["terminations"] = [asdict(t) for t in injector.terminations]
        return document

    def _progress(self, feeder: Feeder, injector: Injector, operator: Operator) -> None:
        try:
            unfinished = retry_db(count_unfinished, deadline=5)
        except Exception as exc:  # noqa: BLE001 - progress is best effort
            unfinished = {"unknown": str(exc)[:60]}  # type: ignore[dict-item]
        faults = dict(injector.counts) | {
            k: v for k, v in operator.counts.items() if k in ("cancel", "resume")
        }
        self.clock.log(
            f"progress: {feeder.triggered} triggered, unfinished {unfinished}, faults {faults}"
        )
        sys.stdout.flush()

    def _settle(self) -> None:
        """Wait (with a deadline) until every run is finished, keeping the workers running."""
        assert self.pool is not None
        deadline = time.monotonic() + self.args.settle_seconds
        next_progress = time.monotonic()
        while time.monotonic() < deadline:
            for event in self.pool.reap():
                self.clock.log(event)
            unfinished = retry_db(count_unfinished)
            if not unfinished:
                self.clock.log("every run finished")
                return
            if time.monotonic() >= next_progress:
                next_progress += 15
                self.clock.log(f"settling: unfinished {unfinished}")
            time.sleep(0.5)
        self.clock.log(f"settle deadline of {self.args.settle_seconds:g}s passed")

    def _evidence(
        self, feeder: Feeder, injector: Injector, operator: Operator, pool: WorkerPool
    ) -> Evidence:
        with journal.connect(self.server.url, "harness") as connection:
            runs = journal.load_runs(connection)
            steps = journal.load_steps(connection)
            events = journal.load_journal(connection)
            attempts = journal.load_attempts(connection)
        return Evidence(
            runs=runs,
            steps=steps,
            journal=events,
            cancels=operator.cancels,
            resumes=operator.resumes,
            idempotent=feeder.idempotent,
            restarts=injector.restarts,
            terminations=injector.terminations,
            workers=pool.lives,
            lease_seconds=self.args.lease_seconds,
            grace_period=self.args.grace_period,
            recovery_deadline=self.args.recovery_deadline,
            backlog_until=feeder.backlog_until,
            attempts=attempts,
            max_reclaims=MAX_RECLAIMS,
        )

    def cleanup(self) -> None:
        if self.pool is not None:
            self.pool.kill_all()
        connections.close_all()
