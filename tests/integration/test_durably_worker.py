"""``manage.py durably_worker`` in-process: its summary line and what ``-v`` logs.

Starting, signals and exit codes of real worker processes are in tests/acceptance.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import call_command

from django_durably.models import Run
from tests import jobs

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """The command installs signal handlers and sets the package logger's level: put them back."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    package = logging.getLogger("django_durably")
    level, propagate, own = package.level, package.propagate, list(package.handlers)
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    package.setLevel(level)
    package.propagate = propagate
    package.handlers[:] = own


def work(*options: str, verbosity: int = 1) -> str:
    out = StringIO()
    call_command(
        "durably_worker",
        "--until-idle",
        "--poll-interval",
        "0.05",
        "--worker-id",
        "w",
        *options,
        verbosity=verbosity,
        stdout=out,
    )
    return out.getvalue()


def test_durably_worker__summary_with_nothing_to_do_ends_cleanly():
    assert work() == "Worker w exiting: 0 claimed\n"


def test_durably_worker__summary_counts_each_outcome():
    jobs.FLAGS["fail"] = "b"
    jobs.noop.trigger_many([1, 2])
    jobs.three_steps.trigger({})

    assert work() == "Worker w exiting: 3 claimed, 2 completed, 1 failed\n"


def test_durably_worker__verbosity_0_prints_no_summary():
    jobs.noop.trigger(1)

    assert work(verbosity=0) == ""
    assert Run.objects.get().status == "completed"


def test_durably_worker__verbosity_2_logs_debug_lines(caplog):
    run = jobs.noop.trigger(1)

    work(verbosity=2)

    debug = [
        record
        for record in caplog.records
        if record.name.startswith("django_durably") and record.levelno == logging.DEBUG
    ]
    claimed = [record for record in debug if getattr(record, "action", "") == "claimed"]
    assert [getattr(record, "run_id", None) for record in claimed] == [str(run.pk)]
    assert "recorded" in {getattr(record, "action", "") for record in debug}


def test_durably_worker__verbosity_1_logs_no_debug_lines(caplog):
    jobs.noop.trigger(1)

    work(verbosity=1)

    assert not [
        record
        for record in caplog.records
        if record.name.startswith("django_durably") and record.levelno == logging.DEBUG
    ]
