"""Property-based fuzzing of the HTTP API from its own OpenAPI schema, with schemathesis.

Every operation of ``/durably/openapi.json`` is called through Django's WSGI application (the real
middleware and URLconf) as a logged-in staff user holding every run permission, with the CSRF
cookie and header set, with requests that match the schema (positive) and requests that break it
(negative). Each response must not be a 5xx, must use a status code the schema declares, and must
match the schema declared for that code. Runs in several statuses exist, and operations on a run are
also called with their ids (and the trigger with registered job names), so the fuzzer reaches past
the 404s of random ids; every operation must succeed at least once.

The number of examples per operation and mode is ``DURABLY_FUZZ_EXAMPLES`` (default 12), kept small
so the suite stays fast on both databases, and the seed is fixed (``DURABLY_FUZZ_SEED``) so a run
is reproducible. For a deeper run:
``DURABLY_FUZZ_EXAMPLES=500 DURABLY_FUZZ_SEED=$RANDOM pytest tests/integration/test_api_fuzz.py``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client
from django.utils import timezone

pytest.importorskip("schemathesis", reason="pip install 'django-durably[test]'")

import schemathesis  # noqa: E402 - after the skip
from hypothesis import HealthCheck, given, seed  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import CHECKS, load_all_checks  # noqa: E402

from django_durably.models import Run, RunStatus  # noqa: E402
from tests import jobs  # noqa: E402

pytestmark = pytest.mark.django_db(databases="__all__")

EXAMPLES = int(os.environ.get("DURABLY_FUZZ_EXAMPLES", "12"))
SEED = int(os.environ.get("DURABLY_FUZZ_SEED", "20261122"))
CSRF_SECRET = "f" * 32


# Rejections of schema-valid requests that an OpenAPI document cannot express (ST202's tuning):
# ids and job names that do not exist (404), runs in a status the action does not apply to (409), and
# an input that fails the job's own pydantic schema (422: each job's schema is in GET /jobs, not in
# the document, where input is any JSON), and a cursor that this API did not make (422: cursors are
# opaque strings), and a signal's payload or name holding text that JSON allows but databases
# cannot store (422: NUL characters, lone surrogates).
CONFIG = {
    "operations": [
        # First: where several entries apply to an operation, the first one's settings win.
        {
            "include-operation-id": "durably_send_signal",
            "checks": {
                "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "422"]}
            },
        },
        {
            "include-operation-id": "durably_trigger_run",
            "checks": {
                "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "422"]}
            },
        },
        {
            "include-operation-id": "durably_list_runs",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "422"]}},
        },
        {
            "include-path-regex": "^/durably/runs/",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409"]}},
        },
    ]
}


def all_checks() -> list[Any]:
    """Every check schemathesis has (``--checks all``): ST201 (negative data rejected), ST202
    (positive data accepted), ST203 (missing required header), the conformance checks, and the
    stateful ones (use after free, resource availability, ignored auth)."""
    load_all_checks()
    return list(CHECKS.get_all())


@pytest.fixture
def wsgi_app(settings: Any) -> Iterator[WSGIHandler]:
    """Django's WSGI application, serving requests inside the test's transaction."""
    settings.ALLOWED_HOSTS = ["localhost", "testserver"]
    settings.DEBUG = False
    settings.DURABLY_API_DOCS_PUBLIC = True  # schemathesis loads the schema without credentials
    # As Django's test client does: a request must not close the connection holding the test's
    # transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield WSGIHandler()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def credentials(make_user: Any) -> dict[str, Any]:
    from tests.conftest import RUN_PERMISSIONS

    client = Client()
    client.force_login(make_user("fuzzer", *RUN_PERMISSIONS, "signal_run"))
    return {
        "cookies": {"sessionid": client.cookies["sessionid"].value, "csrftoken": CSRF_SECRET},
        "headers": {"X-CSRFToken": CSRF_SECRET},
    }


def runs_in_each_status() -> list[str]:
    """One run in each status (with its steps' job), so that ids hit real runs too."""
    run_ids = []
    for status in RunStatus.values:
        run = jobs.three_steps.trigger({"status": status}, labels={"tenant": "acme"})
        fields: dict[str, Any] = {"status": status}
        if status == RunStatus.LEASED:
            fields["lease_expires_at"] = timezone.now() + timedelta(minutes=5)
        Run.objects.filter(pk=run.pk).update(**fields)
        run_ids.append(str(run.pk))
    return run_ids


def fuzz(
    operation: Any,
    mode: GenerationMode,
    credentials: dict[str, Any],
    seen: Counter[tuple[str, int]],
    **fixed: Any,
) -> None:
    """Call ``operation`` with EXAMPLES generated cases and check each response."""
    checks = all_checks()

    @seed(SEED)
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, **credentials, **fixed))
    def check(case: Any) -> None:
        response = case.call()
        seen[(operation.label, response.status_code)] += 1
        case.validate_response(response, checks=checks)

    try:
        check()
    except Unsatisfiable:
        # Nothing of this operation can be made invalid (GET /jobs has no parameters, and the
        # credentials are fixed): there are no negative cases to try.
        assert mode is GenerationMode.NEGATIVE


def test_api_fuzz__no_server_errors_and_responses_match_the_schema(wsgi_app, credentials):
    config = schemathesis.Config.from_dict(CONFIG)
    schema = schemathesis.openapi.from_wsgi("/durably/openapi.json", wsgi_app, config=config)
    operations = [
        operation
        for operation in (result.ok() for result in schema.get_all_operations())
        # The event stream stays open while its run is unfinished; test_stream.py covers it.
        if not operation.path.endswith("/events")
    ]
    assert len(operations) == 13
    seen: Counter[tuple[str, int]] = Counter()

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, credentials, seen)
        if "{run_id}" in operation.path:
            for run_id in runs_in_each_status():  # fresh ones: earlier operations changed them
                fuzz(
                    operation,
                    GenerationMode.POSITIVE,
                    credentials,
                    seen,
                    path_parameters={"run_id": run_id},
                )
        if "{name}" in operation.path:
            for name in ("tests.jobs.noop", "tests.jobs.greet", "tests.jobs.singleton"):
                fuzz(
                    operation,
                    GenerationMode.POSITIVE,
                    credentials,
                    seen,
                    path_parameters={"name": name},
                )

    # The fuzzer got past validation and lookups: every operation succeeded at least once.
    succeeded = {label for (label, status), _ in seen.items() if status < 300}
    assert succeeded == {operation.label for operation in operations}, sorted(seen.items())
    print(f"{sum(seen.values())} requests:", dict(sorted(seen.items())))
