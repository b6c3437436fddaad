"""Deleting old finished runs: ``manage.py durably_prune``, retention applied by workers
(``DURABLY_RETENTION``), and the checks of the retention settings."""

from __future__ import annotations

import argparse
import math
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command, execute_from_command_line
from django.utils import timezone

from django_durably import checks, executor, process_until_idle
from django_durably.maintenance import Retention
from django_durably.management.commands.durably_prune import batch_size, duration
from django_durably.models import AuditRecord, Run, RunLog, Step
from django_durably.worker import Worker
from tests import jobs
from tests.concurrency import holds, start, wait_until
from tests.factories import make_log, make_step, move_to

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

DAY = timedelta(days=1)


def finished(status: str, age: timedelta, *, with_rows: bool = False) -> Run:
    """A run that finished ``age`` ago (``with_rows``: with a step and a log line). It started
    recently, so only a purge by the time it finished deletes it."""
    run = move_to(jobs.noop.trigger(), status, completed_at=timezone.now() - age)
    if with_rows:
        make_step(run, name="s")
        make_log(run, message="line")
    return run


def unfinished() -> list[Run]:
    """A pending run (due in an hour) and a leased run, both created long ago."""
    pending = jobs.noop.trigger(run_after=timezone.now() + timedelta(hours=1))
    leased = move_to(jobs.noop.trigger(), "leased")
    Run.objects.filter(pk__in=[pending.pk, leased.pk]).update(
        created_at=timezone.now() - 1000 * DAY
    )
    return [pending, leased]


def remaining() -> set[Any]:
    return set(Run.objects.values_list("pk", flat=True))


def prune(*args: str) -> str:
    out = StringIO()
    call_command("durably_prune", *args, stdout=out)
    return out.getvalue()


# -- the --older-than and --batch-size parsers ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1.5d", timedelta(days=1, hours=12)),
        (" 30D ", timedelta(days=30)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
    ],
)
def test_duration__parses(text, expected):
    assert duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "'abc' is not a duration: use a number with a unit s, m, h, d or w, e.g. 30d"),
        ("30", "'30' is not a duration: use a number with a unit s, m, h, d or w, e.g. 30d"),
        ("", "'' is not a duration: use a number with a unit s, m, h, d or w, e.g. 30d"),
        ("d", "'d' is not a duration: use a number with a unit s, m, h, d or w, e.g. 30d"),
        ("-1d", "'-1d' is not a duration: use a number with a unit s, m, h, d or w, e.g. 30d"),
        ("30 d", "'30 d' is not a duration: use a number with a unit s, m, h, d or w, e.g. 30d"),
        ("3y", "'3y' is not a duration: use a number with a unit s, m, h, d or w, e.g. 30d"),
        ("0d", "the duration must be positive"),
        ("0s0m", "the duration must be positive"),
    ],
)
def test_duration__rejects(text, message):
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        duration(text)
    assert str(raised.value) == message


def test_batch_size__parses_and_rejects():
    assert batch_size("5") == 5
    with pytest.raises(argparse.ArgumentTypeError, match="'x' is not an integer"):
        batch_size("x")
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1"):
        batch_size("0")


# -- manage.py durably_prune ---------------------------------------------------------------------


def test_prune__deletes_old_finished_runs_with_their_steps_and_logs():
    old = [finished(status, 40 * DAY, with_rows=True) for status in ("completed", "failed")]
    old.append(finished("cancelled", 31 * DAY))
    recent = finished("completed", 29 * DAY, with_rows=True)
    kept = unfinished()

    assert prune("--older-than", "30d") == "Deleted 3 run(s).\n"

    assert remaining() == {recent.pk, *(run.pk for run in kept)}
    assert not Step.objects.filter(run_id__in=[run.pk for run in old]).exists()
    assert not RunLog.objects.filter(run_id__in=[run.pk for run in old]).exists()
    assert Step.objects.filter(run_id=recent.pk).count() == 1
    assert not AuditRecord.objects.exists()
    assert prune("--older-than", "30d") == "Deleted 0 run(s).\n"


def test_prune__dry_run_only_counts():
    for status in ("completed", "failed", "cancelled"):
        finished(status, 2 * DAY)
    finished("completed", timedelta(hours=1))
    before = remaining()

    assert prune("--older-than", "1d", "--dry-run") == "3 run(s) would be deleted.\n"
    assert prune("--older-than", "1d", "--dry-run", "--status", "failed") == (
        "1 run(s) would be deleted.\n"
    )
    assert remaining() == before


def test_prune__only_the_given_statuses():
    runs = {status: finished(status, 40 * DAY) for status in ("completed", "failed", "cancelled")}

    out = prune("--older-than", "30d", "--status", "failed", "--status", "cancelled")

    assert out == "Deleted 2 run(s).\n"
    assert remaining() == {runs["completed"].pk}


def test_prune__in_batches():
    for i in range(5):
        finished("completed", (40 + i) * DAY)

    out = prune("--older-than", "30d", "--batch-size", "2", "--verbosity", "2")

    assert out.splitlines() == [
        "deleted 2 run(s)...",
        "deleted 2 run(s)...",
        "deleted 1 run(s)...",
        "Deleted 5 run(s).",
    ]
    assert remaining() == set()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "0d"], "Error: argument --older-than: the duration must be positive"),
        (
            ["--older-than", "abc"],
            "Error: argument --older-than: 'abc' is not a duration: use a number with a unit "
            "s, m, h, d or w, e.g. 30d",
        ),
        ([], "Error: the following arguments are required: --older-than"),
        (
            ["--older-than", "1d", "--batch-size", "0"],
            "Error: argument --batch-size: must be at least 1",
        ),
        (
            ["--older-than", "1d", "--batch-size", "many"],
            "Error: argument --batch-size: 'many' is not an integer",
        ),
        (
            ["--older-than", "1d", "--status", "pending"],
            "Error: argument --status: invalid choice: 'pending' (choose from 'completed', "
            "'failed', 'cancelled')",
        ),
    ],
)
def test_prune__bad_arguments_raise_command_error(args, message):
    finished("completed", 40 * DAY)
    with pytest.raises(CommandError) as raised:
        prune(*args)
    assert str(raised.value) == message
    assert Run.objects.count() == 1


def test_prune__bad_arguments_on_the_command_line_exit_with_status_2(capsys):
    finished("completed", 40 * DAY)
    with pytest.raises(SystemExit) as raised:
        execute_from_command_line(["manage.py", "durably_prune", "--older-than", "0d"])
    assert raised.value.code == 2
    assert "argument --older-than: the duration must be positive" in capsys.readouterr().err
    assert Run.objects.count() == 1


# -- retention applied by workers ----------------------------------------------------------------


def test_retention__an_idle_worker_purges_old_finished_runs(settings):
    settings.DURABLY_RETENTION = timedelta(days=30)
    old = [finished(status, 31 * DAY, with_rows=True) for status in ("completed", "failed")]
    recent = finished("cancelled", 29 * DAY)
    kept = unfinished()
    ready = jobs.noop.trigger("processed, then kept")

    stats = Worker(until_idle=True, poll_interval=0.05).run()

    assert stats.outcomes == {"completed": 1}
    assert remaining() == {recent.pk, ready.pk, *(run.pk for run in kept)}
    assert not Step.objects.filter(run_id__in=[run.pk for run in old]).exists()
    assert not RunLog.objects.filter(run_id__in=[run.pk for run in old]).exists()
    assert not AuditRecord.objects.exists()


def test_retention__a_number_of_seconds(settings):
    settings.DURABLY_RETENTION = 3600
    old = finished("completed", timedelta(hours=2))
    recent = finished("completed", timedelta(minutes=30))

    Worker(until_idle=True, poll_interval=0.05).run()

    assert remaining() == {recent.pk}
    assert old.pk != recent.pk


def test_retention__off_by_default(settings):
    assert not hasattr(settings, "DURABLY_RETENTION")
    old = finished("completed", 10_000 * DAY)

    Worker(until_idle=True, poll_interval=0.05).run()

    assert remaining() == {old.pk}


@pytest.mark.parametrize("interval", [3600, 0.1])
def test_retention__one_purge_per_interval(settings, interval):
    settings.DURABLY_RETENTION = timedelta(days=1)
    settings.DURABLY_RETENTION_INTERVAL = interval
    first = finished("completed", 2 * DAY)
    worker = Worker(poll_interval=0.02, listen=False)
    thread = start(worker.run)
    try:
        wait_until(lambda: not Run.objects.filter(pk=first.pk).exists(), what="the first purge")
        second = finished("failed", 2 * DAY)
        if interval == 3600:
            # It waits for the next interval, an hour away.
            holds(
                lambda: Run.objects.filter(pk=second.pk).exists(),
                seconds=0.5,
                what="the second run to wait for the next interval",
            )
        else:
            wait_until(lambda: not Run.objects.filter(pk=second.pk).exists(), what="the next purge")
    finally:
        worker.stop()
        thread.outcome()


# -- retention applied by process_until_idle -----------------------------------------------------


@pytest.fixture
def fresh_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    """process_until_idle() purges at most once per interval per process: start each test afresh."""
    monkeypatch.setattr(executor, "_retention", Retention())


def test_process_until_idle__purges_old_finished_runs_once_nothing_is_ready(
    settings, fresh_retention
):
    settings.DURABLY_RETENTION = timedelta(days=30)
    old = [finished(status, 31 * DAY) for status in ("completed", "failed", "cancelled")]
    recent = finished("completed", 29 * DAY)
    kept = unfinished()
    ready = jobs.noop.trigger("processed, then kept")

    processed = process_until_idle()

    assert processed == 1
    assert remaining() == {recent.pk, ready.pk, *(run.pk for run in kept)}
    assert not Run.objects.filter(pk__in=[run.pk for run in old]).exists()


def test_process_until_idle__does_not_purge_when_it_stops_at_max_runs(settings, fresh_retention):
    settings.DURABLY_RETENTION = timedelta(days=30)
    old = finished("completed", 31 * DAY)
    jobs.noop.trigger_many([1, 2])

    assert process_until_idle(max_runs=1) == 1

    assert Run.objects.filter(pk=old.pk).exists()


def test_process_until_idle__keeps_finished_runs_without_retention(fresh_retention):
    old = finished("completed", 10_000 * DAY)

    assert process_until_idle() == 0

    assert remaining() == {old.pk}


def test_process_until_idle__purges_at_most_once_per_interval(settings, fresh_retention):
    settings.DURABLY_RETENTION = timedelta(days=1)
    settings.DURABLY_RETENTION_INTERVAL = 3600
    first = finished("completed", 2 * DAY)
    process_until_idle()
    assert not Run.objects.filter(pk=first.pk).exists()
    second = finished("failed", 2 * DAY)

    process_until_idle()
    assert Run.objects.filter(pk=second.pk).exists()  # the next purge is an hour away

    settings.DURABLY_RETENTION_INTERVAL = 0.05  # read at each call, measured from the last purge
    wait_until(
        lambda: process_until_idle() == 0 and not Run.objects.filter(pk=second.pk).exists(),
        what="the purge after the shorter interval",
    )


# -- checks of the retention settings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(0, "0", id="zero"),
        pytest.param(-60, "-60", id="negative"),
        pytest.param(timedelta(0), "datetime.timedelta(0)", id="zero-timedelta"),
        pytest.param(timedelta(days=-1), "datetime.timedelta(days=-1)", id="negative-timedelta"),
        pytest.param("30d", "'30d'", id="string"),
        pytest.param(True, "True", id="bool"),
        pytest.param(math.inf, "inf", id="inf"),
        pytest.param(math.nan, "nan", id="nan"),
        pytest.param([30], "[30]", id="list"),
    ],
)
def test_check_settings__e005_retention(settings, value, shown):
    settings.DURABLY_RETENTION = value
    assert [(m.id, m.msg, m.hint) for m in checks.check_settings()] == [
        (
            "django_durably.E005",
            "DURABLY_RETENTION must be a positive timedelta or number of seconds, or None, "
            f"got {shown}.",
            "For example DURABLY_RETENTION = timedelta(days=30).",
        )
    ]


@pytest.mark.parametrize("value", [None, timedelta(days=30), 86400, 0.5])
def test_check_settings__e005_accepts_good_retention(settings, value):
    settings.DURABLY_RETENTION = value
    assert checks.check_settings() == []


@pytest.mark.parametrize(("value", "shown"), [(0, "0"), (-1, "-1"), ("600", "'600'")])
def test_check_settings__e002_retention_interval(settings, value, shown):
    settings.DURABLY_RETENTION_INTERVAL = value
    assert [(m.id, m.msg, m.hint) for m in checks.check_settings()] == [
        (
            "django_durably.E002",
            f"DURABLY_RETENTION_INTERVAL must be a positive number, got {shown}.",
            "Remove the setting to use the default.",
        )
    ]
