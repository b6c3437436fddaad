"""StepContext against an in-memory StepStore: replay, normalisation, validation, interrupts."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
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
    DurablyInterrupt,
    InvalidProgress,
    InvalidStepName,
    JobCancelled,
    LeaseLost,
    NotJSONSerializable,
)
from django_durably.types import JSON, LogLevel


@dataclass
class MemoryStore:
    """A StepStore that keeps everything in lists, and can be told to refuse (interrupt)."""

    run_id: uuid.UUID = field(default_factory=uuid.uuid4)
    completed: dict[str, JSON] = field(default_factory=dict)
    interrupt: DurablyInterrupt | None = None
    checks: int = 0
    started: list[tuple[int, str]] = field(default_factory=list)
    saved: list[tuple[int, str, JSON]] = field(default_factory=list)
    failed: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    cancelled: list[tuple[int, str]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)

    def load_completed(self) -> dict[str, JSON]:
        return dict(self.completed)

    def check(self) -> None:
        self.checks += 1
        if self.interrupt is not None:
            raise self.interrupt

    def step_started(self, *, index: int, name: str) -> None:
        self.started.append((index, name))

    def save_completed(self, *, index: int, name: str, output: JSON, started_at: datetime) -> None:
        assert started_at.tzinfo is not None
        self.saved.append((index, name, output))
        self.completed[name] = output

    def save_failed(
        self, *, index: int, name: str, error: dict[str, str], started_at: datetime
    ) -> None:
        self.failed.append((index, name, error))

    def save_cancelled(self, *, index: int, name: str, started_at: datetime) -> None:
        assert started_at.tzinfo is not None
        self.cancelled.append((index, name))

    def save_progress(self, progress: dict[str, Any]) -> None:
        self.progress.append(progress)

    def save_log(self, *, level: LogLevel, message: str, data: JSON, step_name: str | None) -> None:
        self.logs.append({"level": level, "message": message, "data": data, "step": step_name})


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


def make_context(store: MemoryStore, *, attempt: int = 1) -> StepContext:
    return StepContext(run_id=store.run_id, job_name="tests.unit", attempt=attempt, store=store)


def boom() -> None:
    raise ValueError("kaput")


# -- replay ------------------------------------------------------------------------------------


def test_run__replay_returns_stored_output_without_calling_fn():
    store = MemoryStore(completed={"fetch": {"rows": [1, 2]}, "none": None})
    step = make_context(store, attempt=2)
    fetch, none = Calls("fresh"), Calls("fresh")

    assert step.run("fetch", fetch) == {"rows": [1, 2]}
    assert step.run("none", none) is None  # a stored None is a checkpoint too
    assert fetch.count == 0
    assert none.count == 0
    assert store.started == []
    assert store.saved == []


def test_run__new_step_runs_once_and_is_saved_with_its_index():
    store = MemoryStore(completed={"a": 1})
    step = make_context(store)
    b = Calls({"b": True})

    assert step.run("a", Calls("unused")) == 1
    assert step.run("b", b, "ignored", key="ignored") == {"b": True}
    assert b.count == 1
    # The replayed step still takes index 0, so the new one is saved as index 1.
    assert store.started == [(1, "b")]
    assert store.saved == [(1, "b", {"b": True})]


def test_run__passes_arguments_to_fn():
    step = make_context(MemoryStore())

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
    store = MemoryStore()
    first = make_context(store, attempt=1).run("s", Calls(value))
    replayed = make_context(store, attempt=2).run("s", Calls("not called"))

    assert first == expected
    assert type(first) is type(expected)
    assert replayed == first
    assert store.saved == [(0, "s", expected)]


def test_run__non_json_output_fails_the_step():
    store = MemoryStore()
    step = make_context(store)

    with pytest.raises(NotJSONSerializable, match="Output of step 'bad'"):
        step.run("bad", Calls({1, 2}))

    assert store.saved == []
    [(index, name, error)] = store.failed
    assert (index, name) == (0, "bad")
    assert error["type"] == "django_durably.exceptions.NotJSONSerializable"


# -- failures and interrupts -------------------------------------------------------------------


def test_run__failing_step_saves_failed_and_reraises():
    store = MemoryStore()
    step = make_context(store)

    with pytest.raises(ValueError, match="kaput") as raised:
        step.run("explode", boom)

    assert store.saved == []
    [(index, name, error)] = store.failed
    assert (index, name) == (0, "explode")
    assert error["type"] == "builtins.ValueError"
    assert error["message"] == "kaput"
    assert "Traceback" in error["traceback"]
    assert "in boom" in error["traceback"]
    assert step.current_step is None
    # The same exception object reaches the job.
    assert str(raised.value) == "kaput"


def test_run__failed_step_name_cannot_be_reused_in_the_same_execution():
    store = MemoryStore()
    step = make_context(store)
    with pytest.raises(ValueError, match="kaput"):
        step.run("explode", boom)

    with pytest.raises(DuplicateStepName):
        step.run("explode", Calls(1))


@pytest.mark.parametrize("interrupt", [JobCancelled, LeaseLost])
def test_run__interrupt_from_fn_propagates_without_save_failed(interrupt):
    store = MemoryStore()
    step = make_context(store)

    def stop() -> None:
        raise interrupt(store.run_id)

    with pytest.raises(interrupt):
        step.run("s", stop)

    assert store.failed == []
    assert store.saved == []
    # A cancel is recorded against the step it interrupted; a lost lease writes nothing more.
    assert store.cancelled == ([(0, "s")] if interrupt is JobCancelled else [])


@pytest.mark.parametrize("refused", ["save_completed", "save_failed"])
def test_run__checkpoint_refused_by_a_cancel_records_the_step_cancelled(refused):
    store = MemoryStore()
    step = make_context(store)

    def refuse(**kwargs: Any) -> None:
        raise JobCancelled(store.run_id)

    setattr(store, refused, refuse)

    def work() -> str:
        if refused == "save_failed":
            raise ValueError("boom")
        return "done"

    with pytest.raises(JobCancelled):
        step.run("s", work)

    assert store.cancelled == [(0, "s")]


def test_run__interrupt_is_not_an_exception():
    store = MemoryStore()
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
    step = make_context(MemoryStore())
    second = Calls(2)
    step.run("same", Calls(1))

    with pytest.raises(DuplicateStepName) as raised:
        step.run("same", second)

    assert raised.value.step_name == "same"
    assert "f'save-{i}'" in str(raised.value)
    assert second.count == 0


def test_run__duplicate_of_a_replayed_step_name_raises():
    step = make_context(MemoryStore(completed={"done": 1}))
    step.run("done", Calls())

    with pytest.raises(DuplicateStepName):
        step.run("done", Calls())


@pytest.mark.parametrize("name", ["", None, 7, b"bytes", "x" * (MAX_STEP_NAME_LENGTH + 1)])
def test_run__invalid_step_name_raises(name):
    store = MemoryStore()
    step = make_context(store)
    fn = Calls()

    with pytest.raises(InvalidStepName):
        step.run(name, fn)

    assert fn.count == 0
    assert store.started == []


def test_run__longest_step_name_is_accepted():
    store = MemoryStore()
    name = "x" * MAX_STEP_NAME_LENGTH

    make_context(store).run(name, Calls(1))

    assert store.saved == [(0, name, 1)]


# -- check() -----------------------------------------------------------------------------------


def test_run__check_is_called_before_new_steps_but_not_on_replay():
    store = MemoryStore(completed={"a": "A"})
    step = make_context(store)

    step.run("a", Calls())
    assert store.checks == 0
    step.run("b", Calls())
    step.run("c", Calls())
    assert store.checks == 2


@pytest.mark.parametrize("interrupt", [JobCancelled, LeaseLost])
def test_run__check_interrupts_before_a_new_step_but_replay_still_works(interrupt):
    store = MemoryStore(completed={"a": "A"})
    store.interrupt = interrupt(store.run_id)
    step = make_context(store)
    b = Calls("B")

    assert step.run("a", Calls()) == "A"
    with pytest.raises(interrupt):
        step.run("b", b)

    assert b.count == 0
    assert store.started == []
    assert store.saved == []
    assert store.failed == []


def test_check__delegates_to_the_store():
    store = MemoryStore()
    step = make_context(store)

    step.check()
    assert store.checks == 1
    store.interrupt = JobCancelled(store.run_id)
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
    store = MemoryStore()
    step = make_context(store)

    with pytest.raises(InvalidProgress):
        step.progress(*args, **kwargs)

    assert store.progress == []


def test_progress__valid_values_are_stored():
    store = MemoryStore()
    step = make_context(store)
    longest = "m" * MAX_PROGRESS_MESSAGE_LENGTH

    step.progress(0)
    step.progress(1.5, total=3, message=longest)

    assert store.progress == [
        {"current": 0, "total": None, "message": None},
        {"current": 1.5, "total": 3, "message": longest},
    ]


def test_progress__is_fenced_by_check():
    store = MemoryStore(interrupt=None)
    step = make_context(store)
    store.interrupt = LeaseLost(store.run_id)

    with pytest.raises(LeaseLost):
        step.progress(1, total=2)

    assert store.progress == []


# -- logs --------------------------------------------------------------------------------------


def test_log__levels_messages_and_json_data_are_stored():
    store = MemoryStore()
    step = make_context(store)

    step.log.info("hello", count=3, items=(1, 2))
    step.log.warning("careful")
    step.log.error("bad", detail={"k": None})

    assert store.logs == [
        {"level": "info", "message": "hello", "data": {"count": 3, "items": [1, 2]}, "step": None},
        {"level": "warning", "message": "careful", "data": {}, "step": None},
        {"level": "error", "message": "bad", "data": {"detail": {"k": None}}, "step": None},
    ]


def test_log__non_json_data_is_stored_as_repr():
    store = MemoryStore()
    step = make_context(store)
    when = datetime(2026, 1, 2, 3, 4, 5)

    step.log.info("lenient", when=when, ok=1)

    [line] = store.logs
    assert line["data"] == {"when": repr(when), "ok": 1}


def test_log__inside_a_step_records_the_step_name():
    store = MemoryStore()
    step = make_context(store)

    step.run("inner", lambda: step.log.info("inside"))
    step.log.info("outside")

    assert [(line["message"], line["step"]) for line in store.logs] == [
        ("inside", "inner"),
        ("outside", None),
    ]


# -- current_context() -------------------------------------------------------------------------


def test_current_context__inside_and_outside_activate():
    step = make_context(MemoryStore())
    with pytest.raises(RuntimeError, match="No durable job is running"):
        current_context()

    with step.activate() as active:
        assert active is step
        assert current_context() is step
        other = make_context(MemoryStore())
        with other.activate():
            assert current_context() is other
        assert current_context() is step

    with pytest.raises(RuntimeError):
        current_context()


def test_current_context__reset_when_the_job_raises():
    step = make_context(MemoryStore())

    with pytest.raises(ValueError, match="kaput"), step.activate():
        boom()

    with pytest.raises(RuntimeError):
        current_context()


def test_context__exposes_run_id_job_name_and_attempt():
    store = MemoryStore()
    step = make_context(store, attempt=3)

    assert step.run_id == store.run_id
    assert step.job_name == "tests.unit"
    assert step.attempt == 3
