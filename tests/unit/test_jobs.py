"""The ``@job()`` decorator, the ``Job`` definition and the registry, without a database."""

# Job functions take ``(step, input)``: ``input`` is the documented parameter name.

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from django_durably import StepContext, checks, jobs
from django_durably.exceptions import (
    ImproperlyConfiguredJob,
    InvalidInput,
    InvalidTrigger,
    JobNotFound,
    OutputInvalid,
)
from django_durably.jobs import Job, define_job, get_job, job, registered_jobs
from tests import jobs as test_jobs

# -- throwaway jobs: module level, because closures and lambdas are rejected by design -----------


class Point(BaseModel):
    x: int
    y: int = 0


class Total(BaseModel):
    total: int


class Other(BaseModel):
    label: str


def plain(step: StepContext, input: Any) -> Any:
    return input


def echo(step: Any, input: Any) -> tuple[Any, Any]:
    return step, input


def typed(step: StepContext, input: Point) -> Total:
    return Total(total=input.x + input.y)


def one_argument(step: StepContext) -> None:
    return None


def three_arguments(step: StepContext, input: Any, extra: Any) -> None:
    return None


def with_optional_extra(step: StepContext, input: Any, extra: Any = None) -> Any:
    return extra


def varargs(*args: Any) -> Any:
    return args


def keyword_only_input(step: StepContext, *, input: Any) -> None:
    return None


def first_of_a_pair(step: StepContext, input: Any) -> str:
    return "first"


def second_of_a_pair(step: StepContext, input: Any) -> str:
    return "second"


MODULE_LEVEL = {"lambda": lambda step, input: input}


def user_key(input: dict[str, Any]) -> str:
    return f"user:{input['user']}"


def broken_key(input: Any) -> str:
    raise KeyError("user")


def int_key(input: Any) -> Any:
    return 7


def empty_key(input: Any) -> str:
    return ""


def point_key(input: Point) -> str:
    return f"point:{input.x}"


@pytest.fixture
def scratch_names() -> Iterator[list[str]]:
    """Names registered by a test; unregistered (with their conflicts) afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        jobs.unregister(name)


def make(fn: Any = plain, **options: Any) -> Job[Any, Any]:
    """Build a Job without registering it."""
    defaults: dict[str, Any] = {
        "name": None,
        "queue": None,
        "priority": None,
        "concurrency_key": None,
        "input_schema": None,
        "output_schema": None,
    }
    return define_job(fn, **{**defaults, **options})


# -- the decorator -------------------------------------------------------------------------------


def test_job__default_name_is_module_and_qualname(scratch_names):
    scratch_names.append("tests.unit.test_jobs.plain")
    registered = job()(plain)
    assert isinstance(registered, Job)
    assert registered.name == "tests.unit.test_jobs.plain"
    assert registered.fn is plain
    assert get_job("tests.unit.test_jobs.plain") is registered


def test_job__options_are_kept(scratch_names):
    scratch_names.append("scratch.options")
    registered = job(
        name="scratch.options", queue="emails", priority=5, concurrency_key="only-one"
    )(plain)
    assert registered.name == "scratch.options"
    assert registered.queue == "emails"
    assert registered.priority == 5
    assert registered.concurrency_key == "only-one"
    assert registered.input_schema is None
    assert registered.output_schema is None
    assert registered_jobs()["scratch.options"] is registered


def test_job__unset_options_default_to_none():
    built = make()
    assert (built.queue, built.priority, built.concurrency_key) == (None, None, None)


def test_job__options_are_keyword_only():
    with pytest.raises(TypeError, match="keyword-only"):
        job("scratch.positional")


def test_job__without_parentheses_is_an_error():
    with pytest.raises(ImproperlyConfiguredJob, match=r"@job\(\) with parentheses"):
        job(plain)
    assert "tests.unit.test_jobs.plain" not in registered_jobs()


def test_job__calling_the_job_calls_the_function():
    step: Any = object()
    assert make(echo)(step, {"a": 1}) == (step, {"a": 1})


def test_job__is_frozen():
    built = make()
    with pytest.raises(AttributeError):
        built.queue = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda step, input: input, id="lambda"),
        pytest.param(functools.partial(echo, None), id="partial"),
        pytest.param(Point, id="class"),
        pytest.param(len, id="builtin"),
    ],
)
def test_job__rejects_what_is_not_a_module_level_function(fn):
    with pytest.raises(ImproperlyConfiguredJob):
        job(name="scratch.rejected")(fn)
    assert "scratch.rejected" not in registered_jobs()


def test_job__rejects_a_closure():
    def inner(step: StepContext, input: Any) -> None:
        return None

    with pytest.raises(ImproperlyConfiguredJob, match="must be defined at module level"):
        job(name="scratch.closure")(inner)
    assert "scratch.closure" not in registered_jobs()


def test_job__rejects_a_module_level_lambda():
    with pytest.raises(ImproperlyConfiguredJob) as caught:
        job(name="scratch.lambda")(MODULE_LEVEL["lambda"])
    assert str(caught.value) == (
        "Job function '<lambda>' must be defined at module level, so that every worker process "
        "can import it by name."
    )


@pytest.mark.parametrize("fn", [one_argument, three_arguments, keyword_only_input])
def test_job__rejects_the_wrong_arity(fn):
    with pytest.raises(ImproperlyConfiguredJob, match=r"two positional arguments, \(step, input\)"):
        job(name="scratch.arity")(fn)
    assert "scratch.arity" not in registered_jobs()


@pytest.mark.parametrize("fn", [with_optional_extra, varargs])
def test_job__accepts_signatures_that_bind_two_positional_arguments(fn):
    assert make(fn).fn is fn


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"name": ""}, id="empty-name"),
        pytest.param({"name": "x" * 256}, id="long-name"),
        pytest.param({"name": 5}, id="int-name"),
        pytest.param({"queue": ""}, id="empty-queue"),
        pytest.param({"queue": "q" * 101}, id="long-queue"),
        pytest.param({"queue": 3}, id="int-queue"),
        pytest.param({"priority": True}, id="bool-priority"),
        pytest.param({"priority": "1"}, id="str-priority"),
        pytest.param({"priority": 1.5}, id="float-priority"),
        pytest.param({"concurrency_key": 5}, id="int-concurrency-key"),
        pytest.param({"input_schema": dict}, id="input-schema-not-pydantic"),
        pytest.param({"output_schema": Point(x=1)}, id="output-schema-instance"),
    ],
)
def test_job__rejects_bad_options(options):
    with pytest.raises(ImproperlyConfiguredJob):
        make(**options)


def test_job__name_of_255_characters_is_accepted():
    assert make(name="n" * 255).name == "n" * 255


# -- schemas -------------------------------------------------------------------------------------


def test_job__infers_schemas_from_pydantic_annotations():
    built = make(typed)
    assert built.input_schema is Point
    assert built.output_schema is Total


def test_job__infers_no_schema_from_plain_annotations():
    built = make(plain)
    assert built.input_schema is None
    assert built.output_schema is None


def test_job__infers_schemas_of_the_shared_test_job():
    assert test_jobs.greet.input_schema is test_jobs.Greeting
    assert test_jobs.greet.output_schema is test_jobs.GreetingOut


def test_job__explicit_schema_wins_over_annotations():
    built = make(typed, input_schema=Other, output_schema=Other)
    assert built.input_schema is Other
    assert built.output_schema is Other


def test_job__explicit_schema_on_an_unannotated_function():
    built = make(plain, input_schema=Point)
    assert built.input_schema is Point
    assert built.output_schema is None


# -- using() -------------------------------------------------------------------------------------


def test_job_using__returns_a_modified_copy():
    original = make(name="scratch.using", queue="a", priority=1)
    copy = original.using(queue="b", priority=9)
    assert (copy.queue, copy.priority) == ("b", 9)
    assert (original.queue, original.priority) == ("a", 1)
    assert copy is not original
    assert copy.name == original.name
    assert copy.fn is original.fn


def test_job_using__keeps_what_is_not_given():
    original = make(name="scratch.using", queue="a", priority=1, concurrency_key="k")
    assert original.using(priority=2).queue == "a"
    assert original.using(queue="b").priority == 1
    assert original.using(queue="b").concurrency_key == "k"
    assert original.using() == original


def test_job_using__does_not_touch_the_registry(scratch_names):
    scratch_names.append("scratch.using-registered")
    registered = job(name="scratch.using-registered", queue="a")(plain)
    registered.using(queue="b")
    assert get_job("scratch.using-registered").queue == "a"


# -- prepare_input -------------------------------------------------------------------------------


def test_job_prepare_input__without_schema_normalises_json():
    stored, parsed = make().prepare_input({"a": (1, 2), "b": None})
    assert stored == {"a": [1, 2], "b": None}
    assert parsed == stored


def test_job_prepare_input__none_is_valid_input():
    assert make().prepare_input(None) == (None, None)


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        pytest.param({1, 2}, "set", id="set"),
        pytest.param({"when": datetime(2026, 1, 1, tzinfo=UTC)}, "datetime", id="datetime"),
        pytest.param({"x": math.nan}, "Out of range float", id="nan"),
        pytest.param([math.inf], "Out of range float", id="inf"),
        pytest.param(object(), "object", id="object"),
    ],
)
def test_job_prepare_input__rejects_non_json(value, detail):
    with pytest.raises(InvalidInput) as caught:
        make(name="scratch.input").prepare_input(value)
    assert caught.value.field == "input"
    message = str(caught.value)
    assert message.startswith("Input of job 'scratch.input' must be JSON-serializable")
    assert detail in message
    assert caught.value.errors == [{"loc": ["input"], "msg": message}]


def test_job_prepare_input__rejects_non_string_keys():
    with pytest.raises(InvalidInput, match="must be JSON-serializable"):
        make().prepare_input({1: "one"})


def test_job_prepare_input__with_schema_returns_json_and_model():
    stored, parsed = make(typed).prepare_input({"x": "3"})
    assert stored == {"x": 3, "y": 0}
    assert parsed == Point(x=3, y=0)


def test_job_prepare_input__accepts_a_model_instance():
    stored, parsed = make(typed).prepare_input(Point(x=1, y=2))
    assert stored == {"x": 1, "y": 2}
    assert parsed == Point(x=1, y=2)


def test_job_prepare_input__schema_failure_has_field_details():
    with pytest.raises(InvalidInput) as caught:
        make(typed, name="scratch.typed").prepare_input({"x": "many", "z": 1})
    error = caught.value
    assert isinstance(error, InvalidTrigger)
    assert error.field == "input"
    assert str(error) == (
        "Input of job 'scratch.typed' does not match Point: "
        "x: Input should be a valid integer, unable to parse string as an integer"
    )
    assert [(d["loc"], d["type"]) for d in error.errors] == [(["input", "x"], "int_parsing")]
    assert all("input" not in detail for detail in error.errors)  # the bad value is not echoed


def test_job_prepare_input__schema_failure_lists_every_field():
    with pytest.raises(InvalidInput) as caught:
        test_jobs.greet.prepare_input({"times": "x"})
    assert [detail["loc"] for detail in caught.value.errors] == [
        ["input", "name"],
        ["input", "times"],
    ]
    assert "name: Field required" in str(caught.value)


def test_job_prepare_input__schema_failure_for_a_non_object():
    with pytest.raises(InvalidInput, match=r"\(root\): Input should be a valid dictionary"):
        make(typed).prepare_input([1, 2])


def test_job_load_input__revalidates_stored_json():
    assert make(typed).load_input({"x": 1, "y": 2}) == Point(x=1, y=2)
    assert make().load_input({"x": 1}) == {"x": 1}
    with pytest.raises(InvalidInput, match="Stored input of job"):
        make(typed).load_input({"y": 1})


# -- prepare_output ------------------------------------------------------------------------------


def test_job_prepare_output__without_schema_normalises_json():
    assert make().prepare_output({"a": (1, "b")}) == {"a": [1, "b"]}
    assert make().prepare_output(None) is None


def test_job_prepare_output__dumps_a_pydantic_value_without_schema():
    assert make().prepare_output(Total(total=3)) == {"total": 3}


def test_job_prepare_output__with_schema_accepts_model_or_dict():
    built = make(typed)
    assert built.prepare_output(Total(total=4)) == {"total": 4}
    assert built.prepare_output({"total": "5"}) == {"total": 5}


def test_job_prepare_output__schema_failure_is_output_invalid():
    with pytest.raises(OutputInvalid, match="Output of job 'scratch.out' does not match Total"):
        make(typed, name="scratch.out").prepare_output({"wrong": True})


def test_job_prepare_output__another_model_is_revalidated():
    with pytest.raises(OutputInvalid, match="total: Field required"):
        make(typed).prepare_output(Other(label="x"))


@pytest.mark.parametrize("value", [{1, 2}, {"x": math.nan}, datetime(2026, 1, 1, tzinfo=UTC)])
def test_job_prepare_output__rejects_non_json(value):
    with pytest.raises(OutputInvalid, match="must be JSON-serializable"):
        make().prepare_output(value)


# -- resolve_concurrency_key ---------------------------------------------------------------------


def test_job_resolve_concurrency_key__none_by_default():
    assert make().resolve_concurrency_key(None, {"user": 1}) is None


def test_job_resolve_concurrency_key__string():
    assert make(concurrency_key="singleton").resolve_concurrency_key(None, {}) == "singleton"


def test_job_resolve_concurrency_key__callable_gets_the_parsed_input():
    assert make(concurrency_key=user_key).resolve_concurrency_key(None, {"user": 7}) == "user:7"
    built = make(typed, concurrency_key=point_key)
    assert built.resolve_concurrency_key(None, Point(x=4)) == "point:4"


def test_job_resolve_concurrency_key__explicit_overrides_the_job():
    assert make(concurrency_key=user_key).resolve_concurrency_key("mine", {}) == "mine"
    assert make(concurrency_key="job").resolve_concurrency_key("mine", {}) == "mine"
    assert make().resolve_concurrency_key("mine", {}) == "mine"


def test_job_resolve_concurrency_key__explicit_override_skips_the_callable():
    # The callable would raise on this input; an explicit key means it is never called.
    assert make(concurrency_key=broken_key).resolve_concurrency_key("mine", {}) == "mine"


def test_job_resolve_concurrency_key__callable_that_raises_is_invalid_trigger():
    with pytest.raises(InvalidTrigger) as caught:
        make(name="scratch.key", concurrency_key=broken_key).resolve_concurrency_key(None, {})
    assert caught.value.field == "concurrency_key"
    assert str(caught.value) == (
        "The concurrency_key callable of job 'scratch.key' failed: KeyError('user')"
    )
    assert isinstance(caught.value.__cause__, KeyError)


@pytest.mark.parametrize(
    ("options", "explicit"),
    [
        pytest.param({"concurrency_key": int_key}, None, id="callable-returns-int"),
        pytest.param({"concurrency_key": empty_key}, None, id="callable-returns-empty"),
        pytest.param({}, "", id="explicit-empty"),
        pytest.param({}, "k" * 256, id="explicit-too-long"),
        pytest.param({}, 12, id="explicit-int"),
        pytest.param({"concurrency_key": ""}, None, id="job-string-empty"),
    ],
)
def test_job_resolve_concurrency_key__rejects_bad_values(options, explicit):
    with pytest.raises(InvalidTrigger, match="concurrency_key must be a non-empty string") as c:
        make(**options).resolve_concurrency_key(explicit, {})
    assert c.value.field == "concurrency_key"


def test_job_resolve_concurrency_key__accepts_255_characters():
    assert make().resolve_concurrency_key("k" * 255, {}) == "k" * 255


# -- the registry --------------------------------------------------------------------------------


def test_registry__unknown_name_is_job_not_found():
    with pytest.raises(JobNotFound) as caught:
        get_job("scratch.nope")
    assert caught.value.job_name == "scratch.nope"
    assert "No job is registered under the name 'scratch.nope'" in str(caught.value)
    assert isinstance(caught.value, LookupError)


def test_registry__shared_test_jobs_are_autodiscovered():
    assert get_job("tests.three_steps") is test_jobs.three_steps
    assert get_job("tests.jobs.greet") is test_jobs.greet


def test_registry__reregistering_the_same_function_is_fine(scratch_names):
    scratch_names.append("scratch.same")
    first = job(name="scratch.same")(plain)
    second = job(name="scratch.same", queue="other")(plain)
    assert get_job("scratch.same") is second
    assert ("scratch.same", first.module, second.module) not in jobs.registry_conflicts()
    assert checks.check_job_names() == []


def test_registry__different_function_under_a_taken_name_is_a_conflict(scratch_names):
    scratch_names.append("scratch.taken")
    first = job(name="scratch.taken")(first_of_a_pair)
    job(name="scratch.taken")(second_of_a_pair)
    assert get_job("scratch.taken") is first
    assert (
        "scratch.taken",
        "tests.unit.test_jobs.first_of_a_pair",
        "tests.unit.test_jobs.second_of_a_pair",
    ) in jobs.registry_conflicts()

    errors = checks.check_job_names()
    assert [(e.id, e.msg, e.hint) for e in errors] == [
        (
            "django_durably.E001",
            "Job name 'scratch.taken' is registered by two different functions: "
            "tests.unit.test_jobs.first_of_a_pair and tests.unit.test_jobs.second_of_a_pair.",
            "Give one of them another name with @job(name=...).",
        )
    ]


def test_registry__a_conflict_is_recorded_once(scratch_names):
    scratch_names.append("scratch.twice")
    job(name="scratch.twice")(first_of_a_pair)
    job(name="scratch.twice")(second_of_a_pair)
    job(name="scratch.twice")(second_of_a_pair)
    assert len(checks.check_job_names()) == 1


def test_registry__unregister_clears_the_job_and_its_conflicts():
    job(name="scratch.cleared")(first_of_a_pair)
    job(name="scratch.cleared")(second_of_a_pair)
    assert checks.check_job_names() != []
    jobs.unregister("scratch.cleared")
    assert checks.check_job_names() == []
    with pytest.raises(JobNotFound):
        get_job("scratch.cleared")


def test_registry__no_conflicts_in_the_test_suite():
    assert checks.check_job_names() == []
