"""``manage.py durably_worker``: argument parsing, logging and signals around :class:`Worker`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from django_durably.conf import durably_settings
from django_durably.database import db_alias, ensure_migrated
from django_durably.exceptions import DatabaseNotMigrated
from django_durably.validation import MAX_QUEUE_LENGTH, is_short_text
from django_durably.worker import DEFAULT_GRACE_PERIOD, Worker, WorkerStats

VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


def non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or more, got {value}")
    return number


def queue_name(value: str) -> str:
    if not is_short_text(value, MAX_QUEUE_LENGTH):
        raise argparse.ArgumentTypeError(f"a queue name is 1-{MAX_QUEUE_LENGTH} characters")
    return value


def summary(stats: WorkerStats) -> str:
    """``3 claimed, 2 completed, 1 released``: runs claimed, then the count of each outcome."""
    counts = [f"{n} {status}" for status, n in sorted(stats.outcomes.items())]
    return ", ".join([f"{stats.claimed} claimed", *counts])


class Command(BaseCommand):
    help = (
        "Claim and execute durable job runs. First SIGTERM/SIGINT: stop claiming and let running "
        "jobs finish within the grace period. Second: hand running runs back and exit at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queue",
            dest="queues",
            action="append",
            type=queue_name,
            default=None,
            help="Only claim runs of this queue; repeat for several (default: all queues).",
        )
        parser.add_argument(
            "--concurrency",
            type=positive_int,
            default=1,
            help="Runs executed at once, each on its own thread and connection (default: %(default)r).",
        )
        parser.add_argument(
            "--lease-seconds",
            type=positive_float,
            default=None,
            help=f"Lease length (default: DURABLY_LEASE_SECONDS, now {durably_settings.LEASE_SECONDS:g}).",
        )
        parser.add_argument(
            "--poll-interval",
            type=positive_float,
            default=None,
            help=(
                "Seconds between looks for ready runs when idle (default: DURABLY_POLL_INTERVAL, now "
                f"{durably_settings.POLL_INTERVAL:g}). On PostgreSQL, notifications wake idle workers sooner."
            ),
        )
        parser.add_argument(
            "--grace-period",
            type=non_negative_float,
            default=DEFAULT_GRACE_PERIOD,
            help="After the first stop signal, seconds to let running jobs finish (default: %(default)r).",
        )
        parser.add_argument(
            "--until-idle",
            action="store_true",
            help="Exit once no run is ready and none is running.",
        )
        parser.add_argument(
            "--max-runs",
            type=positive_int,
            default=None,
            help="Exit after claiming this many runs (and finishing them).",
        )
        parser.add_argument(
            "--worker-id",
            default=None,
            help="Name recorded as the lease owner (default: host:pid:random).",
        )
        parser.add_argument(
            "--no-listen",
            dest="listen",
            action="store_false",
            help="On PostgreSQL, poll only instead of waiting on notifications.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._configure_logging(options["verbosity"])
        self._check_migrated(db_alias())
        worker = Worker(
            queues=options["queues"],
            concurrency=options["concurrency"],
            lease_seconds=options["lease_seconds"],
            poll_interval=options["poll_interval"],
            until_idle=options["until_idle"],
            max_runs=options["max_runs"],
            worker_id=options["worker_id"],
            grace_period=options["grace_period"],
            listen=options["listen"],
        )
        self._install_signal_handlers(worker)
        try:
            stats = worker.run()
        except DatabaseNotMigrated as exc:  # the tables went away while it ran
            raise CommandError(str(exc)) from exc
        if options["verbosity"] >= 1:
            self.stdout.write(f"Worker {worker.worker_id} exiting: {summary(stats)}")
        sys.stdout.flush()
        if stats.restart_requested:
            self._restart()

    def _restart(self) -> None:
        """Replace this process with a fresh one running the same command: the only way to get rid
        of threads stuck in timed-out user code (see ``Worker``). Same pid, so a supervisor sees a
        worker that kept running."""
        argv = (
            [sys.executable, *sys.orig_argv[1:]] if sys.orig_argv else [sys.executable, *sys.argv]
        )
        logging.getLogger("django_durably.worker").warning(
            "Restarting: %s", " ".join(argv), extra={"action": "restart"}
        )
        sys.stderr.flush()
        os.execv(sys.executable, argv)  # noqa: S606 - this very command again

    def _check_migrated(self, alias: str) -> None:
        """Exit at once, with one line saying to run ``migrate``, when durably's migrations are
        not applied: a worker would otherwise retry its claims forever."""
        try:
            ensure_migrated(alias)
        except DatabaseNotMigrated as exc:
            raise CommandError(str(exc)) from exc
        except DatabaseError as exc:
            # The database is unreachable (maybe still starting): the worker's claims retry until
            # it answers, as they do during an outage.
            logging.getLogger("django_durably.worker").warning(
                "Could not check the migrations of database %r (%s); starting anyway.",
                alias,
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            )

    def _configure_logging(self, verbosity: int) -> None:
        level = VERBOSITY_LEVELS.get(verbosity, logging.DEBUG)
        logger = logging.getLogger("django_durably")
        logger.setLevel(level)
        if not logger.handlers and not logging.getLogger().handlers:
            # Only when the project configured no handler for us: never print lines twice.
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
            )
            logger.addHandler(handler)
            logger.propagate = False

    def _install_signal_handlers(self, worker: Worker) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if worker.stopping:
                logging.getLogger("django_durably.worker").warning(
                    "%s again: handing running runs back and exiting now.", name
                )
                worker.stop(hard=True)
            else:
                logging.getLogger("django_durably.worker").warning(
                    "%s: no new claims; letting running jobs finish (up to %.0fs). "
                    "Send it again to exit at once.",
                    name,
                    worker.grace_period,
                )
                worker.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
