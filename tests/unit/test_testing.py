"""django_durably.testing: the in-memory step store users test their jobs with."""

from __future__ import annotations

from datetime import datetime

import pytest

from django_durably.exceptions import JobCancelled, LeaseLost
from django_durably.testing import InMemoryStepStore, StoredStep


def fetch_then_save(step, input):
    rows = step.run("fetch", lambda: [1, 2])
    step.progress(1, total=2)
    step.run("save", lambda: len(rows))
    return "done"


def test_in_memory_store__records_calls_starts_steps_and_checks():
    store = InMemoryStepStore(completed={"fetch": [1, 2]})

    assert fetch_then_save(store.context(), None) == "done"

    assert store.calls == ["save"]  # fetch replayed
    assert store.started == [(1, "save")]
    assert store.steps == [StoredStep(index=1, name="save", status="completed", output=2)]
    assert store.checks == 2  # before save, and in progress()


@pytest.mark.parametrize(
    ("stop", "interrupt"), [("cancel", JobCancelled), ("lose_lease", LeaseLost)]
)
def test_in_memory_store__a_stop_raises_at_the_next_boundary(stop, interrupt):
    store = InMemoryStepStore()
    getattr(store, stop)()

    with pytest.raises(interrupt):
        fetch_then_save(store.context(), None)

    assert (store.calls, store.steps) == ([], [])


def test_in_memory_store__cancel_on_a_checkpoint_lets_the_function_finish_and_refuses_it():
    store = InMemoryStepStore()
    store.cancel(on="save_completed")

    with pytest.raises(JobCancelled):
        fetch_then_save(store.context(), None)

    assert store.calls == ["fetch"]
    assert store.steps == [StoredStep(index=0, name="fetch", status="cancelled")]
    assert store.cancelled is True


def test_in_memory_store__lose_lease_on_progress_keeps_the_steps_before_it():
    store = InMemoryStepStore()
    store.lose_lease(on="save_progress")

    with pytest.raises(LeaseLost):
        fetch_then_save(store.context(), None)

    assert store.steps == [StoredStep(index=0, name="fetch", status="completed", output=[1, 2])]
    assert (store.progress, store.lease_lost) == ([], True)


def test_in_memory_store__stopping_on_something_not_a_write_raises():
    with pytest.raises(ValueError, match="save_completed, save_failed, save_progress, save_log"):
        InMemoryStepStore().cancel(on="check")  # type: ignore[arg-type]


def test_in_memory_store__refuses_a_naive_start_time():
    with pytest.raises(ValueError, match="naive"):
        naive = datetime(2026, 1, 1)  # noqa: DTZ001
        InMemoryStepStore().save_completed(index=0, name="s", output=1, started_at=naive)
