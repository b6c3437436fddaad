"""The limits and rules of ``django_durably.validation``, and where they are shared."""

from __future__ import annotations

import subprocess
import sys
from uuid import UUID

import pytest

from django_durably.exceptions import (
    InvalidLabels,
    InvalidQuery,
    InvalidTrigger,
    InvalidValue,
    RunNotFound,
)
from django_durably.validation import (
    LABEL_FILTER_PREFIX,
    MAX_LABEL_KEY_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    check_label_filters,
    check_labels,
    run_pk,
)

LABELS = [
    ("tenant", "acme"),
    ("team/region", "eu.1"),
    ("k" * MAX_LABEL_KEY_LENGTH, "v" * MAX_LABEL_VALUE_LENGTH),
    ("", "v"),
    ("bad key", "v"),
    ("tenant=acme", "v"),
    ("k" * (MAX_LABEL_KEY_LENGTH + 1), "v"),
    ("k", "v" * (MAX_LABEL_VALUE_LENGTH + 1)),
    ("k", "a\x00b"),
    ("k", "\ud800"),
    ("k", ""),
]


def refuses(check, *args):
    try:
        check(*args)
    except InvalidLabels:
        return True
    return False


@pytest.mark.parametrize(("key", "value"), LABELS)
def test_check_label_filters__refuses_exactly_the_labels_a_trigger_refuses(key, value):
    as_filter = [(f"{LABEL_FILTER_PREFIX}{key}", [value])]

    assert refuses(check_label_filters, as_filter) == refuses(check_labels, {key: value})


def test_check_label_filters__at_most_as_many_as_a_trigger_may_carry():
    labels = {f"k{i}": "v" for i in range(MAX_LABELS + 1)}
    params = [(f"label.{key}", [value]) for key, value in labels.items()]

    assert check_label_filters(params[:MAX_LABELS]) == dict(list(labels.items())[:MAX_LABELS])
    with pytest.raises(InvalidLabels):
        check_labels(labels)
    with pytest.raises(InvalidLabels) as refused:
        check_label_filters(params)
    assert refused.value.field == "label"


def test_check_label_filters__skips_other_parameters_and_names_the_one_refused():
    assert check_label_filters([("job", ["a", "b"]), ("label.env", ["prod"])]) == {"env": "prod"}

    with pytest.raises(InvalidLabels) as refused:
        check_label_filters([("label.env", ["prod", "dev"])])
    assert refused.value.field == "label.env"
    assert refused.value.errors == [{"loc": ["label.env"], "msg": "Give label.env once."}]


def test_invalid_query__an_invalid_value_but_not_an_invalid_trigger():
    error = InvalidQuery("Not a cursor from this API.", field="cursor")

    assert isinstance(error, InvalidValue)
    assert isinstance(error, ValueError)
    assert not isinstance(error, InvalidTrigger)
    assert error.errors == [{"loc": ["cursor"], "msg": "Not a cursor from this API."}]


def test_invalid_query__still_importable_from_the_api():
    from django_durably import api

    assert api.InvalidQuery is InvalidQuery


@pytest.mark.parametrize("run_id", ["nope", "", 7])
def test_run_pk__an_id_that_is_not_a_uuid_is_no_run(run_id):
    with pytest.raises(RunNotFound) as missing:
        run_pk(run_id)

    assert missing.value.run_id == run_id


def test_run_pk__uuids_and_their_text():
    run_id = UUID("12345678-1234-5678-1234-567812345678")

    assert run_pk(run_id) is run_id
    assert run_pk(str(run_id)) == run_id
    assert run_pk(run_id.hex) == run_id


def test_validation__imports_without_models_or_settings():
    code = (
        "import sys, django_durably.validation\n"
        "assert 'django_durably.models' not in sys.modules, sorted(sys.modules)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )

    assert result.returncode == 0, result.stderr
