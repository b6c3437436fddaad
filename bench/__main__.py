"""``python -m bench``: run the benchmarks against a local PostgreSQL, print a table, write JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--samples", type=int, default=200, help="wake-up samples (default %(default)s)"
    )
    parser.add_argument("--output", type=Path, default=Path("bench/results/latest.json"))
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from bench.database import ensure_database
    from bench.wakeup import measure

    ensure_database()
    results = [
        measure(args.samples, listen=True, poll_interval=1.0),
        measure(max(20, args.samples // 10), listen=False, poll_interval=1.0),
    ]
    print(f"{'benchmark':<16} {'mode':<22} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for row in results:
        mode = "LISTEN/NOTIFY" if row["listen"] else f"poll {row['poll_interval_s']}s"
        print(
            f"{row['benchmark']:<16} {mode:<22} {row['samples']:>5} {row['p50_ms']:>8} "
            f"{row['p95_ms']:>8} {row['p99_ms']:>8}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "machine": {
                    "python": sys.version.split()[0],
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                },
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
