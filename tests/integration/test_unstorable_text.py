"""Text no database can store (NUL, which PostgreSQL refuses, and lone surrogates) never makes a run
lost: a step name with it is a typed error, and recorded text (log lines, progress, exceptions) is
stored with the character replaced."""

from __future__ import annotations

import pytest

from django_durably import process_next
from django_durably.models import Run, RunLog
from tests import jobs

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def test_log_lines_and_progress__stored_with_the_characters_replaced():
    run = jobs.unstorable_text.trigger({})

    outcome = process_next()

    assert outcome is not None and outcome.status == "completed"
    stored = Run.objects.get(pk=run.pk)
    assert stored.output == "done"
    assert stored.progress["message"] == "half\ufffdway"
    log = RunLog.objects.get(run_id=run.pk)
    assert log.message == "nul\ufffdhere ?"
    assert log.data == {"detail": "a\ufffdb", "k\ufffd": ["\ufffd"]}


def test_an_exception_message__stored_with_the_character_replaced():
    run = jobs.unstorable_text.trigger({"raise": True})

    outcome = process_next()

    assert outcome is not None and outcome.status == "failed"
    error = Run.objects.get(pk=run.pk).error
    assert error["type"] == "builtins.ValueError"
    assert error["message"] == "broken\ufffdvalue"
    assert "\x00" not in error["traceback"]


def test_a_step_name__is_a_typed_error_that_fails_the_run():
    run = jobs.unstorable_text.trigger({"step_name": True})

    outcome = process_next()

    assert outcome is not None and outcome.status == "failed"
    error = Run.objects.get(pk=run.pk).error
    assert error["type"] == "django_durably.exceptions.InvalidStepName"
    assert "NUL" in error["message"]
    assert jobs.CALLS["never"] == 0
