"""``python -m bench``: run the benchmarks against a local PostgreSQL, print a table, write JSON.

Benchmarks (``--only``, comma-separated, default all, in this order):

  pgbench  the machine's ceiling: pgbench single-row UPDATE transactions/s with 1 and 4 clients
  enqueue  trigger() one by one, and trigger_many() in batches of 100 and 1,000
  steps    runs of 1,000 trivial steps in-process, each after 3 s of pgbench (1 client): median
           steps/s and ratio over 5 rounds, transactions and statements per step
  drain    N no-op runs drained by W durably_worker processes, and the bare SQL queue ceiling
  wakeup   trigger -> job entered with an idle worker: LISTEN, poll-only, and the SQL queue floor;
           send_signal -> the waiting run's wait returned; a child's end -> its parent's wait
           returned (LISTEN)
  backlog  claim time, claim plan and drain rate with few vs many finished runs in the table, then
           with many waiting runs too; the wake-up of due timers (plans, time) with and without them

Results go to bench/results/<timestamp>.json and bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCHMARKS = ["pgbench", "enqueue", "steps", "drain", "wakeup", "backlog"]

# name: (full run, --quick)
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "runs": (10_000, 1_000),
    "workers": ("1,2,4", "1,4"),
    "concurrency": (4, 4),
    "steps": (1_000, 200),
    "step_rounds": (7, 3),
    "step_pgbench_seconds": (2, 1),
    "pgbench_seconds": (10, 3),
    "enqueue_single": (2_000, 200),
    "enqueue_many": (20_000, 2_000),
    "samples": (200, 30),
    "poll_samples": (20, 5),
    "backlog": (1_000_000, 100_000),
    "backlog_small": (1_000, 1_000),
    "pending": (100_000, 20_000),
    "backlog_drain": (5_000, 1_000),
    "claims": (200, 50),
    "waiting": (1_000_000, 20_000),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--only", default=",".join(BENCHMARKS), help="benchmarks to run (default: all)")
    add("--quick", action="store_true", help="a small smoke run (smaller figures, noisier)")
    add("--runs", type=int, help="drain: no-op runs per measurement (default 10,000)")
    add("--workers", help="drain: worker process counts, comma-separated (default 1,2,4)")
    add("--concurrency", type=int, help="drain: --concurrency of each worker (default 4)")
    add("--steps", type=int, help="steps: steps in the run (default 1,000)")
    add("--step-rounds", type=int, help="steps: rounds of pgbench, steps, pgbench (default 7)")
    add(
        "--step-pgbench-seconds",
        type=int,
        help="steps: seconds of each pgbench (1 client) of a round (default 2)",
    )
    add("--pgbench-seconds", type=int, help="pgbench: seconds per client count (default 10)")
    add("--enqueue-single", type=int, help="enqueue: trigger() calls (default 2,000)")
    add("--enqueue-many", type=int, help="enqueue: runs per trigger_many batch size (20,000)")
    add(
        "--samples",
        type=int,
        help="wakeup: samples with LISTEN, of a trigger, a signal and a child's end (default 200)",
    )
    add("--poll-samples", type=int, help="wakeup: samples poll-only (default 20)")
    add("--backlog", type=int, help="backlog: finished runs, large table (default 1,000,000)")
    add("--backlog-small", type=int, help="backlog: finished runs, small table (default 1,000)")
    add("--pending", type=int, help="backlog: pending runs in both tables (default 100,000)")
    add("--backlog-drain", type=int, help="backlog: runs drained by 4 workers (default 5,000)")
    add(
        "--claims",
        type=int,
        help="backlog: timed single claims, and timed wake-ups of each kind (default 200)",
    )
    add(
        "--waiting",
        type=int,
        help="backlog: waiting runs in a third table, the large one seeded again with them, 0: "
        "no third table (default 1,000,000)",
    )
    add("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {BENCHMARKS}")
    args.only = [name for name in BENCHMARKS if name in args.only]
    return args


class Suite:
    """Runs the selected benchmarks in order and collects rows, details and errors."""

    def __init__(self, args: argparse.Namespace) -> None:
        from bench.report import Row

        self.args = args
        self.rows: list[Row] = []
        self.details: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.notes: list[str] = []
        self.pgbench: dict[int, float] = {}

    def run(self) -> None:
        from bench.database import close_django_connections

        for name in self.args.only:
            step: Callable[[], None] = getattr(self, f"run_{name}")
            started = time.monotonic()
            print(f"-- {name} ...", flush=True)
            try:
                # A fresh connection per benchmark: one broken earlier (a server restart) is gone.
                close_django_connections()
                step()
            except KeyboardInterrupt:
                self.errors[name] = "interrupted"
                raise
            except Exception as exc:
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                print(f"   FAILED: {self.errors[name]}", flush=True)
                traceback.print_exc()
            print(f"   ({time.monotonic() - started:.0f}s)", flush=True)

    def add(self, *args: Any, **kwargs: Any) -> None:
        from bench.report import Row

        self.rows.append(Row(*args, **kwargs))

    def pgbench_ratios(self, figure: float) -> dict[str, Any]:
        from bench.report import ratio

        return {f"ratio_pgbench_{c}c": ratio(figure, tps) for c, tps in self.pgbench.items()}

    # -- benchmarks --------------------------------------------------------------------------

    def run_pgbench(self) -> None:
        from bench import pgbench

        results = pgbench.measure([1, 4], self.args.pgbench_seconds)
        self.details["pgbench"] = results
        for result in results:
            self.pgbench[result["clients"]] = result["tps"]
            self.add(
                "pgbench ceiling",
                f"{result['clients']} client(s), 1-row UPDATE/tx, {result['seconds']}s",
                result["tps"],
                "tx/s",
            )

    def run_enqueue(self) -> None:
        from bench import enqueue
        from bench.report import ratio

        single = enqueue.single(self.args.enqueue_single)
        many = [enqueue.many(self.args.enqueue_many, batch) for batch in (100, 1000)]
        self.details["enqueue"] = {"single": single, "many": many}
        c1 = self.pgbench.get(1)
        self.add(
            "enqueue trigger()",
            f"{single['runs']:,} calls, 1 tx each",
            single["runs_per_s"],
            "runs/s",
            ratio(single["runs_per_s"], c1),
            "pgbench 1c" if c1 else "",
            extra=self.pgbench_ratios(single["runs_per_s"]),
        )
        for result in many:
            self.add(
                "enqueue trigger_many()",
                f"batch {result['batch']:,}, {result['runs']:,} runs",
                result["runs_per_s"],
                "runs/s",
                ratio(result["runs_per_s"], c1),
                "pgbench 1c" if c1 else "",
                extra={**self.pgbench_ratios(result["runs_per_s"]), **result},
            )

    def run_steps(self) -> None:
        from bench import steps

        rounds = self.args.step_rounds
        results = steps.measure(self.args.steps, rounds, self.args.step_pgbench_seconds)
        self.details["steps"] = results
        for mode, result in results.items():
            share = result["ratio_to_pgbench_1c"]
            production = mode == "worker"
            self.add(
                "step checkpoints",
                f"1 run x {result['steps']:,} steps, {mode}, median of {rounds} rounds",
                result["steps_per_s"],
                "steps/s",
                share,
                "pgbench 1c, same rounds",
                ">= 0.50 x pgbench 1c" if production else "",
                share >= 0.5 if production else None,
                extra=self.pgbench_ratios(result["steps_per_s"]),
            )
            self.notes.append(
                f"steps ({mode}) by round (pgbench 1c tx/s before and after -> steps/s = ratio to "
                "their mean): "
                + ", ".join(
                    f"{r['pgbench_1c_tps_before']:,.0f}/{r['pgbench_1c_tps_after']:,.0f} -> "
                    f"{r['steps_per_s']:,.0f} = "
                    f"{r['ratio_to_pgbench_1c']:.2f}"
                    for r in result["rounds"]
                )
            )
            per_step = result["transactions_per_step"]
            self.add(
                "transactions per step",
                f"{mode}, {result['statements_per_step']:g} statements/step",
                per_step,
                "tx/step",
                target="<= 1" if production else "",
                # tolerance: a stray background transaction in the window
                met=per_step <= 1.01 if production else None,
            )

    def run_drain(self) -> None:
        from bench import drain
        from bench.report import ratio

        args = self.args
        statements = drain.statements_per_run()
        details: dict[str, Any] = {"statements_per_run_in_process": statements, "by_workers": []}
        self.details["drain"] = details
        for workers in args.workers:
            ceiling = drain.sql_queue(args.runs, workers, args.concurrency)
            result = drain.durably(args.runs, workers, args.concurrency)
            details["by_workers"].append({"durably": result, "sql_queue": ceiling})
            c4 = self.pgbench.get(4)
            self.add(
                "sql queue ceiling",
                f"W={workers} x {args.concurrency} conns, {args.runs:,} jobs, 2 tx/job",
                ceiling["runs_per_s"],
                "jobs/s",
                ratio(ceiling["runs_per_s"], c4),
                "pgbench 4c" if c4 else "",
                extra=ceiling,
            )
            share = ratio(result["runs_per_s"], ceiling["runs_per_s"])
            target, met = "", None
            if workers == 4:
                target = ">= 2,000/s and >= 0.50 x sql queue"
                met = result["runs_per_s"] >= 2000 and (share or 0) >= 0.5
            self.add(
                "drain no-op runs",
                f"W={workers} x C={args.concurrency}, {args.runs:,} runs",
                result["runs_per_s"],
                "runs/s",
                share,
                f"sql queue W={workers}",
                target,
                met,
                extra={**self.pgbench_ratios(result["runs_per_s"]), **result},
            )
            self.notes.append(
                f"drain W={workers}: durably {result['runs_per_s']:,.0f}/s wall, "
                f"{result['steady_runs_per_s'] or 0:,.0f}/s steady, start-up "
                f"{result['startup_s']:.2f}s, {result['transactions_per_run']} tx/run "
                f"({statements} statements/run in-process), machine CPU busy "
                f"{result['cpu'].get('machine_busy', 0):.0%}, worker CPU "
                f"{1e6 * result['cpu']['children_cpu_s'] / args.runs:,.0f} us/run, its backends "
                f"{1e6 * result['cpu'].get('bench_backends_cpu_s', 0) / args.runs:,.0f} us/run"
                f" (all postgres {1e6 * result['cpu'].get('postgres_cpu_s', 0) / args.runs:,.0f})"
                " | "
                f"sql queue {ceiling['runs_per_s']:,.0f}/s wall, "
                f"{ceiling['steady_runs_per_s'] or 0:,.0f}/s steady, CPU busy "
                f"{ceiling['cpu'].get('machine_busy', 0):.0%}, client CPU "
                f"{1e6 * ceiling['cpu']['children_cpu_s'] / args.runs:,.0f} us/job, its backends "
                f"{1e6 * ceiling['cpu'].get('bench_backends_cpu_s', 0) / args.runs:,.0f} us/job"
            )

    def run_wakeup(self) -> None:
        from bench import wakeup
        from bench.report import ratio

        floor = wakeup.floor(self.args.samples)
        listen = wakeup.durably(self.args.samples, listen=True, poll_interval=1.0)
        poll = wakeup.durably(self.args.poll_samples, listen=False, poll_interval=1.0)
        signal = wakeup.signal(self.args.samples)
        children = wakeup.children(self.args.samples)
        self.details["wakeup"] = {
            "sql_queue_floor": floor,
            "listen": listen,
            "poll": poll,
            "signal": signal,
            "children": children,
        }
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            p = key.split("_")[0]
            samples = floor["samples"]
            self.add("wake-up sql queue floor", f"{p}, LISTEN, {samples} samples", floor[key], "ms")
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            p = key.split("_")[0]
            self.add(
                "wake-up LISTEN",
                f"{p}, 1 idle worker, {listen['samples']} samples",
                listen[key],
                "ms",
                ratio(listen[key], floor[key]),
                f"floor {p} (x)",
                "< 5 ms" if p == "p50" else "",
                listen[key] < 5 if p == "p50" else None,
            )
        self.add(
            "wake-up poll-only",
            f"p50, --no-listen, poll 1s, {poll['samples']} samples",
            poll["p50_ms"],
            "ms",
        )
        for name, result, what in (
            ("wake-up signal", signal, "send_signal -> wait returned"),
            ("wake-up child end", children, "child's end -> parent's wait returned"),
        ):
            continued = result["continued"]
            for key in ("p50_ms", "p95_ms", "p99_ms"):
                p = key.split("_")[0]
                self.add(
                    name,
                    f"{p}, {what}, 1 idle worker, {continued['samples']} samples",
                    continued[key],
                    "ms",
                    ratio(continued[key], listen[key]),
                    f"trigger {p} (x)",
                    "< 5 ms" if p == "p50" else "",
                    continued[key] < 5 if p == "p50" else None,
                    extra=result,
                )
            entered = result["entered"]
            self.notes.append(
                f"{name}: to the job re-entered (claimed, before its replay) p50 / p95 / p99 "
                f"{entered['p50_ms']:.2f} / {entered['p95_ms']:.2f} / {entered['p99_ms']:.2f} ms; "
                f"to the wait returned {continued['p50_ms']:.2f} / {continued['p95_ms']:.2f} / "
                f"{continued['p99_ms']:.2f} ms"
            )

    def run_backlog(self) -> None:
        from bench import backlog
        from bench.database import reset_runs

        args = self.args
        results: list[dict[str, Any]] = []
        self.details["backlog"] = results
        try:
            for finished in (args.backlog_small, args.backlog):
                print(f"   {finished:,} finished + {args.pending:,} pending ...", flush=True)
                results.append(
                    backlog.measure(
                        finished,
                        args.pending,
                        args.claims,
                        args.backlog_drain,
                        wake=finished == args.backlog and args.waiting > 0,
                    )
                )
            if args.waiting:
                print(
                    f"   {args.backlog:,} finished + {args.pending:,} pending + {args.waiting:,}"
                    " waiting ...",
                    flush=True,
                )
                results.append(
                    backlog.measure(
                        args.backlog,
                        args.pending,
                        args.claims,
                        args.backlog_drain,
                        waiting=args.waiting,
                        wake=True,
                    )
                )
        finally:
            reset_runs()
        small, large = results[0], results[1]
        for result in results:
            label = f"{result['finished']:,} finished + {result['pending']:,} pending"
            if result["waiting"]:
                label += f" + {result['waiting']:,} waiting"
            if result is small:
                self._backlog_rows(result, label)
            elif result is large:
                self._backlog_rows(result, label, small, f"{small['finished']:,} finished")
            else:
                self._backlog_rows(result, label, large, "no waiting runs")
            if "wake" in result:
                self._wake_rows(result, label, None if result is large else large)
        plan = results[-1]["explain"]["plans"][0]["plan"] if results[-1]["explain"]["plans"] else ""
        self.notes.append(
            f"claim plan with {results[-1]['finished']:,} finished"
            + (f" and {results[-1]['waiting']:,} waiting" if results[-1]["waiting"] else "")
            + " runs (first lines; the generic plan is in the JSON):\n    "
            + "\n    ".join(plan.splitlines()[:14])
        )
        if "wake" in results[-1]:
            wake = results[-1]["wake"]
            for case in ("nothing_due", "few_due"):
                lines = []
                for explained in wake[case]["plans"]:
                    lines.append("-- " + " ".join(explained["sql"].split())[:110])
                    lines += explained["plan"].splitlines()[:8]
                    lines.append("generic plan:")
                    lines += explained["generic_plan"].splitlines()[:6]
                self.notes.append(
                    f"wake-up of due timers, {case.replace('_', ' ')}, with "
                    f"{results[-1]['waiting']:,} waiting runs (first lines of each statement's "
                    "custom and generic plan):\n    " + "\n    ".join(lines)
                )

    def _backlog_rows(
        self,
        result: dict[str, Any],
        label: str,
        base: dict[str, Any] | None = None,
        base_label: str = "",
    ) -> None:
        """The claim, drain and claim-plan rows of one backlog table, compared with ``base``."""
        from bench.report import ratio

        claim_ratio = drain_ratio = None
        if base is not None:
            claim_ratio = ratio(result["claim"]["median_ms"], base["claim"]["median_ms"])
            drain_ratio = ratio(
                result["drain"]["steady_runs_per_s"], base["drain"]["steady_runs_per_s"]
            )
        compared = base is not None
        self.add(
            "backlog claim (median)",
            label,
            result["claim"]["median_ms"],
            "ms",
            claim_ratio,
            base_label,
            "<= 1.20 x" if compared else "",
            (claim_ratio or 99) <= 1.2 if compared else None,
            extra=result["claim"],
        )
        self.add(
            "backlog drain",
            f"{label}, {result['drain']['runs']:,} runs, W=4 x C=4, steady",
            result["drain"]["steady_runs_per_s"],
            "runs/s",
            drain_ratio,
            base_label,
            ">= 0.80 x" if compared else "",
            (drain_ratio or 0) >= 0.8 if compared else None,
            extra=result["drain"],
        )
        self.add(
            "backlog claim plan",
            f"{label}: no Seq Scan on durably_run, custom or generic plan",
            None,
            "",
            target="index-driven",
            met=result["explain"]["index_driven"],
        )

    def _wake_rows(self, result: dict[str, Any], label: str, base: dict[str, Any] | None) -> None:
        """The wake-up of due timers in one backlog table, compared with ``base``'s."""
        from bench.backlog import DUE
        from bench.report import ratio

        wake = result["wake"]
        compared = base is not None and "wake" in base
        for case, what in (("nothing_due", "nothing due"), ("few_due", f"{DUE} due")):
            timed = wake[case]
            figure = timed["median_ms"]
            share = ratio(figure, base["wake"][case]["median_ms"]) if base and compared else None
            self.add(
                "backlog wake-due (median)",
                f"{label}, {what}",
                figure,
                "ms",
                share,
                "no waiting runs" if compared else "",
                "<= 1.20 x" if compared else "",
                (share or 99) <= 1.2 if compared else None,
                extra={k: v for k, v in timed.items() if k not in ("plans", "statements")},
            )
        waiting = bool(result["waiting"])
        indexes = ", ".join(wake["custom_indexes"]) or "no index"
        self.add(
            "backlog wake-due plan",
            f"{label}: custom plans, no Seq Scan on durably_run (indexes: {indexes})",
            None,
            "",
            target="index-driven" + (", durably_run_waking_idx" if waiting else ""),
            met=wake["custom_index_driven"] and (wake["reads_waking_idx"] or not waiting),
        )
        self.add(
            "backlog wake-due plan",
            f"{label}: generic plans, no Seq Scan on durably_run",
            None,
            "",
            target="index-driven",
            met=wake["generic_index_driven"],
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from bench import report
    from bench.database import ensure_database, server_settings

    started = datetime.now(UTC)
    ensure_database()
    server = server_settings()
    machine = report.machine(server)
    busy = machine["cpu_busy_before_start"]
    print(
        f"django-durably benchmarks ({'quick' if args.quick else 'full'}): {', '.join(args.only)}\n"
        f"machine: {machine['cores']} cores, Python {machine['python']}, Django "
        f"{machine['django']}, PostgreSQL {server['server_version']} (fsync={server['fsync']}, "
        f"synchronous_commit={server['synchronous_commit']}), load average "
        f"{machine['load_average_at_start']}, CPU busy before start "
        f"{'?' if busy is None else f'{busy:.0%}'}",
        flush=True,
    )
    suite = Suite(args)
    try:
        suite.run()
    except KeyboardInterrupt:
        print("interrupted: subprocesses stopped, partial results follow", flush=True)
    finally:
        finished = datetime.now(UTC)
        document = {
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
            "argv": sys.argv[1:] if argv is None else argv,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": {**machine, "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
            "rows": report.rows_json(suite.rows),
            "notes": suite.notes,
            "details": suite.details,
            "errors": suite.errors,
        }
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        path = args.output_dir / f"{stamp}.json"
        report.write(path, document)
        report.write(args.output_dir / "latest.json", document)
    print()
    print(report.format_table(suite.rows))
    for note in suite.notes:
        print(f"  {note}")
    for name, error in suite.errors.items():
        print(f"  {name}: FAILED {error}")
    print(f"wrote {path} and latest.json ({(finished - started).total_seconds():.0f}s)")
    return 1 if suite.errors else 0


if __name__ == "__main__":
    sys.exit(main())
