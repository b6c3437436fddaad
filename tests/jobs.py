"""Jobs used by the test suite (autodiscovered: ``tests`` is an installed app).

Counters prove exactly-once behaviour: ``CALLS[name]`` counts how often a step function really ran.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from typing import Any

from pydantic import BaseModel

from django_durably import Retry, StepContext, job

CALLS: Counter[str] = Counter()
_calls_lock = threading.Lock()

# Per-test switches: a job reads these to decide whether to fail, block, etc.
FLAGS: dict[str, Any] = {}


def count(name: str, value: Any = None) -> Any:
    with _calls_lock:
        CALLS[name] += 1
    return value


def fail_if_flagged(name: str) -> str:
    with _calls_lock:
        CALLS[name] += 1
    if FLAGS.get("fail") == name:
        raise RuntimeError(f"step {name} failed on purpose")
    return name


@job()
def noop(step: StepContext, input: Any) -> Any:
    return input


@job(name="tests.three_steps")
def three_steps(step: StepContext, input: dict[str, Any]) -> dict[str, Any]:
    a = step.run("a", count, "a", 1)
    b = step.run("b", fail_if_flagged, "b")
    c = step.run("c", count, "c", [a, b])
    step.progress(3, total=3, message="done")
    step.log.info("finished", a=a, b=b)
    return {"a": a, "b": b, "c": c}


class Greeting(BaseModel):
    name: str
    times: int = 1


class GreetingOut(BaseModel):
    text: str


@job()
def greet(step: StepContext, input: Greeting) -> GreetingOut:
    text = step.run("compose", lambda: " ".join([f"hello {input.name}"] * input.times))
    return GreetingOut(text=text)


@job()
def bad_output(step: StepContext, input: Any) -> GreetingOut:
    return {"wrong": True}  # type: ignore[return-value]


@job()
def non_json_output(step: StepContext, input: Any) -> Any:
    return {1, 2, 3}


@job()
def non_json_step(step: StepContext, input: Any) -> Any:
    return step.run("bad", lambda: object())


@job(concurrency_key=lambda input: f"user:{input['user']}")
def per_user(step: StepContext, input: dict[str, Any]) -> None:
    step.run("work", count, f"per_user:{input['user']}")


@job(concurrency_key="singleton")
def singleton(step: StepContext, input: Any) -> None:
    return None


@job()
def swallows_interrupts(step: StepContext, input: Any) -> str:
    """A careless job that catches Exception around steps: interrupts must still get through."""
    for i in range(3):
        try:
            step.run(f"s{i}", count, f"swallow:{i}")
        except Exception:
            count("swallowed")
    return "done"


@job()
def catches_step_failure(step: StepContext, input: Any) -> str:
    try:
        step.run("flaky", fail_if_flagged, "flaky")
    except RuntimeError:
        return "recovered"
    return "ok"


@job()
def raises_keyboard_interrupt(step: StepContext, input: Any) -> None:
    step.run("before", count, "before-interrupt")
    raise KeyboardInterrupt


@job()
def duplicate_step_names(step: StepContext, input: Any) -> None:
    step.run("same", count, "dup")
    step.run("same", count, "dup")


def wait_for_gate(name: str) -> str:
    """Blocks until the test sets the event ``FLAGS[name]`` (with a deadline)."""
    count(f"entered:{name}")
    entered = FLAGS.get(f"{name}:entered")
    if entered is not None:
        entered.set()
    gate = FLAGS[name]
    if not gate.wait(timeout=30):
        raise TimeoutError(f"gate {name} was never opened")
    return name


@job()
def gated(step: StepContext, input: Any) -> str:
    step.run("first", count, "gated:first")
    step.run("gate", wait_for_gate, "gate")
    step.run("last", count, "gated:last")
    return "done"


@job()
def gated_per_attempt(step: StepContext, input: Any) -> str:
    """Like ``gated``, but each attempt waits at its own gate ``attempt-<n>``, so a test can hold one
    attempt of a run while another goes on."""
    step.run("first", count, "gated:first")
    step.run("gate", wait_for_gate, f"attempt-{step.attempt}")
    step.run("last", count, "gated:last")
    return "done"


@job()
def n_steps(step: StepContext, input: dict[str, Any]) -> int:
    """``input["steps"]`` trivial checkpointed steps (query counts per step)."""
    for index in range(int(input["steps"])):
        step.run(f"s{index}", count, "n_steps", index)
    return int(input["steps"])


@job()
def unstorable_text(step: StepContext, input: dict[str, Any]) -> str:
    """Puts NUL characters and a lone surrogate where the job cannot be told no: log lines, log
    data, progress and (with ``input["raise"]``) its exception; or in a step name."""
    if input.get("step_name"):
        step.run("bad\x00name", count, "never")
    step.log.warning("nul\x00here \ud800", detail="a\x00b", **{"k\x00": ["\x00"]})
    step.progress(1, total=2, message="half\x00way")
    if input.get("raise"):
        raise ValueError("broken\x00value")
    return "done"


@job()
def logs_and_progress(step: StepContext, input: Any) -> None:
    step.log.warning("careful", weird={1, 2})
    step.progress(1, total=2)
    step.run("inner", lambda: step.log.error("inside", n=1))
    step.progress(2, total=2, message="all done")


@job()
def reports_at_a_gate(step: StepContext, input: Any) -> str:
    """Logs a line and reports progress, waits at the gate ``report``, then does both again."""
    step.log.info("before the gate")
    step.progress(1, total=2, message="waiting")
    step.run("gate", wait_for_gate, "report")
    step.log.info("after the gate")
    step.progress(2, total=2, message="done")
    return "done"


@job()
def counted(step: StepContext, input: dict[str, Any]) -> int:
    """One step per run, counted under the run's own name: proves each run executes once."""
    step.run("work", count, f"counted:{input['n']}")
    return int(input["n"])


@job()
def pauses_between_steps(step: StepContext, input: Any) -> str:
    """Waits on the gate ``pause`` outside any step, so nothing is persisted while it waits."""
    step.run("first", count, "pause:first")
    wait_for_gate("pause")
    step.run("next", count, "pause:next")
    return "done"


# -- Jobs run by real `durably_worker` subprocesses (tests/acceptance) ---------------------------


def _pause(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _record_run(step: StepContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Log entry and exit (RunLog.created_at is the database clock) with the lease seen on entry."""
    from django_durably.models import Run

    generation, owner = Run.objects.values_list("lease_generation", "lease_owner").get(
        pk=step.run_id
    )
    step.log.info("enter", generation=generation, owner=owner)
    step.run("work", _pause, payload.get("pause", 0))
    step.log.info("exit", generation=generation, owner=owner)
    return {"seq": payload["seq"]}


@job(name="tests.recorded")
def recorded(step: StepContext, payload: dict[str, Any]) -> dict[str, Any]:
    return _record_run(step, payload)


@job(name="tests.recorded_too")
def recorded_too(step: StepContext, payload: dict[str, Any]) -> dict[str, Any]:
    """A second job name, so two pending runs can share one concurrency key."""
    return _record_run(step, payload)


def _side_effect(step: StepContext, payload: dict[str, Any], index: int) -> int:
    """Step ``index`` of ``side_effects``: marks its entry, maybe waits at the gate, appends a line.

    With ``payload["check_while_blocked"]`` the wait calls ``step.check()``, as a long step should,
    so a cancel or a lost lease stops it inside the step.
    """
    from pathlib import Path

    folder = Path(payload["dir"])
    (folder / f"entered-{index}-{step.attempt}").touch()
    blocks = payload.get("blocks") or {"1": payload.get("block_at")}
    if blocks.get(str(step.attempt)) == index:
        gate = folder / ("gate" if step.attempt == 1 else f"gate-{step.attempt}")
        deadline = time.monotonic() + 120
        while not gate.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gate} never appeared")
            if payload.get("check_while_blocked"):
                step.check()
            time.sleep(0.02)
    with (folder / "side-effects.txt").open("a") as side:
        side.write(f"step-{index} attempt-{step.attempt}\n")
    step.log.info("side effect written", index=index)
    return index


@job(name="tests.side_effects")
def side_effects(step: StepContext, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload["steps"]`` steps, each appending a line to ``<dir>/side-effects.txt``.

    On the first attempt, step ``payload["block_at"]`` waits for the file ``<dir>/gate`` (or to be
    killed). ``payload["blocks"]`` (``{"<attempt>": step index}``) blocks other attempts too, attempt
    ``n > 1`` waiting for ``<dir>/gate-<n>``.
    """
    done = [step.run(f"step-{i}", _side_effect, step, payload, i) for i in range(payload["steps"])]
    return {"attempt": step.attempt, "steps": done}


def _value(value: Any) -> Any:
    return value


@job()
def echo(step: StepContext, input: dict[str, Any]) -> Any:
    """Its step "echo" outputs input["step"]; the job returns input["result"]."""
    step.run("echo", _value, input.get("step"))
    return input.get("result")


# -- retries and timeouts --------------------------------------------------------------------------


class Transient(ConnectionError):
    """What the flaky jobs raise: an outage a retry heals."""


def flaky_call(name: str) -> int:
    """Raises :class:`Transient` until it has been called ``FLAGS[name]`` times (then returns the
    number of calls): a service that is down for a while."""
    with _calls_lock:
        CALLS[name] += 1
        calls = CALLS[name]
    if calls < FLAGS.get(name, 1):
        raise Transient(f"{name} is down (call {calls})")
    return calls


def raise_flagged(name: str) -> None:
    """Raises the exception ``FLAGS[name]`` (counted)."""
    count(name)
    raise FLAGS[name]


@job(retry=Retry(max_attempts=3, initial_delay=0, jitter=False))
def retried(step: StepContext, input: Any) -> int:
    """Replays its first step, then calls the flaky service outside any step: retried as a run."""
    step.run("before", count, "retried:before")
    return flaky_call("retried")


@job(retry=Retry(max_attempts=3, initial_delay=60, jitter=False, give_up_on=(KeyError,)))
def retried_later(step: StepContext, input: Any) -> None:
    """Raises ``FLAGS["retried_later"]``; a retry is due a minute later."""
    raise_flagged("retried_later")


@job()
def step_retried(step: StepContext, input: dict[str, Any]) -> int:
    """A step of a flaky service, retried by the step's own policy (``input``: its arguments)."""
    step.run("before", count, "step_retried:before")
    calls = step.run(
        "call", flaky_call, "step_retried", retry=Retry(jitter=False, **input["retry"])
    )
    step.run("after", count, "step_retried:after")
    return int(calls)


@job(retry=Retry(max_attempts=2, initial_delay=0, jitter=False), concurrency_key="shared-key")
def retried_with_key(step: StepContext, input: Any) -> int:
    return flaky_call("retried_with_key")


@job(timeout=0.3)
def times_out(step: StepContext, input: Any) -> str:
    """Its attempt blocks at the gate ``timeout`` past the job's timeout of 0.3 s."""
    step.run("first", count, "times_out:first")
    step.run("gate", wait_for_gate, "timeout")
    step.run("last", count, "times_out:last")
    return "done"


@job(timeout=0.3, retry=Retry(max_attempts=2, initial_delay=0, jitter=False))
def times_out_once(step: StepContext, input: Any) -> str:
    """Attempt 1 blocks at the gate ``attempt-1`` past the timeout; attempt 2 goes through."""
    step.run("first", count, "times_out:first")
    if step.attempt == 1:
        step.run("gate", wait_for_gate, "attempt-1")
    return "done"


@job()
def step_times_out(step: StepContext, input: Any) -> str:
    """Its step blocks at the gate ``timeout`` past the step's timeout of 0.3 s."""
    step.run("slow", wait_for_gate, "timeout", timeout=0.3)
    return "done"


@job()
def kills_its_worker(step: StepContext, input: Any) -> None:
    """SIGKILLs the process running it, as a job that runs out of memory would: a poison run."""
    os.kill(os.getpid(), signal.SIGKILL)


@job(timeout=0.3)
def sleeps_past_its_timeout(step: StepContext, input: dict[str, Any]) -> None:
    """Its step sleeps ``input["seconds"]``, past the job's timeout of 0.3 s (for worker
    processes, which a gate of this process cannot hold)."""
    step.run("sleep", time.sleep, input["seconds"])


# The durable-wait jobs live in their own module; imported here so that every process that
# autodiscovers this one (the test process, worker subprocesses) registers them too.
from tests import wait_jobs  # noqa: E402, F401
