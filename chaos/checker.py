"""The rules a chaos run must keep, checked over its :class:`~chaos.records.Evidence`.

Each rule is a function that yields violations of one named kind, with a message that is an example
to read. :func:`check` runs them all and adds the figures of the run. Pure Python: no Django, no
database (``chaos.journal`` loads the evidence, the harness records the faults).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from chaos.records import (
    JOURNAL_UNAVAILABLE,
    STEP_NAMES,
    WORKER_LOST,
    AttemptRow,
    CancelRecord,
    Evidence,
    JournalEvent,
    WorkerLife,
)

TERMINAL = ("completed", "failed", "cancelled")

VIOLATION_KINDS: dict[str, str] = {
    "run_not_terminal": "1. every run is terminal (completed, failed or cancelled)",
    "run_failed": "1. no run fails unless on purpose (its journal could not be written, or it lost "
    "DURABLY_MAX_RECLAIMS workers)",
    "step_after_checkpoint": "2. no step function started after its checkpoint committed",
    "duplicate_checkpoint": "3. one completed step per name per run",
    "completed_after_cancel": "4. no checkpoint of a cancelled attempt after the cancel's ack",
    "cancel_undone": "4. a run cancelled and never resumed stays cancelled",
    "shared_generation": "5. no two workers (or threads) act under one generation",
    "idempotency_split": "6. one run per idempotency key",
    "worker_not_recovered": "7. every live worker claims again within the deadline of a restart",
    "checkpoint_unjournaled": "a checkpoint's step function started and ended under its attempt",
    "completed_run_incomplete": "a completed run has its five checkpoints",
    "drain_cut_off": "a worker drained by SIGTERM ended its step functions before exiting",
    "worker_crashed": "no worker exits on its own, or with an error after SIGTERM",
    "attempt_history": "one history row per attempt, none beyond the run's attempt, and none for "
    "the attempt that completed a run (the run is its record)",
}

EXAMPLES = 5  # printed per kind; the JSON keeps more
KEPT = 50


@dataclass
class CheckResult:
    violations: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def add(self, kind: str, messages: Iterable[str]) -> None:
        kept = self.violations.setdefault(kind, [])
        for message in messages:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if len(kept) < KEPT:
                kept.append(message)


def check(evidence: Evidence) -> CheckResult:
    """Every rule of :data:`VIOLATION_KINDS`, and the run's figures."""
    result = CheckResult()
    index = _Index(evidence)
    rules: dict[str, Callable[[_Index], Iterator[str]]] = {
        "run_not_terminal": _run_not_terminal,
        "run_failed": _run_failed,
        "step_after_checkpoint": _step_after_checkpoint,
        "duplicate_checkpoint": _duplicate_checkpoint,
        "completed_after_cancel": _completed_after_cancel,
        "cancel_undone": _cancel_undone,
        "shared_generation": _shared_generation,
        "idempotency_split": _idempotency_split,
        "worker_not_recovered": _worker_not_recovered,
        "checkpoint_unjournaled": _checkpoint_unjournaled,
        "completed_run_incomplete": _completed_run_incomplete,
        "drain_cut_off": _drain_cut_off,
        "worker_crashed": _worker_crashed,
        "attempt_history": _attempt_history,
    }
    for kind, rule in rules.items():
        result.counts[kind] = 0
        result.add(kind, rule(index))
    result.figures = figures(index)
    return result


class _Index:
    """The evidence, grouped the ways the rules read it."""

    def __init__(self, evidence: Evidence) -> None:
        self.evidence = evidence
        self.runs = {run.run_id: run for run in evidence.runs}
        self.completed: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.completed_at: dict[tuple[str, str, int], float | None] = {}
        self.failed_steps: set[tuple[str, str, int]] = set()
        for step in evidence.steps:
            if step.status == "completed":
                self.completed[(step.run_id, step.name)].append(step.attempt)
                self.completed_at[(step.run_id, step.name, step.attempt)] = step.completed_at
            elif step.status == "failed":
                self.failed_steps.add((step.run_id, step.name, step.attempt))
        self.starts = [e for e in evidence.journal if e.event == "start"]
        self.ends = {
            (e.run_id, e.step, e.attempt, e.pid, e.thread)
            for e in evidence.journal
            if e.event == "end"
        }
        self.cancels: dict[str, list[CancelRecord]] = defaultdict(list)
        for cancel in evidence.cancels:
            self.cancels[cancel.run_id].append(cancel)
        self.attempts: dict[str, list[AttemptRow]] = defaultdict(list)
        for attempt in evidence.attempts:
            self.attempts[attempt.run_id].append(attempt)
        self.lives: dict[int, WorkerLife] = {}
        for life in sorted(evidence.workers, key=lambda w: w.started_at):
            self.lives[life.pid] = life  # a reused pid: the later process

    def ended(self, start: JournalEvent) -> bool:
        return (start.run_id, start.step, start.attempt, start.pid, start.thread) in self.ends


def _short(run_id: str) -> str:
    return run_id[:8]


# -- 1. every run terminal -------------------------------------------------------------------------


def _run_not_terminal(index: _Index) -> Iterator[str]:
    for run in index.evidence.runs:
        if run.status not in TERMINAL:
            yield f"run {run.run_id} is {run.status} (attempt {run.attempt})"


def _run_failed(index: _Index) -> Iterator[str]:
    for run in index.evidence.runs:
        if run.status != "failed" or run.error_type == JOURNAL_UNAVAILABLE:
            continue
        lost = sum(a.outcome == "lost" for a in index.attempts.get(run.run_id, []))
        if run.error_type == WORKER_LOST and lost >= index.evidence.max_reclaims:
            continue  # the poison-run rule: on purpose
        yield (
            f"run {run.run_id} failed at attempt {run.attempt}: "
            f"{run.error_type}: {run.error_message[:300]}"
        )


# -- the attempt history ---------------------------------------------------------------------------


def _attempt_history(index: _Index) -> Iterator[str]:
    for run in index.evidence.runs:
        rows = index.attempts.get(run.run_id, [])
        numbers = [a.number for a in rows]
        if len(set(numbers)) != len(numbers):
            yield f"run {run.run_id}: attempts recorded twice ({sorted(numbers)})"
        if numbers and max(numbers) > run.attempt:
            yield f"run {run.run_id}: attempt {max(numbers)} recorded, the run is at {run.attempt}"
        if run.status == "completed" and run.attempt in numbers:
            # The attempt that completes a run has no row: the run is its record.
            outcomes = [(a.number, a.outcome) for a in rows]
            yield f"run {run.run_id}: completed at attempt {run.attempt}, history {outcomes}"


# -- 2. no step function started after its checkpoint committed ------------------------------------


def _step_after_checkpoint(index: _Index) -> Iterator[str]:
    for start in index.starts:
        attempts = index.completed.get((start.run_id, start.step))
        if attempts and start.attempt > min(attempts):
            yield (
                f"run {start.run_id} step {start.step!r}: started by attempt {start.attempt} "
                f"(pid {start.pid}) after attempt {min(attempts)} had checkpointed it"
            )


# -- 3. one completed step per name ----------------------------------------------------------------


def _duplicate_checkpoint(index: _Index) -> Iterator[str]:
    for (run_id, name), attempts in index.completed.items():
        if len(attempts) > 1:
            yield f"run {run_id} step {name!r}: {len(attempts)} completed rows (attempts {attempts})"


# -- 4. nothing completed after an acknowledged cancel ---------------------------------------------


def _completed_after_cancel(index: _Index) -> Iterator[str]:
    for cancel in index.evidence.cancels:
        for name in STEP_NAMES:
            completed_at = index.completed_at.get((cancel.run_id, name, cancel.attempt))
            if completed_at is not None and completed_at > cancel.ack_at:
                yield (
                    f"run {cancel.run_id} step {name!r}: checkpoint of attempt {cancel.attempt} "
                    f"completed {completed_at - cancel.ack_at:.3f}s after the cancel was "
                    f"acknowledged (from {cancel.from_status})"
                )


def _cancel_undone(index: _Index) -> Iterator[str]:
    last: dict[str, tuple[int, str]] = {}
    for cancel in index.evidence.cancels:
        last[cancel.run_id] = max(last.get(cancel.run_id, (-1, "")), (cancel.seq, "cancel"))
    for resume in index.evidence.resumes:
        last[resume.run_id] = max(last.get(resume.run_id, (-1, "")), (resume.seq, "resume"))
    for run_id, (_seq, operation) in last.items():
        run = index.runs.get(run_id)
        if operation == "cancel" and (run is None or run.status != "cancelled"):
            yield (
                f"run {run_id} was cancelled and never resumed, but is "
                f"{run.status if run else 'gone'}"
            )


# -- 5. no two workers acting under one generation -------------------------------------------------


def _shared_generation(index: _Index) -> Iterator[str]:
    actors: dict[tuple[str, int], set[tuple[int, int]]] = defaultdict(set)
    starts: dict[tuple[str, str, int], int] = defaultdict(int)
    for event in index.evidence.journal:
        if event.event in ("enter", "start"):
            actors[(event.run_id, event.attempt)].add((event.pid, event.thread))
        if event.event == "start":
            starts[(event.run_id, event.step, event.attempt)] += 1
    for (run_id, attempt), who in actors.items():
        if len(who) > 1:
            listed = ", ".join(f"pid {pid} thread {thread}" for pid, thread in sorted(who))
            yield f"run {run_id} attempt {attempt} was executed by {listed}"
    for (run_id, name, attempt), count in starts.items():
        if count > 1 and len(actors[(run_id, attempt)]) == 1:
            yield f"run {run_id} step {name!r} started {count} times under attempt {attempt}"


# -- 6. one run per idempotency key ----------------------------------------------------------------


def _idempotency_split(index: _Index) -> Iterator[str]:
    returned: dict[str, set[str]] = defaultdict(set)
    for trigger in index.evidence.idempotent:
        returned[trigger.key].add(trigger.run_id)
    stored: dict[str, list[str]] = defaultdict(list)
    for run in index.evidence.runs:
        if run.idempotency_key is not None:
            stored[run.idempotency_key].append(run.run_id)
    for key, run_ids in returned.items():
        if len(run_ids) > 1:
            yield f"key {key!r}: concurrent triggers returned {len(run_ids)} runs {sorted(run_ids)}"
        if len(stored.get(key, [])) != 1:
            yield f"key {key!r}: the table holds {len(stored.get(key, []))} runs"


# -- 7. workers recovered after each restart -------------------------------------------------------


def _recovery_deadline(life: WorkerLife, since: float, seconds: float) -> float:
    """``since + seconds``, plus the time the worker spent stopped (SIGSTOP) meanwhile."""
    deadline = since + seconds
    for _ in range(3):  # the stopped time within a longer window: converges at once in practice
        deadline = since + seconds + life.stopped_between(since, deadline)
    return deadline


def recoveries(index: _Index) -> Iterator[tuple[int, int, float | None, str]]:
    """``(restart number, pid, seconds to its first claim after the restart or None, why)`` for
    every worker alive when the server came back; ``why`` is ``""`` when it is checked, else the
    reason it is not."""
    evidence = index.evidence
    claims: dict[int, list[float]] = defaultdict(list)
    for event in evidence.journal:
        if event.event in ("enter", "start"):
            claims[event.pid].append(event.created_at)
    for number, restart in enumerate(evidence.restarts):
        if restart.up_at is None:
            yield number, 0, None, "server never came back"
            continue
        up = restart.up_at
        for life in evidence.workers:
            if not life.alive_at(up):
                continue
            deadline = _recovery_deadline(life, up, evidence.recovery_deadline)
            first = min((t for t in claims[life.pid] if up <= t <= deadline), default=None)
            why = ""
            if life.ended_at is not None and life.ended_at < deadline:
                why = f"exited ({life.end})"
            elif life.term_at is not None and life.term_at < deadline:
                why = "draining"
            elif deadline > evidence.backlog_until:
                why = "no backlog"
            yield number, life.pid, None if first is None else first - up, why


def _worker_not_recovered(index: _Index) -> Iterator[str]:
    for number, pid, seconds, why in recoveries(index):
        if why == "server never came back":
            yield f"restart {number}: the server did not come back"
        elif seconds is None and not why:
            restart = index.evidence.restarts[number]
            yield (
                f"restart {number} ({restart.mode}): worker pid {pid} claimed nothing within "
                f"{index.evidence.recovery_deadline:.0f}s of the server coming back"
            )


# -- consistency and worker exits ------------------------------------------------------------------


def _checkpoint_unjournaled(index: _Index) -> Iterator[str]:
    started = {(e.run_id, e.step, e.attempt) for e in index.starts}
    ended = {(run_id, step, attempt) for run_id, step, attempt, _pid, _thread in index.ends}
    for (run_id, name), attempts in index.completed.items():
        for attempt in attempts:
            if (run_id, name, attempt) not in started or (run_id, name, attempt) not in ended:
                yield (
                    f"run {run_id} step {name!r}: checkpoint of attempt {attempt} without a "
                    "journal start and end of that attempt"
                )


def _completed_run_incomplete(index: _Index) -> Iterator[str]:
    for run in index.evidence.runs:
        if run.status == "completed":
            missing = [name for name in STEP_NAMES if (run.run_id, name) not in index.completed]
            if missing:
                yield f"run {run.run_id} completed without checkpoints of {missing}"


def _drain_cut_off(index: _Index) -> Iterator[str]:
    grace = index.evidence.grace_period
    for life in index.evidence.workers:
        if life.end not in ("terminated", "stopped") or life.exit_code != 0:
            continue
        if life.term_at is None or life.ended_at is None or life.ended_at - life.term_at >= grace:
            continue  # the grace period ran out: handing back what still runs is allowed
        for start in index.starts:
            if start.pid != life.pid or index.ended(start):
                continue
            if (start.run_id, start.step, start.attempt) in index.failed_steps:
                continue  # the step raised (its journal end could not be written)
            yield (
                f"worker pid {life.pid} exited {life.ended_at - life.term_at:.1f}s after SIGTERM "
                f"(grace {grace:.0f}s) with step {start.step!r} of run {start.run_id} attempt "
                f"{start.attempt} unfinished"
            )


def _worker_crashed(index: _Index) -> Iterator[str]:
    for life in index.evidence.workers:
        if life.end == "crashed" or (
            life.end in ("terminated", "stopped") and life.exit_code not in (0, None)
        ):
            yield f"worker pid {life.pid} (slot {life.slot}) exited with code {life.exit_code}"


# -- figures ---------------------------------------------------------------------------------------


def figures(index: _Index) -> dict[str, Any]:
    evidence = index.evidence
    statuses: dict[str, int] = defaultdict(int)
    for run in evidence.runs:
        statuses[run.status] += 1
    checkpoints = sum(len(attempts) for attempts in index.completed.values())
    starts = len(index.starts)
    unended = sum(1 for start in index.starts if not index.ended(start))
    return {
        "runs": len(evidence.runs),
        "runs_by_status": dict(sorted(statuses.items())),
        "runs_failed_on_purpose": sum(
            1 for r in evidence.runs if r.status == "failed" and r.error_type == JOURNAL_UNAVAILABLE
        ),
        "runs_with_concurrency_key": sum(1 for r in evidence.runs if r.concurrency_key),
        "concurrency_keys": len({r.concurrency_key for r in evidence.runs if r.concurrency_key}),
        "runs_reattempted": sum(1 for r in evidence.runs if r.attempt > 1),
        "attempts_by_outcome": dict(sorted(Counter(a.outcome for a in evidence.attempts).items())),
        "runs_failed_for_lost_workers": sum(
            1 for r in evidence.runs if r.status == "failed" and r.error_type == WORKER_LOST
        ),
        "max_attempt": max((r.attempt for r in evidence.runs), default=0),
        "idempotency_keys": len({t.key for t in evidence.idempotent}),
        "idempotent_triggers": len(evidence.idempotent),
        "checkpoints": checkpoints,
        "failed_step_rows": len(index.failed_steps),
        "journal_enters": sum(1 for e in evidence.journal if e.event == "enter"),
        "journal_starts": starts,
        "journal_ends": len(index.ends),
        "re_executions_before_checkpoint": starts - checkpoints,
        "starts_cut_off": unended,
        "starts_ended_not_checkpointed": starts - unended - checkpoints,
        "cancels_acknowledged": len(evidence.cancels),
        "cancels_of_leased_runs": sum(1 for c in evidence.cancels if c.from_status == "leased"),
        "resumes": len(evidence.resumes),
        "starts_after_cancel": starts_after_cancel(index),
        "restarts": restart_figures(index),
        "workers_started": len(evidence.workers),
        "worker_ends": _worker_ends(evidence.workers),
        "concurrency_key_overlaps": key_overlaps(index),
        "attempts_overlapping_in_one_worker": attempts_overlapping_in_one_worker(index),
    }


def _worker_ends(workers: list[WorkerLife]) -> dict[str, int]:
    ends: dict[str, int] = defaultdict(int)
    for life in workers:
        ends[life.end] += 1
    return dict(sorted(ends.items()))


def starts_after_cancel(index: _Index) -> dict[str, Any]:
    """Step functions of a cancelled attempt that started after the cancel was acknowledged.

    Not violations (a step may start within the time the worker takes to hear of the cancel, or a
    worker frozen between its check and the step may start it late), but classified:
    ``frozen`` (the worker was SIGSTOPped around then), ``db_fault`` (a restart or a terminated
    connection around then, so the news could not arrive), ``latency`` (within a renewal interval
    plus half a second), and ``unexplained``.
    """
    evidence = index.evidence
    lease = evidence.lease_seconds
    latency = lease / 3 + 0.5
    outages = [(r.started_at, r.up_at or r.done_at) for r in evidence.restarts]
    outages += [(t.at, t.at) for t in evidence.terminations]
    classes: dict[str, int] = {"latency": 0, "frozen": 0, "db_fault": 0, "unexplained": 0}
    delays: list[float] = []
    examples: list[str] = []
    for start in index.starts:
        for cancel in index.cancels.get(start.run_id, ()):
            if start.attempt != cancel.attempt or start.at <= cancel.ack_at:
                continue
            delay = start.at - cancel.ack_at
            delays.append(delay)
            window = (cancel.ack_at - lease, start.at)
            life = index.lives.get(start.pid)
            if life is not None and life.stopped_between(*window) > 0:
                kind = "frozen"
            elif any(a <= window[1] and b >= window[0] for a, b in outages):
                kind = "db_fault"
            elif delay <= latency:
                kind = "latency"
            else:
                kind = "unexplained"
                if len(examples) < EXAMPLES:
                    examples.append(
                        f"run {start.run_id} step {start.step!r} attempt {start.attempt} started "
                        f"{delay:.3f}s after the cancel (pid {start.pid})"
                    )
            classes[kind] += 1
            break
    return {
        "total": len(delays),
        **classes,
        "max_delay_s": round(max(delays), 3) if delays else None,
        "unexplained_examples": examples,
    }


def restart_figures(index: _Index) -> list[dict[str, Any]]:
    by_restart: dict[int, dict[str, Any]] = {}
    for number, restart in enumerate(index.evidence.restarts):
        by_restart[number] = {
            "mode": restart.mode,
            "started_at": round(restart.started_at, 3),
            "command_s": round(restart.done_at - restart.started_at, 2),
            "down_s": None
            if restart.up_at is None
            else round(restart.up_at - restart.started_at, 2),
            "recovered_s": {},
            "not_checked": {},
        }
    for number, pid, seconds, why in recoveries(index):
        figure = by_restart[number]
        if why:
            figure["not_checked"][str(pid)] = why
        elif seconds is not None:
            figure["recovered_s"][str(pid)] = round(seconds, 2)
    for figure in by_restart.values():
        times = list(figure["recovered_s"].values())
        figure["max_recovery_s"] = max(times) if times else None
    return list(by_restart.values())


def attempts_overlapping_in_one_worker(index: _Index) -> int:
    """Pairs of attempts of one run that one worker process executed at overlapping times: it claimed
    the run again (after a cancel and resume, or after a pause past its lease) while a thread of
    its own was still in the earlier attempt. Legal (the earlier attempt is fenced out), but the
    situation in which a worker that tracks its runs by id loses track of one (issue 12, item 2)."""
    spans: dict[tuple[str, int, int], list[float]] = {}
    for event in index.evidence.journal:
        span = spans.setdefault((event.run_id, event.pid, event.attempt), [event.at, event.at])
        span[0], span[1] = min(span[0], event.at), max(span[1], event.at)
    by_worker: dict[tuple[str, int], list[list[float]]] = defaultdict(list)
    for (run_id, pid, _attempt), span in spans.items():
        by_worker[(run_id, pid)].append(span)
    overlaps = 0
    for items in by_worker.values():
        items.sort()
        overlaps += sum(1 for a, b in zip(items, items[1:], strict=False) if b[0] < a[1])
    return overlaps


def key_overlaps(index: _Index) -> int:
    """Step functions of two runs with the same concurrency key that ran at overlapping times (legal
    when a lease expired under a frozen or cut-off worker; counted, not a violation)."""
    keys = {run.run_id: run.concurrency_key for run in index.evidence.runs if run.concurrency_key}
    opened: dict[tuple[str, str, int, int, int], float] = {}
    spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for event in sorted(index.evidence.journal, key=lambda e: e.at):
        if event.run_id not in keys or event.event == "enter":
            continue
        ident = (event.run_id, event.step, event.attempt, event.pid, event.thread)
        if event.event == "start":
            opened[ident] = event.at
        elif ident in opened:
            spans[keys[event.run_id]].append((opened.pop(ident), event.at, event.run_id))
    overlaps = 0
    for items in spans.values():
        items.sort()
        for i, (_start, end, run_id) in enumerate(items):
            for other_start, _other_end, other_run in items[i + 1 :]:
                if other_start >= end:
                    break
                if other_run != run_id:
                    overlaps += 1
    return overlaps
