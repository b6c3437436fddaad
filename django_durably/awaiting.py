"""What a durable wait asks for, and how it was settled: plain data shared by the job's
:class:`~django_durably.context.StepContext` (which builds a :class:`WaitRequest`) and the store
that settles it against the database (``leases.waiting``). No models here, so the context stays
importable before Django is set up.

A wait's record is a ``waiting`` step row whose output is :meth:`WaitRequest.describe` with its
deadline, ``until``, computed once from the database clock the first time the run waits there; every
replay waits for the same deadline. When the wait is over its completed row is the checkpoint:
``{"until": ...}`` for a sleep, ``{"payload": ...}`` for a signal, ``{"outputs": [...]}`` for child
runs, or ``{"timed_out": true, "until": ...}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.utils.dateparse import parse_datetime

WaitKind = Literal["sleep", "signal", "runs"]


@dataclass(frozen=True)
class WaitRequest:
    """A wait reached by a job: its kind, its step (name and index), and its deadline, given as
    ``duration`` seconds from the database clock's now or as an absolute ``until`` (neither: no
    deadline)."""

    kind: WaitKind
    step: str
    index: int
    duration: float | None = None
    until: datetime | None = None
    signal: str | None = None
    runs: tuple[UUID, ...] = ()

    def describe(self, until: datetime | None) -> dict[str, Any]:
        """The run's ``waiting_for`` and the wait record's output."""
        described: dict[str, Any] = {"kind": self.kind, "step": self.step}
        if self.kind == "signal":
            described["signal"] = self.signal
        elif self.kind == "runs":
            described["runs"] = [str(run_id) for run_id in self.runs]
        described["until"] = None if until is None else until.isoformat()
        return described


@dataclass(frozen=True)
class WaitResult:
    """A wait that is over: ``done`` (``value`` is the signal's payload or the child runs' outputs),
    ``timed_out`` (its deadline passed first), or ``failed`` (child runs failed or were cancelled:
    ``failed`` maps their ids to their statuses, ``errors`` to their errors)."""

    status: Literal["done", "timed_out", "failed"]
    value: Any = None
    until: datetime | None = None
    failed: dict[UUID, str] = field(default_factory=dict)
    errors: dict[UUID, Any] = field(default_factory=dict)


def checkpoint_of(result: WaitResult) -> dict[str, Any]:
    """The completed step output that replays ``result`` (``done`` or ``timed_out``)."""
    until = None if result.until is None else result.until.isoformat()
    if result.status == "timed_out":
        return {"timed_out": True, "until": until}
    return {"value": result.value, "until": until}


def result_of(checkpoint: Any) -> WaitResult:
    """The :class:`WaitResult` a completed wait's checkpoint stands for."""
    stored = checkpoint if isinstance(checkpoint, dict) else {}
    until = parse_until(stored.get("until"))
    if stored.get("timed_out"):
        return WaitResult("timed_out", until=until)
    return WaitResult("done", stored.get("value"), until=until)


def parse_until(value: Any) -> datetime | None:
    """A stored ``until`` (ISO text) back as a datetime."""
    if not value:
        return None
    return parse_datetime(str(value))
