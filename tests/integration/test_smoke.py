import pytest

from django_durably import process_until_idle
from tests import jobs

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def test_three_steps__complete_and_replay():
    run = jobs.three_steps.trigger({"x": 1})
    assert run.disposition == "created"
    assert process_until_idle() == 1
    run.refresh_from_db()
    assert run.status == "completed", run.error
    assert run.output == {"a": 1, "b": "b", "c": [1, "b"]}
    assert run.completed_step_count == 3
    assert jobs.CALLS == {"a": 1, "b": 1, "c": 1}
    assert run.logs.count() == 1
    assert run.progress == {"current": 3, "total": 3, "message": "done"}
