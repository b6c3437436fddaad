"""Jobs for the durable-wait tests (``tests/acceptance/test_waits_contract.py``).

Imported by ``tests/jobs.py`` (the module autodiscovery imports), so worker subprocesses register
them too. Counters live in ``tests.jobs.CALLS`` (cleared around each test): ``<job>:body`` counts
how often the job function was entered (code outside steps re-runs on every replay),
``<job>:before`` / ``<job>:after`` count step functions (run once per run), and
``<job>:continued`` counts executions of the code right after a wait returned.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django_durably import Retry, StepContext, job
from django_durably.exceptions import ChildRunFailed, ChildRunsTimeout, SignalTimeout
from tests import jobs


def _count(name: str) -> str:
    return str(jobs.count(name, name))


# -- sleeps ----------------------------------------------------------------------------------------


@job()
def sleeper(step: StepContext, input: dict[str, Any]) -> str:
    """A step, a sleep of ``input["seconds"]`` (step name ``nap``), a step."""
    jobs.count("sleeper:body")
    step.run("before", _count, "sleeper:before")
    step.sleep("nap", timedelta(seconds=input["seconds"]))
    jobs.count("sleeper:continued")
    step.run("after", _count, "sleeper:after")
    return "rested"


@job()
def sleeps_until(step: StepContext, input: dict[str, Any]) -> str:
    """Sleeps until the ISO time ``input["until"]`` (step name ``alarm``)."""
    step.sleep_until("alarm", datetime.fromisoformat(input["until"]))
    jobs.count("sleeps_until:continued")
    return "awake"


# -- signals ---------------------------------------------------------------------------------------


@job()
def awaits_signal(step: StepContext, input: Any) -> Any:
    """A step, then waits for the signal ``approval``; returns its payload."""
    jobs.count("awaits_signal:body")
    step.run("before", _count, "awaits_signal:before")
    payload = step.wait_for_signal("approval")
    jobs.count("awaits_signal:continued")
    step.run("after", _count, "awaits_signal:after")
    return payload


@job()
def gate_then_signal(step: StepContext, input: Any) -> Any:
    """Holds at the gate ``signal-gate`` inside a step (the run is leased), then waits for the
    signal ``approval``."""
    step.run("gate", jobs.wait_for_gate, "signal-gate")
    return step.wait_for_signal("approval")


@job()
def swallows_waits(step: StepContext, input: Any) -> Any:
    """A careless job that catches ``Exception`` around a wait: the wait must still unwind it."""
    try:
        return step.wait_for_signal("approval")
    except Exception:
        jobs.count("swallows_waits:swallowed")
        return "swallowed"


@job()
def awaits_two_items(step: StepContext, input: Any) -> list[Any]:
    """Two waits (steps ``first`` and ``second``) for signals of one name, ``item``."""
    first = step.wait_for_signal("first", signal="item")
    second = step.wait_for_signal("second", signal="item")
    return [first, second]


@job()
def signal_or_fallback(step: StepContext, input: dict[str, Any]) -> Any:
    """Waits for ``approval`` at most ``input["timeout"]`` seconds; on timeout returns
    ``"fallback"`` (or lets ``SignalTimeout`` fail the run when ``input["catch"]`` is false)."""
    timeout = timedelta(seconds=input["timeout"])
    if not input.get("catch", True):
        return step.wait_for_signal("approval", timeout=timeout)
    try:
        return step.wait_for_signal("approval", timeout=timeout)
    except SignalTimeout:
        jobs.count("signal_or_fallback:timed_out")
        return "fallback"


# -- child runs ------------------------------------------------------------------------------------


@job()
def child(step: StepContext, input: dict[str, Any]) -> int:
    """A child run: one counted step, fails when ``input["fail"]``, else returns ``n * 10``."""
    step.run("work", _count, f"child:{input['n']}")
    if input.get("fail"):
        raise RuntimeError(f"child {input['n']} failed on purpose")
    return int(input["n"]) * 10


@job()
def child_awaiting_signal(step: StepContext, input: Any) -> Any:
    """A child run that waits for the signal ``go``."""
    return step.wait_for_signal("go")


@job()
def fans_out(step: StepContext, input: dict[str, Any]) -> dict[str, Any]:
    """Triggers ``input["count"]`` children (``input["fail"]``: the indexes that fail) in the step
    ``fan-out`` with ``input.get("options", {})`` as trigger options, then waits for them in the
    step ``fan-in`` (in reverse order when ``input["reverse"]``, at most ``input["timeout"]``
    seconds when given: a ``ChildRunsTimeout`` returns ``{"timed_out": True}``). With
    ``input["catch"]`` a ``ChildRunFailed`` is returned as ``{"failed": {id: status}}``."""
    jobs.count("fans_out:body")
    failing = set(input.get("fail", []))
    inputs = [{"n": n, "fail": n in failing} for n in range(input["count"])]
    child_job = child_awaiting_signal if input.get("children_wait") else child
    ids = step.trigger("fan-out", child_job, inputs, **input.get("options", {}))
    awaited = list(reversed(ids)) if input.get("reverse") else list(ids)
    timeout = timedelta(seconds=input["timeout"]) if "timeout" in input else None
    try:
        outputs = step.wait_for_runs("fan-in", awaited, timeout=timeout)
    except ChildRunsTimeout:
        return {"children": [str(i) for i in ids], "timed_out": True}
    except ChildRunFailed as exc:
        if not input.get("catch"):
            raise
        return {
            "children": [str(i) for i in ids],
            "failed": {str(run_id): status for run_id, status in exc.failed.items()},
        }
    jobs.count("fans_out:continued")
    return {"children": [str(i) for i in ids], "outputs": outputs}


@job()
def triggers_one(step: StepContext, input: Any) -> dict[str, Any]:
    """``step.trigger`` with a single input (not a list): one id."""
    child_id = step.trigger("one", child, {"n": 7})
    outputs = step.wait_for_runs("wait-one", [child_id])
    return {"child": str(child_id), "outputs": outputs}


@job()
def waits_for_a_stranger(step: StepContext, input: dict[str, Any]) -> Any:
    """Waits for a run that is not its child (``input["run_id"]``)."""
    return step.wait_for_runs("stranger", [UUID(input["run_id"])])


# -- waits and attempts ----------------------------------------------------------------------------


@job(retry=Retry(max_attempts=1))
def waits_everywhere(step: StepContext, input: Any) -> dict[str, Any]:
    """A sleep, a signal and child runs in one run of a job that may not fail once."""
    step.sleep("nap", timedelta(seconds=0.2))
    payload = step.wait_for_signal("approval")
    ids = step.trigger("fan-out", child, [{"n": 1}, {"n": 2}])
    outputs = step.wait_for_runs("fan-in", ids)
    return {"payload": payload, "outputs": outputs}
