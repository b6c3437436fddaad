"""The bare SQL queue: the ceiling the drain benchmark is compared with.

One table, one partial index on pending ids, and workers that use psycopg directly. Each job costs
two transactions, like a durable run at its leanest:

1. claim: ``UPDATE ... WHERE id = (SELECT id ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING ...``;
2. complete: ``UPDATE ... SET status = 'done' WHERE id = ...``.

A worker process (``python -m bench.sqlqueue --dsn ... --threads C``) runs ``C`` threads, each with its
own connection, until the queue is empty: the same number of processes and connections as the
durably workers it is compared with. ``--listen`` makes a single-connection worker that waits on
``LISTEN`` when idle (the floor of the wake-up benchmark): it stamps each job with the wall-clock
time it claimed it.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

import psycopg

TABLE = "bench_sqlqueue"
CHANNEL = "bench_sqlqueue"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    status text NOT NULL DEFAULT 'pending',
    payload jsonb,
    owner text,
    claimed_at timestamptz,
    done_at timestamptz,
    claimed_wall double precision
);
CREATE INDEX IF NOT EXISTS {TABLE}_pending_idx ON {TABLE} (id) WHERE status = 'pending';
"""

CLAIM = f"""
UPDATE {TABLE} SET status = 'leased', owner = %s, claimed_at = clock_timestamp()
WHERE id = (
    SELECT id FROM {TABLE} WHERE status = 'pending' ORDER BY id
    FOR UPDATE SKIP LOCKED LIMIT 1
)
RETURNING id, payload
"""

COMPLETE = f"UPDATE {TABLE} SET status = 'done', done_at = clock_timestamp() WHERE id = %s"


def setup(conn: psycopg.Connection[Any], jobs: int) -> None:
    """(Re)create the queue holding ``jobs`` pending jobs, analysed."""
    conn.execute(SCHEMA)
    conn.execute(f"TRUNCATE {TABLE} RESTART IDENTITY")
    if jobs:
        conn.execute(
            f"INSERT INTO {TABLE} (payload) SELECT 'null'::jsonb FROM generate_series(1, %s)",
            [jobs],
        )
    conn.execute(f"VACUUM ANALYZE {TABLE}")


def drain(dsn: str, owner: str) -> int:
    """Claim and complete jobs on one connection until none is pending; return how many."""
    done = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(CLAIM, [owner]).fetchone()
            if row is None:
                return done
            conn.execute(COMPLETE, [row[0]])
            done += 1


def listen(dsn: str, owner: str) -> None:
    """Wait for notifications; on each, claim and complete whatever is pending (until killed)."""
    stamp = f"UPDATE {TABLE} SET claimed_wall = %s WHERE id = %s"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        while True:
            for _notification in conn.notifies(timeout=1.0, stop_after=1):
                pass
            while (row := conn.execute(CLAIM, [owner]).fetchone()) is not None:
                claimed = time.time()
                conn.execute(stamp, [claimed, row[0]])
                conn.execute(COMPLETE, [row[0]])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sqlqueue", description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="sqlqueue")
    parser.add_argument("--listen", action="store_true")
    args = parser.parse_args()
    if args.listen:
        listen(args.dsn, args.name)
        return 0
    threads = [
        threading.Thread(target=drain, args=(args.dsn, f"{args.name}-{i}"))
        for i in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
