"""The chaos suite's checker (``chaos.checker``) on a tiny synthetic run: a clean one passes, and each
kind of violation, put in alone, is reported under its own kind and no other.

The chaos suite itself (``python -m chaos``) is not part of the test run; this keeps its checker
honest without starting a process.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import pytest

from chaos.checker import VIOLATION_KINDS, check
from chaos.records import (
    JOURNAL_UNAVAILABLE,
    STEP_NAMES,
    WORKER_LOST,
    AttemptRow,
    CancelRecord,
    Evidence,
    IdempotentTrigger,
    JournalEvent,
    Restart,
    ResumeRecord,
    RunRow,
    StepRow,
    WorkerLife,
)

pytestmark = pytest.mark.slow

RUN_A, RUN_B, RUN_C, RUN_D = (f"{n}" * 8 + "-0000-0000-0000-000000000000" for n in "abcd")
W1, W2, W3 = 101, 202, 303  # W1 runs B and stops at the end; W2 runs A and is killed; W3 runs C


def _steps_of(run_id: str, pid: int, begin: float) -> tuple[list[JournalEvent], list[StepRow]]:
    """A run's five steps by ``pid`` from ``begin``, half a second each, all under attempt 1."""
    events = [JournalEvent("enter", run_id, "", 1, pid, pid + 1, begin, begin)]
    rows = []
    for position, name in enumerate(STEP_NAMES):
        start = begin + 0.5 * position + 0.01
        end = start + 0.4
        events.append(JournalEvent("start", run_id, name, 1, pid, pid + 1, start, start))
        events.append(JournalEvent("end", run_id, name, 1, pid, pid + 1, end, end))
        rows.append(StepRow(run_id, name, "completed", 1, end + 0.01))
    return events, rows


def clean_evidence() -> Evidence:
    a_events, a_steps = _steps_of(RUN_A, W2, 1000.0)
    b_events, b_steps = _steps_of(RUN_B, W1, 1005.5)
    c_events = [
        JournalEvent("enter", RUN_C, "", 1, W3, W3 + 1, 1007.5, 1007.5),
        JournalEvent("start", RUN_C, "one", 1, W3, W3 + 1, 1007.6, 1007.6),
    ]
    return Evidence(
        runs=[
            RunRow(RUN_A, "completed", 1, idempotency_key="idem-1"),
            RunRow(RUN_B, "completed", 1, concurrency_key="key-0"),
            RunRow(RUN_C, "failed", 1, error_type=JOURNAL_UNAVAILABLE, error_message="down"),
        ],
        steps=[*a_steps, *b_steps, StepRow(RUN_C, "one", "failed", 1, 1009.0)],
        journal=sorted([*a_events, *b_events, *c_events], key=lambda e: e.at),
        cancels=[CancelRecord(1, RUN_B, ack_at=1004.0, attempt=0, from_status="pending")],
        resumes=[ResumeRecord(2, RUN_B, at=1004.5)],
        idempotent=[
            IdempotentTrigger("idem-1", RUN_A, "created"),
            IdempotentTrigger("idem-1", RUN_A, "idempotent"),
        ],
        restarts=[Restart("fast", started_at=1004.0, done_at=1005.0, up_at=1005.0)],
        workers=[
            WorkerLife(0, W1, 990.0, 1100.0, "stopped", 0, term_at=1099.0),
            WorkerLife(1, W2, 990.0, 1008.0, "killed"),
            WorkerLife(2, W3, 990.0, 1100.0, "stopped", 0, term_at=1099.0, stops=[(1006, 1007)]),
        ],
        lease_seconds=2.0,
        grace_period=30.0,
        recovery_deadline=30.0,
        attempts=[AttemptRow(RUN_C, 1, "failed", JOURNAL_UNAVAILABLE)],
    )


def _replace_run(evidence: Evidence, run_id: str, **changes: object) -> None:
    evidence.runs = [replace(r, **changes) if r.run_id == run_id else r for r in evidence.runs]  # type: ignore[arg-type]


def _drop_journal(evidence: Evidence, run_id: str, step: str, event: str) -> None:
    evidence.journal = [
        e
        for e in evidence.journal
        if not (e.run_id == run_id and e.step == step and e.event == event)
    ]


def _not_terminal(e: Evidence) -> None:
    _replace_run(e, RUN_A, status="leased")


def _failed(e: Evidence) -> None:
    _replace_run(e, RUN_A, status="failed", error_type="builtins.ValueError", error_message="x")


def _step_after_checkpoint(e: Evidence) -> None:
    e.journal += [
        JournalEvent("enter", RUN_B, "", 2, W3, W3 + 1, 1020.0, 1020.0),
        JournalEvent("start", RUN_B, "three", 2, W3, W3 + 1, 1020.1, 1020.1),
        JournalEvent("end", RUN_B, "three", 2, W3, W3 + 1, 1020.3, 1020.3),
    ]


def _duplicate_checkpoint(e: Evidence) -> None:
    e.steps.append(StepRow(RUN_A, "two", "completed", 1, 1002.0))


def _completed_after_cancel(e: Evidence) -> None:
    e.cancels.append(CancelRecord(3, RUN_A, ack_at=1001.5, attempt=1, from_status="leased"))
    e.resumes.append(ResumeRecord(4, RUN_A, at=1001.6))


def _cancel_undone(e: Evidence) -> None:
    e.cancels.append(CancelRecord(3, RUN_A, ack_at=1004.0, attempt=1, from_status="leased"))


def _shared_generation(e: Evidence) -> None:
    e.journal += [
        JournalEvent("start", RUN_A, "three", 1, W3, W3 + 1, 1001.2, 1001.2),
        JournalEvent("end", RUN_A, "three", 1, W3, W3 + 1, 1001.4, 1001.4),
    ]


def _idempotency_split(e: Evidence) -> None:
    e.idempotent.append(IdempotentTrigger("idem-1", RUN_B, "created"))
    _replace_run(e, RUN_B, idempotency_key="idem-1")


def _worker_not_recovered(e: Evidence) -> None:
    e.restarts.append(Restart("immediate", started_at=1040.0, done_at=1045.0, up_at=1045.0))


def _checkpoint_unjournaled(e: Evidence) -> None:
    _drop_journal(e, RUN_A, "four", "end")


def _completed_run_incomplete(e: Evidence) -> None:
    e.steps = [s for s in e.steps if not (s.run_id == RUN_A and s.name == "five")]


def _drain_cut_off(e: Evidence) -> None:
    e.runs.append(RunRow(RUN_D, "cancelled", 1))
    e.journal += [
        JournalEvent("enter", RUN_D, "", 1, W1, W1 + 1, 1010.0, 1010.0),
        JournalEvent("start", RUN_D, "one", 1, W1, W1 + 1, 1010.1, 1010.1),
    ]


def _worker_crashed(e: Evidence) -> None:
    e.workers[2].exit_code = 1


def _attempt_history(e: Evidence) -> None:
    e.attempts.append(AttemptRow(RUN_B, 1, "completed"))  # a completed run is its own record


MUTATIONS: dict[str, Callable[[Evidence], None]] = {
    "run_not_terminal": _not_terminal,
    "run_failed": _failed,
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


def test_checker__passes_a_clean_run_and_counts_its_figures():
    result = check(clean_evidence())

    assert result.ok, result.violations
    assert set(result.counts) == set(VIOLATION_KINDS)
    figures = result.figures
    assert figures["runs"] == 3
    assert figures["runs_failed_on_purpose"] == 1
    assert figures["checkpoints"] == 10
    assert figures["journal_starts"] == 11
    assert figures["re_executions_before_checkpoint"] == 1  # run C's step, failed on purpose
    # W3 was stopped for a second of its window; W2 was killed within it.
    assert figures["restarts"][0]["recovered_s"] == {str(W1): 0.5, str(W3): 2.5}
    assert figures["restarts"][0]["not_checked"] == {str(W2): "exited (killed)"}


def test_checker__every_kind_has_a_mutation():
    assert set(MUTATIONS) == set(VIOLATION_KINDS)


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_checker__reports_each_violation_under_its_own_kind(kind: str):
    evidence = copy.deepcopy(clean_evidence())
    MUTATIONS[kind](evidence)

    result = check(evidence)

    assert not result.ok
    flagged = {name for name, count in result.counts.items() if count}
    assert flagged == {kind}, result.violations
    assert result.violations[kind]  # with an example to read


@pytest.mark.parametrize(("lost", "violations"), [(5, 0), (4, 1)])
def test_checker__a_run_failed_for_losing_its_workers_is_on_purpose_only_at_the_limit(
    lost: int, violations: int
):
    evidence = clean_evidence()
    _replace_run(evidence, RUN_A, status="failed", attempt=lost + 1, error_type=WORKER_LOST)
    evidence.attempts = [a for a in evidence.attempts if a.run_id != RUN_A]
    evidence.attempts += [AttemptRow(RUN_A, n, "lost", WORKER_LOST) for n in range(1, lost + 1)]
    evidence.attempts.append(AttemptRow(RUN_A, lost + 1, "failed", WORKER_LOST))

    result = check(evidence)

    assert result.counts["run_failed"] == violations
    assert sum(result.counts.values()) == violations
    assert result.figures["runs_failed_for_lost_workers"] == 1
