"""The chaos job: five checkpointed steps, each journaled on the step function's own connection.

``chaos`` is an installed app of ``chaos.settings``, so workers autodiscover this module.
"""

from __future__ import annotations

import random
import time
from typing import Any

from chaos import journal
from chaos.records import STEP_NAMES
from django_durably import StepContext, job


def _duration(timing: dict[str, Any]) -> float:
    """A step's duration: mostly short, sometimes longer than the lease (renewed meanwhile)."""
    if random.random() < timing["long_share"]:
        return random.uniform(*timing["long"])
    return random.uniform(*timing["step"])


def step_body(run_id: str, name: str, attempt: int, seconds: float) -> dict[str, Any]:
    """A step function: journal the start, take ``seconds``, journal the end."""
    journal.record("start", run_id, name, attempt)
    time.sleep(seconds)
    journal.record("end", run_id, name, attempt)
    return {"attempt": attempt}


@job(name="chaos.five_steps")
def five_steps(step: StepContext, input: dict[str, Any]) -> dict[str, Any]:
    """``input``: ``{"n": serial, "timing": {...}}``; ``timing`` has ``step`` and ``long`` (each
    ``[low, high]`` seconds), ``long_share`` (the share of long steps) and ``pause`` (``[low,
    high]`` seconds of work outside steps before each step, as real jobs do between checkpoints)."""
    run_id, timing = str(step.run_id), input["timing"]
    # Outside any step: runs on every attempt, right after the claim.
    journal.record("enter", run_id, "", step.attempt)
    attempts = []
    for name in STEP_NAMES:
        time.sleep(random.uniform(*timing["pause"]))
        output = step.run(name, step_body, run_id, name, step.attempt, _duration(timing))
        attempts.append(output["attempt"])
    return {"n": input["n"], "attempts": attempts}
