"""``python -m chaos``: durably_worker processes under faults, then a checker over what happened.

N worker processes execute thousands of five-step runs (some sharing a concurrency key, some
triggered several times at once with one idempotency key) while faults are injected at random:
SIGKILL, SIGSTOP longer than the lease, SIGTERM, PostgreSQL restarts (fast and immediate),
pg_terminate_backend of worker connections, cancels and resumes. After --minutes the faults stop,
every run is waited for, and the checker reads the journal the step functions wrote on their own
connection. Exit status: 0 no violation, 1 violations, 2 the harness itself failed.

The database is a cluster of the suite's own (created once, port 5444), never the shared server;
see docs/chaos.md. Results go to chaos/results/<time>.json (and latest.json), worker logs to
chaos/results/<time>/.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos import cluster
from chaos.faults import DEFAULT_RATES, FAULT_KINDS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CANCELS_PER_MINUTE = 20.0


def _pair(value: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH seconds, got {value!r}") from None
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW <= HIGH, got {value!r}")
    return low, high


def _rate(value: str) -> tuple[str, float]:
    kind, _, number = value.partition("=")
    kinds = (*FAULT_KINDS, "cancel")
    if kind not in kinds:
        raise argparse.ArgumentTypeError(f"unknown fault {kind!r}; choose from {', '.join(kinds)}")
    try:
        rate = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}=PER_MINUTE, got {value!r}") from None
    if rate < 0:
        raise argparse.ArgumentTypeError("a rate cannot be negative")
    return kind, rate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--minutes", type=float, default=10.0, help="length of the fault phase (default 10)")
    add("--workers", type=int, default=3, help="durably_worker processes (default 3)")
    add("--concurrency", type=int, default=4, help="--concurrency of each worker (default 4)")
    add("--lease-seconds", type=float, default=2.0, help="--lease-seconds of workers (default 2)")
    add("--grace-period", type=float, default=30.0, help="--grace-period of workers (default 30)")
    add("--runs", type=int, default=0, help="stop triggering after this many (default: no cap)")
    add("--backlog", type=int, help="pending runs kept waiting (default 3 x workers x concurrency)")
    add("--seed", type=int, help="seed of every random choice of the harness (default: random)")
    add(
        "--rate",
        type=_rate,
        action="append",
        default=[],
        metavar="KIND=PER_MINUTE",
        help=(
            "average rate of a fault per minute, repeatable; defaults: "
            + ", ".join(f"{k}={v:g}" for k, v in DEFAULT_RATES.items())
            + f", cancel={DEFAULT_CANCELS_PER_MINUTE:g}"
        ),
    )
    add("--resume-share", type=float, default=0.5, help="cancelled runs resumed (default 0.5)")
    add("--keyed-share", type=float, default=0.25, help="runs with a concurrency key (0.25)")
    add("--runs-per-key", type=int, default=4, help="runs sharing one concurrency key (4)")
    add("--idempotent-share", type=float, default=0.1, help="runs with an idempotency key (0.1)")
    add("--idempotent-triggers", type=int, default=4, help="concurrent triggers per key (4)")
    add("--step-seconds", type=_pair, default=(0.02, 0.3), help="a step's duration (0.02,0.3)")
    add("--long-steps", type=float, default=0.02, help="share of long steps (default 0.02)")
    add("--long-step-seconds", type=_pair, default=(2.0, 5.0), help="a long step's (2,5)")
    add(
        "--pause-seconds",
        type=_pair,
        default=(0.0, 0.1),
        help="work outside steps before each step (default 0,0.1)",
    )
    add("--stop-seconds", type=_pair, help="SIGSTOP length (default 1.5x-4x the lease: 3,8)")
    add("--settle-seconds", type=float, default=300.0, help="wait for runs to end (default 300)")
    add("--recovery-deadline", type=float, default=30.0, help="rule 7's deadline (default 30)")
    add("--keep", action="store_true", help="keep the chaos database afterwards")
    add("--postgres-url", help="use this server instead of the suite's own cluster")
    add(
        "--restart-command",
        help="with --postgres-url: a command restarting that server; {mode} becomes fast or "
        "immediate (without it, no restarts)",
    )
    add("--cluster-name", default=cluster.DEFAULT_CLUSTER, help="own cluster (durably_chaos)")
    add("--cluster-port", type=int, default=cluster.DEFAULT_PORT, help="its port (default 5444)")
    add("--pg-version", help="PostgreSQL version of a new own cluster (default: newest)")
    add("--database", default=cluster.DEFAULT_DATABASE, help="database name (durably_chaos)")
    add("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    if args.backlog is None:
        args.backlog = 3 * args.workers * args.concurrency
    if args.stop_seconds is None:
        args.stop_seconds = (1.5 * args.lease_seconds, 4 * args.lease_seconds)
    rates: dict[str, float] = {**DEFAULT_RATES, "cancel": DEFAULT_CANCELS_PER_MINUTE}
    rates.update(dict(args.rate))
    args.rates = rates
    if args.workers < 1 or args.concurrency < 1 or args.runs_per_key < 1:
        parser.error("--workers, --concurrency and --runs-per-key must be at least 1")
    if args.idempotent_triggers < 2:
        parser.error("--idempotent-triggers must be at least 2")
    return args


def _code_version() -> str:
    """The commit under test (and whether django_durably/ differs from it), and a fingerprint of
    the django_durably/ sources the workers run, which also tells apart two uncommitted states."""
    digest = hashlib.sha1(usedforsecurity=False)
    for path in sorted((REPO_ROOT / "django_durably").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    sources = f"django_durably sources {digest.hexdigest()[:12]}"

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "django_durably")
    except (OSError, subprocess.CalledProcessError):
        return f"not a git checkout; {sources}"
    return f"{head}{' + uncommitted changes in django_durably/' if dirty else ''}; {sources}"


class Clock:
    """Prints progress lines prefixed with the time since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock()
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    if args.postgres_url:
        server = cluster.external_server(args.postgres_url, args.restart_command)
    else:
        server = cluster.own_cluster(
            args.pg_version, args.cluster_name, args.cluster_port, args.database
        )
    if server.restart_command is None:
        for kind in ("restart_fast", "restart_immediate"):
            args.rates[kind] = 0.0
    clock.log(f"PostgreSQL: {server.description}; database {server.database}")
    server.recreate_database()
    os.environ.update(
        DJANGO_SETTINGS_MODULE="chaos.settings",
        DURABLY_CHAOS_URL=server.url,
        DURABLY_CHAOS_ROLE="harness",
        DURABLY_CHAOS_LEASE_SECONDS=str(args.lease_seconds),
    )
    import django

    django.setup()
    from chaos.run import ChaosRun

    config: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "minutes": args.minutes,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "lease_seconds": args.lease_seconds,
        "grace_period": args.grace_period,
        "seed": args.seed,
        "server": server.description,
        "code": _code_version(),
        "rates_per_minute": args.rates,
        "runs_cap": args.runs,
        "backlog": args.backlog,
        "step_seconds": list(args.step_seconds),
        "long_steps": args.long_steps,
        "long_step_seconds": list(args.long_step_seconds),
        "pause_seconds": list(args.pause_seconds),
        "stop_seconds": list(args.stop_seconds),
        "resume_share": args.resume_share,
        "keyed_share": args.keyed_share,
        "runs_per_key": args.runs_per_key,
        "idempotent_share": args.idempotent_share,
        "idempotent_triggers": args.idempotent_triggers,
        "recovery_deadline": args.recovery_deadline,
    }
    clock.log(f"seed {args.seed}; code {config['code']}")
    chaos = ChaosRun(args, server, clock, args.output_dir / stamp)
    try:
        document = chaos.execute(config)
    except KeyboardInterrupt:
        clock.log("interrupted")
        return 2
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        chaos.cleanup()
        if not args.keep:
            try:
                server.drop_database()
            except Exception as exc:  # noqa: BLE001 - reporting matters more than the drop
                clock.log(f"could not drop the chaos database: {exc}")
    from chaos import report

    report.show(document)
    path = report.write(document, args.output_dir, stamp)
    clock.log(f"results: {path}; worker logs: {args.output_dir / stamp}/")
    if document.get("harness_errors"):
        return 2
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
