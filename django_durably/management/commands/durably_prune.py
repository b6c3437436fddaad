"""``manage.py durably_prune --older-than 30d``: delete old finished runs in batches."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_durably.models import TERMINAL_STATUSES
from django_durably.operations import DEFAULT_PURGE_LIMIT, purge_runs, purgeable_runs

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def duration(value: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` or a combination such as ``1d12h``."""
    text = value.strip().lower()
    parts = DURATION.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration: use a number with a unit s, m, h, d or w, e.g. 30d"
        )
    seconds = sum(float(number) * UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return timedelta(seconds=seconds)


def batch_size(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


class Command(BaseCommand):
    help = "Delete finished runs (with their steps and logs) that finished longer ago than --older-than."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=duration,
            required=True,
            help="Age of finished runs to delete, e.g. 30d, 12h, 1w.",
        )
        parser.add_argument(
            "--status",
            dest="statuses",
            action="append",
            choices=[str(s) for s in TERMINAL_STATUSES],
            default=None,
            help="Only runs with this status; repeatable (default: completed, failed and cancelled).",
        )
        parser.add_argument(
            "--batch-size",
            type=batch_size,
            default=DEFAULT_PURGE_LIMIT,
            help="Runs deleted per transaction (default: %(default)r).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be deleted."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        statuses = options["statuses"] or [str(s) for s in TERMINAL_STATUSES]
        older_than: timedelta = options["older_than"]
        if options["dry_run"]:
            count = purgeable_runs(older_than, statuses).count()
            self.stdout.write(f"{count} run(s) would be deleted.")
            return
        total = 0
        while deleted := purge_runs(older_than, options["batch_size"], statuses=statuses):
            total += deleted
            if options["verbosity"] >= 2:
                self.stdout.write(f"deleted {deleted} run(s)...")
        self.stdout.write(f"Deleted {total} run(s).")
