"""StepContext against an in-memory StepStore: replay, normalisation, validation, interrupts."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel

from django_durably.context import (
    MAX_PROGRESS_MESSAGE_LENGTH,
    MAX_STEP_NAME_LENGTH,
    StepContext,
    current_context,
)
from django_durably.exceptions import (
    DuplicateStepName,
    InvalidProgress,
    InvalidStepName,
    JobCancelled,
    LeaseLost,
    NotJSONSerializable,
)
from django_durably.testing import InMemoryStepStore, StoredLog
from django_durably.types import JSON


class Point(BaseModel):
    x: int
    y: int


class Calls:
    """A step function that counts its calls and returns a fixed value."""

    def __init__(self, value: Any = None) -> None:
        self.value = value
        self.count = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self.value


def make_context(store: InMemoryStepStore, *, attempt: int = 1) -> StepContext:
    return store.context(job_name="tests.unit", attempt=attempt)


def saved(store: InMemoryStepStore) -> list[tuple[int, str, JSON]]:
    return [(s.index, s.name, s.output) for s in store.steps if s.status == "completed"]


def failed(store: InMemoryStepStore) -> list[tuple[int, str, dict[str, str] | None]]:
    return [(s.index, s.name, s.error) for s in store.steps if s.status == "failed"]


def cancelled(store: InMemoryStepStore) -> list[tuple[int, str]]:
    return [(s.index, s.name) for s in store.steps if s.status == "cancelled"]


# How the store stops a run with each interrupt.
STOP = {JobCancelled: InMemoryStepStore.cancel, LeaseLost: InMemoryStepStore.lose_lease}


def boom() -> None:
    raise ValueError("kaput")


# -- replay ------------------------------------------------------------------------------------


def test_run__replay_returns_stored_output_without_calling_fn():
    store = InMemoryStepStore(completed={"fetch": {"rows": [1, 2]}, "none": None})
    step = make_context(store, attempt=2)
    fetch, none = Calls("fresh"), Calls("fresh")

    assert step.run("fetch", fetch) == {"rows": [1, 2]}
    assert step.run("none", none) is None  # a stored None is a checkpoint too
    assert fetch.count == 0
    assert none.count == 0
    assert store.started == []
    assert saved(store) == []


def test_run__new_step_runs_once_and_is_saved_with_its_index():
    store = InMemoryStepStore(completed={"a": 1})
    step = make_context(store)
    b = Calls({"b": True})

    assert step.run("a", Calls("unused")) == 1
    assert step.run("b", b, "ignored", key="ignored") == {"b": True}
    assert b.count == 1
    # The replayed step still takes index 0, so the new one is saved as index 1.
    assert store.started == [(1, "b")]
    assert saved(store) == [(1, "b", {"b": True})]


def test_run__passes_arguments_to_fn():
    step = make_context(InMemoryStepStore())

    assert step.run("add", lambda a, b, *, c: a + b + c, 1, 2, c=3) == 6


# -- JSON normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ((1, 2), [1, 2]),
        ({"t": (1, (2, 3))}, {"t": [1, [2, 3]]}),
        (Point(x=1, y=2), {"x": 1, "y": 2}),
    ],
)
def test_run__output_is_normalised_the_same_on_first_run_and_replay(value, expected):
    store = InMemoryStepStore()
    first = make_context(store, attempt=1).run("s", Calls(value))
    replayed = make_context(store, attempt=2).run("s", Calls("not called"))

    assert first == expected
    assert type(first) is type(expected)
    assert replayed == first
    assert saved(store) == [(0, "s", expected)]


def test_run__non_json_output_fails_the_step():
    store = InMemoryStepStore()
    step = make_context(store)

    with pytest.raises(NotJSONSerializable, match="Output of step 'bad'"):
        step.run("bad", Calls({1, 2}))

    assert saved(store) == []
    [(index, name, error)] = failed(store)
    assert (index, name) == (0, "bad")
    assert error["type"] == "django_durably.exceptions.NotJSONSerializable"


# -- failures and interrupts -------------------------------------------------------------------


def test_run__failing_step_saves_failed_and_reraises():
    store = InMemoryStepStore()
    step = make_context(store)

    with pytest.raises(ValueError, match="kaput") as raised:
        step.run("explode", boom)

    assert saved(store) == []
    [(index, name, error)] = failed(store)
    assert (index, name) == (0, "explode")
    assert error["type"] == "builtins.ValueError"
    assert error["message"] == "kaput"
    assert "Traceback" in error["traceback"]
    assert "in boom" in error["traceback"]
    assert step.current_step is None
    # The same exception object reaches the job.
    assert str(raised.value) == "kaput"


def test_run__failed_step_name_cannot_be_reused_in_the_same_execution():
    store = InMemoryStepStore()
    step = make_context(store)
    with pytest.raises(ValueError, match="kaput"):
        step.run("explode", boom)

    with pytest.raises(DuplicateStepName):
        step.run("explode", Calls(1))


@pytest.mark.parametrize("interrupt", [JobCancelled, LeaseLost])
def test_run__interrupt_from_fn_propagates_without_save_failed(interrupt):
    store = InMemoryStepStore()
    step = make_context(store)

    def stop() -> None:
        raise interrupt(store.run_id)

    with pytest.raises(interrupt):
        step.run("s", stop)

    assert failed(store) == []
    assert saved(store) == []
    # A cancel is recorded against the step it interrupted; a lost lease writes nothing more.
    assert cancelled(store) == ([(0, "s")] if interrupt is JobCancelled else [])


@pytest.mark.parametrize("refused", ["save_completed", "save_failed"])
def test_run__checkpoint_refused_by_a_cancel_records_the_step_cancelled(refused):
    store = InMemoryStepStore()
    step = make_context(store)
    store.cancel(on=refused)

    def work() -> str:
        if refused == "save_failed":
            raise ValueError("boom")
        return "done"

    with pytest.raises(JobCancelled):
        step.run("s", work)

    assert cancelled(store) == [(0, "s")]


def test_run__interrupt_is_not_an_exception():
    store = InMemoryStepStore()
    step = make_context(store)
    swallowed = []

    def stop() -> None:
        raise JobCancelled(store.run_id)

    with pytest.raises(JobCancelled):
        try:
            step.run("s", stop)
        except Exception as exc:  # what a careless job does
            swallowed.append(exc)
    assert swallowed == []


# -- names -------------------------------------------------------------------------------------


def test_run__duplicate_step_name_raises_without_calling_fn():
    step = make_context(InMemoryStepStore())
    second = Calls(2)
    step.run("same", Calls(1))

    with pytest.raises(DuplicateStepName) as raised:
        step.run("same", second)

    assert raised.value.step_name == "same"
    assert "f'save-{i}'" in str(raised.value)
    assert second.count == 0


def test_run__duplicate_of_a_replayed_step_name_raises():
    step = make_context(InMemoryStepStore(completed={"done": 1}))
    step.run("done", Calls())

    with pytest.raises(DuplicateStepName):
        step.run("done", Calls())


@pytest.mark.parametrize("name", ["", None, 7, b"bytes", "x" * (MAX_STEP_NAME_LENGTH + 1)])
def test_run__invalid_step_name_raises(name):
    store = InMemoryStepStore()
    step = make_context(store)
    fn = Calls()

    with pytest.raises(InvalidStepName):
        step.run(name, fn)

    assert fn.count == 0
    assert store.started == []


def test_run__longest_step_name_is_accepted():
    store = InMemoryStepStore()
    name = "x" * MAX_STEP_NAME_LENGTH

    make_context(store).run(name, Calls(1))

    assert saved(store) == [(0, name, 1)]


# -- check() -----------------------------------------------------------------------------------


def test_run__check_is_called_before_new_steps_but_not_on_replay():
    store = InMemoryStepStore(completed={"a": "A"})
    step = make_context(store)

    step.run("a", Calls())
    assert store.checks == 0
    step.run("b", Calls())
    step.run("c", Calls())
    assert store.checks == 2


@pytest.mark.parametrize("interrupt", [JobCancelled, LeaseLost])
def test_run__check_interrupts_before_a_new_step_but_replay_still_works(interrupt):
    store = InMemoryStepStore(completed={"a": "A"})
    STOP[interrupt](store)
    step = make_context(store)
    b = Calls("B")

    assert step.run("a", Calls()) == "A"
    with pytest.raises(interrupt):
        step.run("b", b)

    assert b.count == 0
    assert store.started == []
    assert saved(store) == []
    assert failed(store) == []


def test_check__delegates_to_the_store():
    store = InMemoryStepStore()
    step = make_context(store)

    step.check()
    assert store.checks == 1
    store.cancel()
    with pytest.raises(JobCancelled):
        step.check()


# -- progress ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((-1,), {}),
        ((math.nan,), {}),
        ((math.inf,), {}),
        ((True,), {}),
        (("1",), {}),
        ((None,), {}),
        ((1,), {"total": -1}),
        ((1,), {"total": math.nan}),
        ((1,), {"total": False}),
        ((1,), {"message": "m" * (MAX_PROGRESS_MESSAGE_LENGTH + 1)}),
        ((1,), {"message": 42}),
    ],
)
def test_progress__invalid_values_raise_and_store_nothing(args, kwargs):
    store = InMemoryStepStore()
    step = make_context(store)

    with pytest.raises(InvalidProgress):
        step.progress(*args, **kwargs)

    assert store.progress == []


def test_progress__valid_values_are_stored():
    store = InMemoryStepStore()
    step = make_context(store)
    longest = "m" * MAX_PROGRESS_MESSAGE_LENGTH

    step.progress(0)
    step.progress(1.5, total=3, message=longest)

    assert store.progress == [
        {"current": 0, "total": None, "message": None},
        {"current": 1.5, "total": 3, "message": longest},
    ]


def test_progress__is_fenced_by_check():
    store = InMemoryStepStore()
    step = make_context(store)
    store.lose_lease()

    with pytest.raises(LeaseLost):
        step.progress(1, total=2)

    assert store.checks == 1  # refused by the check, not only by the store's own fence
    assert store.progress == []


# -- logs --------------------------------------------------------------------------------------


def test_log__levels_messages_and_json_data_are_stored():
    store = InMemoryStepStore()
    step = make_context(store)

    step.log.info("hello", count=3, items=(1, 2))
    step.log.warning("careful")
    step.log.error("bad", detail={"k": None})

    assert store.logs == [
        StoredLog("info", "hello", {"count": 3, "items": [1, 2]}, step_name=None),
        StoredLog("warning", "careful", {}, step_name=None),
        StoredLog("error", "bad", {"detail": {"k": None}}, step_name=None),
    ]


def test_log__non_json_data_is_stored_as_repr():
    store = InMemoryStepStore()
    step = make_context(store)
    when = datetime(2026, 1, 2, 3, 4, 5)

    step.log.info("lenient", when=when, ok=1)

    [line] = store.logs
    assert line.data == {"when": repr(when), "ok": 1}


def test_log__inside_a_step_records_the_step_name():
    store = InMemoryStepStore()
    step = make_context(store)

    step.run("inner", lambda: step.log.info("inside"))
    step.log.info("outside")

    assert [(line.message, line.step_name) for line in store.logs] == [
        ("inside", "inner"),
        ("outside", None),
    ]


# -- current_context() -------------------------------------------------------------------------


def test_current_context__inside_and_outside_activate():
    step = make_context(InMemoryStepStore())
    with pytest.raises(RuntimeError, match="No durable job is running"):
        current_context()

    with step.activate() as active:
        assert active is step
        assert current_context() is step
        other = make_context(InMemoryStepStore())
        with other.activate():
            assert current_context() is other
        assert current_context() is step

    with pytest.raises(RuntimeError):
        current_context()


def test_current_context__reset_when_the_job_raises():
    step = make_context(InMemoryStepStore())

    with pytest.raises(ValueError, match="kaput"), step.activate():
        boom()

    with pytest.raises(RuntimeError):
        current_context()


def test_context__exposes_run_id_job_name_and_attempt():
    store = InMemoryStepStore()
    step = make_context(store, attempt=3)

    assert step.run_id == store.run_id
    assert step.job_name == "tests.unit"
    assert step.attempt == 3
