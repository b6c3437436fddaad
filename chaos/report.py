"""Printing a chaos run's figures and verdict, and writing them as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chaos.checker import EXAMPLES, VIOLATION_KINDS, CheckResult


def summary(config: dict[str, Any], faults: dict[str, int], result: CheckResult) -> dict[str, Any]:
    return {
        "config": config,
        "faults": dict(sorted(faults.items())),
        "figures": result.figures,
        "violations": {
            kind: {
                "rule": VIOLATION_KINDS[kind],
                "count": result.counts.get(kind, 0),
                "examples": result.violations.get(kind, []),
            }
            for kind in VIOLATION_KINDS
        },
        "ok": result.ok,
    }


def write(document: dict[str, Any], directory: Path, stamp: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stamp}.json"
    text = json.dumps(document, indent=2, sort_keys=False, default=str)
    path.write_text(text + "\n")
    (directory / "latest.json").write_text(text + "\n")
    return path


def _line(label: str, value: Any) -> None:
    print(f"  {label:<38} {value}")


def show(document: dict[str, Any]) -> None:
    figures = document["figures"]
    config = document["config"]
    print()
    print(
        f"chaos run {config['started']}: {config['minutes']:g} min of faults, "
        f"{config['workers']} workers x {config['concurrency']}, lease {config['lease_seconds']:g}s, "
        f"seed {config['seed']}, against {config['server']}"
    )
    print("runs")
    _line("runs", f"{figures['runs']:,} {figures['runs_by_status']}")
    _line("failed on purpose (journal down)", figures["runs_failed_on_purpose"])
    _line(
        "with a concurrency key",
        f"{figures['runs_with_concurrency_key']:,} over {figures['concurrency_keys']:,} keys",
    )
    _line(
        "idempotency keys",
        f"{figures['idempotency_keys']:,} ({figures['idempotent_triggers']:,} concurrent triggers)",
    )
    _line("runs claimed more than once", f"{figures['runs_reattempted']:,}")
    _line("highest attempt", figures["max_attempt"])
    print("steps")
    _line("checkpoints (completed steps)", f"{figures['checkpoints']:,}")
    _line("step functions started", f"{figures['journal_starts']:,}")
    _line("re-executions before a checkpoint", f"{figures['re_executions_before_checkpoint']:,}")
    _line("  of which cut off (no end)", f"{figures['starts_cut_off']:,}")
    _line("  of which ended, checkpoint refused", f"{figures['starts_ended_not_checkpointed']:,}")
    _line("failed step rows", figures["failed_step_rows"])
    _line("concurrency-key overlaps (legal)", figures["concurrency_key_overlaps"])
    _line(
        "attempts overlapping in one worker (legal)",
        figures["attempts_overlapping_in_one_worker"],
    )
    print("faults")
    for kind, count in document["faults"].items():
        _line(kind, count)
    _line("worker processes started", figures["workers_started"])
    _line("worker ends", figures["worker_ends"])
    after = figures["starts_after_cancel"]
    _line(
        "step starts after an acked cancel",
        f"{after['total']} (latency {after['latency']}, frozen {after['frozen']}, db fault "
        f"{after['db_fault']}, unexplained {after['unexplained']}; max {after['max_delay_s']}s)",
    )
    for example in after["unexplained_examples"]:
        print(f"      {example}")
    for number, restart in enumerate(figures["restarts"]):
        _line(
            f"restart {number} -m {restart['mode']}",
            f"down {restart['down_s']}s, workers claimed again after max "
            f"{restart['max_recovery_s']}s ({len(restart['recovered_s'])} checked, "
            f"{len(restart['not_checked'])} not: {sorted(set(restart['not_checked'].values()))})",
        )
    print("rules")
    for kind, found in document["violations"].items():
        mark = "ok  " if found["count"] == 0 else "FAIL"
        print(f"  [{mark}] {found['rule']}: {found['count']} ({kind})")
        for example in found["examples"][:EXAMPLES]:
            print(f"          {example}")
    print("verdict:", "no violations" if document["ok"] else "VIOLATIONS FOUND")
