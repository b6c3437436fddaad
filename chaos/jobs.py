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


def step_body(run_id: str, name: str, attempt: int, low: float, high: float) -> dict[str, Any]:
    """A step function: journal the start, take a random short time, journal the end."""
    journal.record("start", run_id, name, attempt)
    time.sleep(random.uniform(low, high))  # noqa: S311 - not cryptography
    journal.record("end", run_id, name, attempt)
    return {"attempt": attempt}


@job(name="chaos.five_steps")
def five_steps(step: StepContext, input: dict[str, Any]) -> dict[str, Any]:
    """``input``: ``{"n": serial, "low": seconds, "high": seconds}`` (a step's duration range)."""
    run_id = str(step.run_id)
    # Outside any step: runs on every attempt, right after the claim.
    journal.record("enter", run_id, "", step.attempt)
    attempts = [
        step.run(name, step_body, run_id, name, step.attempt, input["low"], input["high"])[
            "attempt"
        ]
        for name in STEP_NAMES
    ]
    return {"n": input["n"], "attempts": attempts}
