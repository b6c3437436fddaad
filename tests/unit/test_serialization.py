"""Normalising values to the JSON that runs and steps store."""

from __future__ import annotations

import decimal
import math
import uuid
from datetime import UTC, date, datetime

import pytest
from pydantic import BaseModel

from django_durably.exceptions import NotJSONSerializable, StepError
from django_durably.serialization import (
    describe_exception,
    dump,
    to_json,
    to_json_lenient,
    unstorable_text,
)


class Stamp(BaseModel):
    when: datetime
    tags: set[str] = set()
    ratio: float = 0.5


class Boom(Exception):
    pass


def raise_boom() -> None:
    raise Boom("bad things")


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -3,
        2.5,
        "",
        "text",
        "ünïcode",
        [],
        {},
        [1, "a", None],
        {"a": {"b": [1]}},
    ],
)
def test_to_json__json_values_round_trip_unchanged(value):
    assert to_json(value, what="Value") == value


def test_to_json__tuples_become_lists():
    assert to_json({"a": (1, (2, 3))}, what="Value") == {"a": [1, [2, 3]]}


def test_to_json__returns_a_copy():
    original = {"a": [1]}
    stored = to_json(original, what="Value")
    original["a"].append(2)
    assert stored == {"a": [1]}


def test_to_json__pydantic_model_is_dumped_in_json_mode():
    stamp = Stamp(when=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), tags={"x"})
    assert to_json(stamp, what="Value") == {
        "when": "2026-01-02T03:04:05Z",
        "tags": ["x"],
        "ratio": 0.5,
    }


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        pytest.param({1, 2}, "Object of type set is not JSON serializable", id="set"),
        pytest.param(
            datetime(2026, 1, 1, tzinfo=UTC),
            "Object of type datetime is not JSON serializable",
            id="datetime",
        ),
        pytest.param(date(2026, 1, 1), "Object of type date is not JSON serializable", id="date"),
        pytest.param(
            decimal.Decimal("1.5"), "Object of type Decimal is not JSON serializable", id="decimal"
        ),
        pytest.param(uuid.UUID(int=1), "Object of type UUID is not JSON serializable", id="uuid"),
        pytest.param(b"bytes", "Object of type bytes is not JSON serializable", id="bytes"),
        pytest.param(math.nan, "Out of range float values are not JSON compliant", id="nan"),
        pytest.param([math.inf], "Out of range float values are not JSON compliant", id="inf"),
        pytest.param(
            {"x": -math.inf}, "Out of range float values are not JSON compliant", id="-inf"
        ),
    ],
)
def test_to_json__rejects_values_json_cannot_hold(value, detail):
    with pytest.raises(NotJSONSerializable) as caught:
        to_json(value, what="Output of step 'x'")
    assert str(caught.value).startswith("Output of step 'x' must be JSON-serializable: ")
    assert detail in str(caught.value)
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, StepError)
    assert caught.value.__cause__ is not None


def test_to_json__rejects_a_circular_structure():
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(NotJSONSerializable, match="Circular reference detected"):
        to_json(loop, what="Value")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({1: "one"}, id="int-key"),
        pytest.param({None: "none"}, id="none-key"),
        pytest.param({True: "yes"}, id="bool-key"),
        pytest.param({"outer": [{2.5: "nested"}]}, id="nested-float-key"),
    ],
)
def test_to_json__rejects_non_string_keys(value):
    # json.dumps would silently turn these keys into strings ("1", "null", "true"), so what a job
    # read back would differ from what it returned.
    with pytest.raises(NotJSONSerializable, match="object keys must be strings"):
        to_json(value, what="Value")


def test_dump__is_compact_and_strict():
    assert dump({"a": [1, 2], "b": "c"}) == '{"a":[1,2],"b":"c"}'
    with pytest.raises(ValueError, match="Out of range float"):
        dump(math.nan)


def test_to_json_lenient__keeps_json_values():
    assert to_json_lenient({"a": [1, "b"]}) == {"a": [1, "b"]}


def test_to_json_lenient__replaces_what_json_cannot_hold_with_repr():
    assert to_json_lenient({"when": date(2026, 1, 1), "n": 1}) == {
        "when": "datetime.date(2026, 1, 1)",
        "n": 1,
    }


def test_to_json_lenient__falls_back_to_repr_of_the_whole_value():
    assert to_json_lenient(math.nan) == "nan"


def test_describe_exception__stores_class_path_message_and_traceback():
    try:
        raise_boom()
    except Boom as exc:
        described = describe_exception(exc)
    assert set(described) == {"type", "message", "traceback"}
    assert described["type"] == "tests.unit.test_serialization.Boom"
    assert described["message"] == "bad things"
    assert described["traceback"].startswith("Traceback (most recent call last):")
    assert "in raise_boom" in described["traceback"]
    assert described["traceback"].rstrip().endswith("Boom: bad things")


def test_describe_exception__without_traceback():
    described = describe_exception(ValueError("plain"))
    assert described == {
        "type": "builtins.ValueError",
        "message": "plain",
        "traceback": "ValueError: plain\n",
    }


@pytest.mark.parametrize(
    ("value", "shown", "problem"),
    [
        pytest.param("a\x00b", "'a\\x00b'", "contains a NUL character", id="nul"),
        pytest.param({"k": ["\x00"]}, "'\\x00'", "contains a NUL character", id="nested-nul"),
        pytest.param({"a\x00": 1}, "'a\\x00'", "contains a NUL character", id="key-nul"),
        pytest.param(["\ud800"], "'\\ud800'", "contains a lone surrogate", id="surrogate"),
        pytest.param({"\udfff": 1}, "'\\udfff'", "contains a lone surrogate", id="key-surrogate"),
    ],
)
def test_to_json__rejects_strings_databases_cannot_store(value, shown, problem):
    with pytest.raises(NotJSONSerializable) as caught:
        to_json(value, what="Input")
    assert str(caught.value) == (
        f"Input cannot be stored: the string {shown} {problem}, which databases cannot store."
    )


@pytest.mark.parametrize(
    "value",
    [
        "\N{GRINNING FACE}",
        {"\N{GRINNING FACE}": "caf\N{LATIN SMALL LETTER E WITH ACUTE}"},
        "C:\\udir",
        "\\u0000",
    ],
)
def test_to_json__keeps_storable_text(value):
    assert to_json(value, what="Input") == value


def test_unstorable_text():
    assert unstorable_text("fine \N{GRINNING FACE}") is None
    assert unstorable_text("a\x00") == "contains a NUL character"
    assert unstorable_text("\udc80") == "contains a lone surrogate"
