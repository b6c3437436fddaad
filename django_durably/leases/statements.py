"""The hand-written PostgreSQL statements of the hot paths, each beside the ORM expression it restates.

Trigger, claim, checkpoint, finish and the cancel check run for every run or step, so on PostgreSQL
they are single prepared statements (``cursor_for``). What they decide must not drift from the ORM
that SQLite and the rest of the package use, so each predicate and field set exists once per form,
here, side by side, and ``tests/integration/leases/test_statements.py`` applies both forms to the same rows
and checks that they agree:

* the lease holder's guard: :meth:`~django_durably.models.RunQuerySet.held_by` and
  :data:`HELD_BY_SQL`;
* what a claim writes: :func:`lease_fields` and :data:`LEASE_SET_SQL`;
* what ending a run writes: :func:`ended_fields` and the ``SET`` of :data:`FINISH_SQL`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import DateTimeField, ExpressionWrapper, F, Value
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Coalesce

from django_durably.models import DatabaseNow, RunStatus
from django_durably.serialization import dump


def cursor_for(alias: str) -> Any:
    """A cursor for these statements: server-side binding, prepared (see ``postgres``)."""
    from django_durably.postgres import bound_cursor  # psycopg is only there with PostgreSQL

    return bound_cursor(alias)


def jsonb(value: Any) -> str | None:
    """A parameter for ``%s::jsonb``: ``None`` is stored as SQL NULL, as the ORM stores it."""
    return None if value is None else dump(value)


def lease_expiry(seconds: float) -> ExpressionWrapper[CombinedExpression]:
    """``now + seconds`` by the database clock."""
    return ExpressionWrapper(
        DatabaseNow() + Value(timedelta(seconds=seconds)), output_field=DateTimeField()
    )


# -- the lease holder's guard --------------------------------------------------------------------

# ``RunQuerySet.held_by(run_id, generation)``: still leased, under this generation. The
# parameter is the generation (or, in a join, the column holding it: ``{generation}``).
HELD_BY_SQL = "run.status = 'leased' AND run.lease_generation = {generation}"


# -- what a claim writes -------------------------------------------------------------------------


def lease_fields(worker_id: str, seconds: float) -> dict[str, Any]:
    """The ``UPDATE`` of a claim, for the ORM (SQLite)."""
    return {
        "status": RunStatus.LEASED,
        "lease_generation": F("lease_generation") + 1,
        "attempt": F("attempt") + 1,
        "lease_owner": worker_id,
        "lease_expires_at": lease_expiry(seconds),
        "started_at": Coalesce(F("started_at"), DatabaseNow()),
        "updated_at": DatabaseNow(),
    }


# The same, for the hand-written claims (parameters: the owner, the lease in seconds). Both
# claiming statements return the row they wrote (``RETURNING``), so the fencing token a worker
# holds is the one its claim wrote: a worker paused after its claim commits must not pick up a
# generation written by a later claim.
LEASE_SET_SQL = """
    status = 'leased',
    lease_generation = run.lease_generation + 1,
    attempt = run.attempt + 1,
    lease_owner = %s,
    lease_expires_at = statement_timestamp() + make_interval(secs => %s),
    started_at = COALESCE(run.started_at, statement_timestamp()),
    updated_at = statement_timestamp()
"""


# -- what ending a run writes ----------------------------------------------------------------------


def ended_fields(status: str) -> dict[str, Any]:
    """The ``UPDATE`` that ends a run with ``status`` (completed, failed or cancelled), for the ORM:
    the lease worker's end on SQLite and an operator's cancel everywhere. The output or error is
    the caller's to add."""
    return {
        "status": status,
        "completed_at": DatabaseNow(),
        "lease_expires_at": None,
        "updated_at": DatabaseNow(),
    }


# Ending runs on PostgreSQL: one statement for any number of runs (a worker records the runs its
# slots finished together), each row guarded by its own generation. The ``SET`` is
# ``ended_fields`` plus the output of a completed run or the error of a failed one.
FINISH_SQL = (
    """
UPDATE durably_run run SET
    status = ending.status,
    output = CASE WHEN ending.status = 'completed' THEN ending.value ELSE run.output END,
    error = CASE WHEN ending.status = 'failed' THEN ending.value ELSE run.error END,
    completed_at = statement_timestamp(),
    lease_expires_at = NULL,
    updated_at = statement_timestamp()
FROM (VALUES {rows}) AS ending (id, generation, status, value)
WHERE run.id = ending.id AND """
    + HELD_BY_SQL.format(generation="ending.generation")
    + """
RETURNING run.id
"""
)
FINISH_ROW = "(%s::uuid, %s::bigint, %s, %s::jsonb)"


# -- a completed step --------------------------------------------------------------------------------

# The guarded counter update and the step's insert in one statement (one round trip, one
# transaction). No row inserted means the guard refused. Parameters: the next step index, the run,
# the generation, then the step's index, name, attempt, output, started and completed times.
PERSIST_STEP_SQL = (
    """
WITH held AS (
    UPDATE durably_run run SET
        current_step_index = %s,
        completed_step_count = run.completed_step_count + 1,
        updated_at = statement_timestamp()
    WHERE run.id = %s AND """
    + HELD_BY_SQL.format(generation="%s")
    + """
    RETURNING run.id
)
INSERT INTO durably_step
    (run_id, "index", name, status, attempt, output, error, started_at, completed_at)
SELECT id, %s, %s, 'completed', %s, %s::jsonb, NULL, %s, %s FROM held
RETURNING id
"""
)


# -- the cancel check ------------------------------------------------------------------------------

# What a step boundary asks when no listener delivers cancels (``holding.probe``).
PROBE_SQL = "SELECT status, lease_generation FROM durably_run WHERE id = %s"


# -- inserting runs ----------------------------------------------------------------------------------

# Every column of ``durably_run`` but ``created_at`` and ``updated_at`` (their defaults, the
# database clock), with the values a new pending run has; one row per element of the arrays. The
# wake-up is sent from the same statement, once per queue, so it is one round trip and its own
# transaction when the trigger is not inside one. ``run_after`` NULL means now, as its default.
# The always-true WHERE is what runs the notifications, once (PostgreSQL skips a plain CTE that
# nothing reads, and keeps a volatile call such as ``pg_notify`` in a subquery).
INSERT_RUNS_SQL = """
WITH created AS (
    INSERT INTO durably_run (
        id, job_name, queue, priority, status, input, output, error, idempotency_key,
        concurrency_key, labels, progress, run_after, attempt, current_step_index,
        completed_step_count, lease_owner, lease_expires_at, lease_generation, started_at,
        completed_at
    )
    SELECT
        item.id, %s, item.queue, item.priority, 'pending', item.input::jsonb, NULL, NULL,
        item.idempotency_key, item.concurrency_key, item.labels::jsonb, NULL,
        COALESCE(item.run_after, STATEMENT_TIMESTAMP()), 0, 0, 0, '', NULL, 0, NULL, NULL
    FROM unnest(
        %s::uuid[], %s::text[], %s::integer[], %s::text[], %s::text[], %s::text[], %s::text[],
        %s::timestamptz[]
    ) AS item(id, queue, priority, input, idempotency_key, concurrency_key, labels, run_after)
    RETURNING id, run_after, created_at, updated_at, queue
)
SELECT id, run_after, created_at, updated_at FROM created
WHERE (
    SELECT count(*) FROM (
        SELECT pg_notify(%s, queue) FROM (SELECT DISTINCT queue FROM created) AS queues
    ) AS woken
) >= 0
"""


# -- claiming --------------------------------------------------------------------------------------

# The common case, in one statement and one round trip: lease the ready runs that come before the
# first run with a concurrency key, in claim order. Runs with a key need an advisory lock and a
# fresh re-check in a transaction of their own (``claims._claim_serialising_keys``), so when one
# is among the candidates (``keyed_waiting``), or nothing was claimed, the claim goes on with that
# path. The LIMIT is a literal (see DESIGN.md section 4). The candidates are those of
# ``RunQuerySet.ready()`` without a busy key, in its order (``claims._candidates``); a test
# compares the two on the same data.
CLAIM_UNTIL_A_KEY_SQL = """
WITH pending AS (
    SELECT id, concurrency_key, priority, run_after FROM durably_run
    WHERE status = 'pending' AND run_after <= statement_timestamp() {queue_filter}
      AND (concurrency_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM durably_run busy
          WHERE busy.concurrency_key = durably_run.concurrency_key
            AND busy.status = 'leased' AND busy.lease_expires_at > statement_timestamp()))
    ORDER BY priority DESC, run_after, id
    LIMIT {limit} FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT id, concurrency_key, priority, run_after FROM durably_run
    WHERE status = 'leased' AND lease_expires_at <= statement_timestamp() {queue_filter}
      AND (concurrency_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM durably_run busy
          WHERE busy.concurrency_key = durably_run.concurrency_key AND busy.id <> durably_run.id
            AND busy.status = 'leased' AND busy.lease_expires_at > statement_timestamp()))
    ORDER BY priority DESC, run_after, id
    LIMIT {limit} FOR UPDATE SKIP LOCKED
), ranked AS (
    SELECT id, concurrency_key,
           row_number() OVER (ORDER BY priority DESC, run_after, id) AS position
    FROM (SELECT * FROM pending UNION ALL SELECT * FROM expired) candidates
), first_keyed AS (
    SELECT min(position) AS position FROM ranked WHERE concurrency_key IS NOT NULL
), picked AS (
    SELECT id FROM ranked
    WHERE position <= {limit}
      AND position < COALESCE((SELECT position FROM first_keyed), {limit} + 1)
)
UPDATE durably_run run SET {lease_set}
FROM picked
WHERE run.id = picked.id
RETURNING {columns}, (SELECT position IS NOT NULL FROM first_keyed) AS keyed_waiting
"""

# Leasing the runs the keyed claim chose and locked, returning what the claim wrote.
LEASE_CHOSEN_SQL = """
UPDATE durably_run run SET {lease_set}
WHERE run.id = ANY(%s)
RETURNING {columns}
"""

KEY_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(%s)"
